"""The AudioX-Turbo MMDiT in plain PyTorch: the eager reference.

Module and parameter names mirror the public release (``audiox_turbo.models``), so an
official state dict loads with no renaming. Quirks of the release reproduced on purpose
(see ``SPEC.md``):

- attention is ``embed_dim // num_heads`` heads of dim ``num_heads`` (64 x 24 at full
  size), with an interleaved ``(heads d j)`` qkv layout;
- q and k get a parameter-free RMSNorm (eps 1e-6, computed in the input dtype) and
  then RoPE over all 237 positions, the time token included;
- the "cross-attention" to the time token swaps K and V and has a single key, so its
  output is the RMS-normalised K-half of ``to_kv(e)``, broadcast to every token, with no
  gate; ``to_q`` exists in the checkpoint but cannot change the output;
- ``adaLN`` modulation is per token, driven by the MAF tokens projected to 237 tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig

__all__ = [
    "FourierFeatures",
    "RMSNorm",
    "SelfAttention",
    "CrossAttention",
    "ChannelLastConv1d",
    "ConvMLP",
    "MMDitSingleBlock",
    "ContinuousMMDiTTransformer",
    "MMDiffusionTransformer",
    "MMDiTWrapper",
    "rope_rotations",
    "apply_rope",
    "rms_norm_noaffine",
    "modulate",
]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def rms_norm_noaffine(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim with no learned scale, in ``x``'s dtype (as the release)."""
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps)


def rope_rotations(length: int, head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """RoPE rotation matrices ``(1, length, head_dim/2, 2, 2)`` in fp32.

    Pairs are ``(2i, 2i+1)``; frequency ``theta ** (-2i/head_dim)``; positions ``0..length-1``.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    pos = torch.arange(length, dtype=torch.float32, device=device)
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    ang = pos[:, None] * freqs[None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1).view(length, head_dim // 2, 2, 2)
    return rot.unsqueeze(0)


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, H, N, d)`` by ``rot`` ``(1, N, d/2, 2, 2)``; math in fp32."""
    xf = x.float().view(*x.shape[:-1], -1, 1, 2)
    out = rot[..., 0] * xf[..., 0] + rot[..., 1] * xf[..., 1]
    return out.reshape(x.shape).to(x.dtype)


class FourierFeatures(nn.Module):
    """``[cos(2 pi t w), sin(2 pi t w)]`` with a learned ``w`` ``(out/2, in)``."""

    def __init__(self, in_features: int, out_features: int, std: float = 1.0):
        super().__init__()
        if out_features % 2:
            raise ValueError(f"out_features must be even, got {out_features}")
        self.weight = nn.Parameter(torch.randn(out_features // 2, in_features) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class RMSNorm(nn.Module):
    """Parameter-free RMSNorm (the release's q/k norm: its ``scale`` is not a parameter)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_noaffine(x, self.eps)


class SelfAttention(nn.Module):
    """Self-attention with an interleaved ``(heads d j)`` qkv projection, q/k RMSNorm and RoPE."""

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.dim = dim
        self.nheads = nheads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = RMSNorm(dim // nheads)
        self.k_norm = RMSNorm(dim // nheads)

    def pre_attention(self, x: torch.Tensor, rot: torch.Tensor | None):
        """``x`` (B, N, D) -> q, k, v each (B, H, N, d)."""
        b, n, _ = x.shape
        h, d = self.nheads, self.dim // self.nheads
        qkv = self.qkv(x).view(b, n, h, d, 3).permute(4, 0, 2, 1, 3)  # (3, B, H, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = self.q_norm(q)
        k = self.k_norm(k)
        if rot is not None:
            q = apply_rope(q, rot)
            k = apply_rope(k, rot)
        return q, k, v

    def forward(self, x: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.pre_attention(x, rot)
        return attention(q, k, v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA, no mask, default scale; ``(B, H, N, d)`` -> ``(B, N, H*d)``."""
    out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


class CrossAttention(nn.Module):
    """The release's "cross-attention" from the latent tokens to the single time token.

    The release computes ``q, v, k = pre_attention(...)`` (K and V swapped) and attends
    over one key, so the softmax is exactly 1 and every token receives the RMS-normalised
    K-half of ``to_kv(context)``. ``to_q`` is kept for checkpoint compatibility; it is dead.
    """

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.dim = dim
        self.nheads = nheads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, dim * 2, bias=False)
        self.q_norm = RMSNorm(dim // nheads)
        self.k_norm = RMSNorm(dim // nheads)

    def time_bias(self, context: torch.Tensor) -> torch.Tensor:
        """``context`` (B, 1, D) -> the per-sample vector added to every token, (B, 1, D)."""
        if context.shape[1] != 1:
            raise ValueError(
                f"the time-token cross-attention expects one context token, got {tuple(context.shape)}"
            )
        b = context.shape[0]
        h, d = self.nheads, self.dim // self.nheads
        kv = self.to_kv(context).view(b, 1, h, d, 2)
        k = self.k_norm(kv[..., 0])  # (B, 1, H, d): becomes the "value" in the release
        return k.reshape(b, 1, h * d)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.time_bias(context).expand(-1, x.shape[1], -1)


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d over ``(B, N, C)`` tokens (the release's channels-last wrapper)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvMLP(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` with kernel-3 convolutions over tokens, no bias."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.w1 = ChannelLastConv1d(dim, hidden_dim, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(hidden_dim, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden_dim, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MMDitSingleBlock(nn.Module):
    """One pre-norm DiT block with per-token adaLN from the multimodal tokens ``c``."""

    def __init__(self, dim: int, nhead: int, hidden_dim: int, kernel_size: int = 3):
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = SelfAttention(dim, nhead)
        self.cross_attn = CrossAttention(dim, nhead)
        self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=padding)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.ffn = ConvMLP(dim, hidden_dim, kernel_size, padding)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None, context: torch.Tensor
    ) -> torch.Tensor:
        """``x`` (B, N, D) tokens, ``c`` (B, N, D) modulation tokens, ``context`` (B, 1, D) time token."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + self.linear1(self.attn(h, rot)) * gate_msa
        x = x + self.cross_attn(x, context=context)
        r = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + self.ffn(r) * gate_mlp


class ContinuousMMDiTTransformer(nn.Module):
    """The block stack: ``project_in``, MAF-token projections, 24 blocks, ``project_out``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.dim = dim
        self.latent_seq_len = cfg.latent_seq_len
        self.project_in = nn.Linear(cfg.io_channels, dim, bias=False)
        self.project_out = nn.Linear(dim, cfg.io_channels, bias=False)
        self.layers = nn.ModuleList(
            MMDitSingleBlock(dim, cfg.attn_heads, cfg.ffn_hidden, cfg.kernel_size) for _ in range(cfg.depth)
        )
        self.proj_mm_tokens = nn.Linear(cfg.cond_token_dim, dim) if cfg.cond_token_dim != dim else nn.Identity()
        self.proj_mm_seq_len = (
            nn.Linear(cfg.num_cond_tokens, cfg.latent_seq_len)
            if cfg.num_cond_tokens != cfg.latent_seq_len
            else nn.Identity()
        )
        self.register_buffer("latent_rot", rope_rotations(cfg.latent_seq_len, cfg.head_dim), persistent=False)

    def modulation_tokens(self, mm_tokens: torch.Tensor) -> torch.Tensor:
        """MAF tokens (B, 384, Dc) -> the adaLN driver ``c`` (B, 237, D); step-invariant."""
        c = self.proj_mm_tokens(mm_tokens)
        return self.proj_mm_seq_len(c.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor, time_token: torch.Tensor, mm_tokens: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, C_io), ``time_token`` (B, D), ``mm_tokens`` (B, 384, Dc) -> (B, T+1, C_io)."""
        x = self.project_in(x)
        x = torch.cat([time_token.unsqueeze(1), x], dim=1)
        if x.shape[1] != self.latent_seq_len:
            raise ValueError(
                f"the DiT was built for {self.latent_seq_len - 1} latent frames, got {x.shape[1] - 1}"
            )
        c = self.modulation_tokens(mm_tokens)
        context = time_token.unsqueeze(1)
        rot = self.latent_rot
        for block in self.layers:
            x = block(x, c, rot, context=context)
        return self.project_out(x)


class MMDiffusionTransformer(nn.Module):
    """Velocity network ``v = f(x, t, tokens)`` for rectified flow.

    ``x`` (B, 64, T) latent, ``t`` (B,) in [0, 1], ``cross_attn_cond`` (B, 384, 768) MAF
    output. Returns (B, 64, T). ``cfg_scale != 1`` runs conditional and null (zeros)
    side by side in one batch of 2B and returns ``u + (c - u) * cfg_scale``.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.io_channels = cfg.io_channels
        embed_dim = cfg.embed_dim
        self.timestep_features = FourierFeatures(1, 256)
        self.to_timestep_embed = nn.Sequential(
            nn.Linear(256, embed_dim, bias=True), nn.SiLU(), nn.Linear(embed_dim, embed_dim, bias=True)
        )
        # Present in the release's checkpoint but unused by its forward (no global conds,
        # and the cond-token MLP call is commented out there).
        cond_embed_dim = embed_dim if cfg.project_cond_tokens else cfg.cond_token_dim
        self.to_cond_embed = nn.Sequential(
            nn.Linear(cfg.cond_token_dim, cond_embed_dim, bias=False),
            nn.SiLU(),
            nn.Linear(cond_embed_dim, cond_embed_dim, bias=False),
        )
        if cfg.global_cond_dim > 0:
            self.to_global_embed = nn.Sequential(
                nn.Linear(cfg.global_cond_dim, embed_dim, bias=False),
                nn.SiLU(),
                nn.Linear(embed_dim, embed_dim, bias=False),
            )
        self.transformer = ContinuousMMDiTTransformer(cfg)
        self.preprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)
        nn.init.zeros_(self.preprocess_conv.weight)
        nn.init.zeros_(self.postprocess_conv.weight)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (B,) -> time token (B, D)."""
        return self.to_timestep_embed(self.timestep_features(t[:, None]))

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> None:
        cfg = self.cfg
        if x.dim() != 3 or x.shape[1] != cfg.io_channels or x.shape[2] != cfg.latent_frames:
            raise ValueError(
                f"x must be (B, {cfg.io_channels}, {cfg.latent_frames}), got {tuple(x.shape)}"
            )
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        want = (x.shape[0], cfg.num_cond_tokens, cfg.cond_token_dim)
        if tuple(cond.shape) != want:
            raise ValueError(f"cross_attn_cond must be {want}, got {tuple(cond.shape)}")

    def _forward(self, x: torch.Tensor, t: torch.Tensor, cross_attn_cond: torch.Tensor) -> torch.Tensor:
        time_token = self.time_embedding(t)
        x = self.preprocess_conv(x) + x
        out = self.transformer(x.transpose(1, 2), time_token, cross_attn_cond)
        out = out.transpose(1, 2)[:, :, 1:]  # drop the time token
        return self.postprocess_conv(out) + out

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cross_attn_cond: torch.Tensor,
        cfg_scale: float = 1.0,
        **unused,
    ) -> torch.Tensor:
        self._check_inputs(x, t, cross_attn_cond)
        if cfg_scale == 1.0:
            return self._forward(x, t, cross_attn_cond)
        batch_cond = torch.cat([cross_attn_cond, torch.zeros_like(cross_attn_cond)], dim=0)
        out = self._forward(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), batch_cond)
        cond_out, uncond_out = out.chunk(2, dim=0)
        return uncond_out + (cond_out - uncond_out) * cfg_scale


class MMDiTWrapper(nn.Module):
    """Holds the DiT at ``.model`` so checkpoint keys read ``model.model.<DiT keys>``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.model = MMDiffusionTransformer(cfg)

    def forward(self, x, t, cross_attn_cond, cfg_scale: float = 1.0, **kwargs):
        return self.model(x, t, cross_attn_cond=cross_attn_cond, cfg_scale=cfg_scale)
