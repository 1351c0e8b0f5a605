"""``AcceleratedDiT``: the release's DiT with fused blocks and the step loop's invariants hoisted.

Once per generation (``prepare``): MAF tokens -> ``proj_mm_tokens`` -> ``proj_mm_seq_len``
-> the adaLN driver ``c`` (B, N, D), then every block's modulation in ONE batched GEMM
``SiLU(c) @ W_all^T + b_all`` with the 24 adaLN weights stacked (depth, 6D, D), giving
(depth, B, N, 6D); RoPE tables once per length.

Once per step (``step``): the time embedding, and all blocks' time-token biases in one
GEMM over the stacked K-halves of ``cross_attn.to_kv`` (depth*D, D) plus the per-head
RMSNorm. The dead ``cross_attn.to_q`` GEMM is dropped.

``forward(x, t, cross_attn_cond, cfg_scale)`` stays a drop-in for the release's
``MMDiffusionTransformer.forward``; it caches the prepared conditioning on the identity
and version counter of ``cross_attn_cond``, so a sampling loop that passes the same
tensor each step prepares once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audiox_engine import kernels
from audiox_engine.engine.cpu_block import CPUDiTBlock
from audiox_engine.engine.discover import looks_like_dit
from audiox_engine.engine.fused_block import FusedDiTBlock
from audiox_engine.engine.profiling import annotate

__all__ = ["AcceleratedDiT", "PreparedConditioning"]

# Arguments of the release's MMDiffusionTransformer.forward that change the result.
_UNSUPPORTED_KWARGS = ("negative_cross_attn_cond", "input_concat_cond", "global_embed", "prepend_cond", "mask")


@dataclass
class PreparedConditioning:
    """Step-invariant state for one generation.

    modulation: (depth, B', N, 6D) every block's adaLN (shift1, scale1, gate1, shift2,
    scale2, gate2), B' = 2B when guided (cond rows first, null rows second);
    cos, sin: (N, d/2) fp32 RoPE tables; guided: CFG batching; cfg_scale: its default
    guidance; batch: B (before CFG doubling); block_modulation: for blocks that define
    ``prepare_modulation`` (the CPU block), what each block takes instead of
    ``modulation[i]`` (None when no block does).
    """

    modulation: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    guided: bool
    cfg_scale: float
    batch: int
    block_modulation: tuple | None = None

    @property
    def num_tokens(self) -> int:
        return self.modulation.shape[2]


class _Transformer(nn.Module):
    """Holds the stack's parts under the release's names (``transformer.project_in`` ...)."""


class AcceleratedDiT(nn.Module):
    """Fused, hoisted replacement for an ``MMDiffusionTransformer`` (``engine.accelerate`` builds it).

    Takes over the DiT's small modules (time embedding, pre/post convs, projections) by
    reference and replaces its blocks with ``FusedDiTBlock``s (``CPUDiTBlock``s for
    ``backend="cpu"``); the adaLN weights and the
    ``to_kv`` K-halves of all blocks are stacked into ``adaln_weight`` (depth, 6D, D),
    ``adaln_bias`` (depth, 6D) and ``time_k_weight`` (depth*D, D).
    """

    _audiox_engine_accelerated = True

    def __init__(self, dit: nn.Module, backend: str = "triton", attention: str = "triton",
                 cuda_graphs: bool = True):
        super().__init__()
        if not looks_like_dit(dit):
            raise ValueError(f"{type(dit).__name__} does not have the AudioX DiT layout (see engine.discover)")
        tr = dit.transformer
        blocks = list(tr.layers)
        shapes = {(b.attn.qkv.in_features, getattr(b.attn, "nheads", None)) for b in blocks}
        if len(shapes) != 1:
            raise ValueError(f"all DiT blocks must share width and head count, got {sorted(shapes)}")
        self.backend = backend
        self.attention = attention
        self.cuda_graphs = bool(cuda_graphs)
        self.depth = len(blocks)
        first = blocks[0]
        self.dim = first.attn.qkv.in_features
        self.num_heads = int(first.attn.nheads)
        self.head_dim = self.dim // self.num_heads
        self.time_norm_eps = float(getattr(first.cross_attn.k_norm, "eps", 1e-6))
        self.io_channels = tr.project_in.in_features

        self.timestep_features = dit.timestep_features
        self.to_timestep_embed = dit.to_timestep_embed
        self.preprocess_conv = dit.preprocess_conv
        self.postprocess_conv = dit.postprocess_conv
        self.transformer = _Transformer()
        self.transformer.project_in = tr.project_in
        self.transformer.project_out = tr.project_out
        self.transformer.proj_mm_tokens = tr.proj_mm_tokens
        self.transformer.proj_mm_seq_len = tr.proj_mm_seq_len
        if backend == "cpu":
            if attention != "sdpa":
                raise ValueError(f"backend='cpu' runs its own SDPA attention; attention must be 'auto' or "
                                 f"'sdpa', got {attention!r}")
            self.transformer.layers = nn.ModuleList(CPUDiTBlock(b) for b in blocks)
        else:
            self.transformer.layers = nn.ModuleList(FusedDiTBlock(b, backend, attention) for b in blocks)

        with torch.no_grad():
            ada = [b.adaLN_modulation[1] for b in blocks]
            w_all = torch.stack([m.weight.detach() for m in ada])  # (depth, 6D, D)
            b_all = torch.stack([
                m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in ada
            ])  # (depth, 6D)
            # to_kv rows are laid out (h d j), j = k/v: the K-half is every other row.
            k_all = torch.cat([b.cross_attn.to_kv.weight.detach()[0::2] for b in blocks])  # (depth*D, D)
        self.register_buffer("adaln_weight", w_all.contiguous())
        self.register_buffer("adaln_bias", b_all.contiguous())
        self.register_buffer("time_k_weight", k_all.contiguous())
        rot = getattr(tr, "latent_rot", None)
        self._model_rot = rot if isinstance(rot, torch.Tensor) else None
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._prepared_cache: tuple | None = None
        self._graphs: dict = {}

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.adaln_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.adaln_weight.device

    def _apply(self, fn, recurse=True):
        # Moving or casting invalidates every cached tensor and captured graph.
        self._rope_cache = {}
        self._prepared_cache = None
        self._graphs = {}
        return super()._apply(fn, recurse)

    def rope(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (n, d/2) fp32 for positions 0..n-1, once per length and device."""
        key = (n, self.device)
        if key not in self._rope_cache:
            d2 = self.head_dim // 2
            rot = self._model_rot
            # A table cast to bf16/fp16 with the model has lost its angles' low bits: recompute.
            exact = rot is not None and rot.dtype in (torch.float32, torch.float64)
            if exact and rot.dim() == 5 and rot.shape[1] == n and rot.shape[2] == d2:
                # The model's own table: rot[..., i, j] is [[cos, -sin], [sin, cos]].
                rot = rot.to(self.device, torch.float32)
                cos, sin = rot[0, :, :, 0, 0].contiguous(), rot[0, :, :, 1, 0].contiguous()
            else:
                cos, sin = kernels.rope_tables(n, self.head_dim, device=self.device)
            self._rope_cache[key] = (cos, sin)
        return self._rope_cache[key]

    def _check_cond(self, cond: torch.Tensor) -> None:
        if not isinstance(cond, torch.Tensor):
            raise TypeError(f"cross_attn_cond must be a tensor, got {type(cond).__name__}")
        want_d = getattr(self.transformer.proj_mm_tokens, "in_features", self.dim)
        if cond.dim() != 3 or cond.shape[2] != want_d:
            raise ValueError(f"cross_attn_cond must be (B, num_cond_tokens, {want_d}), got {tuple(cond.shape)}")
        want_n = getattr(self.transformer.proj_mm_seq_len, "in_features", None)
        if want_n is not None and cond.shape[1] != want_n:
            raise ValueError(f"cross_attn_cond must have {want_n} tokens, got {tuple(cond.shape)}")
        if not cond.is_floating_point():
            raise ValueError(f"cross_attn_cond must be floating point, got {cond.dtype}")
        if cond.device != self.device:
            raise ValueError(f"cross_attn_cond is on {cond.device} but the DiT is on {self.device}")

    # ------------------------------------------------------------- the two verbs
    @torch.no_grad()
    def prepare(self, cross_attn_cond: torch.Tensor, cfg_scale: float = 1.0) -> PreparedConditioning:
        """MAF output (B, num_cond_tokens, Dc) -> every block's modulation, once per generation.

        ``cfg_scale != 1`` prepares the guided batch [cond; zeros] (2B rows), as the
        release's batched CFG.
        """
        self._check_cond(cross_attn_cond)
        with annotate("engine/prepare"):
            b = cross_attn_cond.shape[0]
            guided = float(cfg_scale) != 1.0
            c = cross_attn_cond.to(self.dtype)
            if guided:
                c = torch.cat([c, torch.zeros_like(c)], dim=0)
            c = self.transformer.proj_mm_tokens(c)
            c = self.transformer.proj_mm_seq_len(c.transpose(1, 2)).transpose(1, 2)  # (B', N, D)
            bb, n, d = c.shape
            silu_c = F.silu(c).reshape(1, bb * n, d).expand(self.depth, bb * n, d)
            # One batched GEMM for all blocks, bias fused: (depth, B'*N, 6D).
            mod = torch.baddbmm(self.adaln_bias[:, None, :], silu_c, self.adaln_weight.transpose(1, 2))
            mod = mod.view(self.depth, bb, n, 6 * d)
            cos, sin = self.rope(n)
            per_block = None
            if any(hasattr(layer, "prepare_modulation") for layer in self.transformer.layers):
                per_block = tuple(layer.prepare_modulation(mod[i]) if hasattr(layer, "prepare_modulation")
                                  else mod[i] for i, layer in enumerate(self.transformer.layers))
        return PreparedConditioning(mod, cos, sin, guided, float(cfg_scale), b, per_block)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """t (B,) -> time token (B, D)."""
        return self.to_timestep_embed(self.timestep_features(t[:, None]))

    def time_biases(self, time_token: torch.Tensor) -> torch.Tensor:
        """time token (B, D) -> every block's time-token bias (depth, B, D), one GEMM.

        The release's swapped-K/V single-key "cross-attention" returns the per-head
        RMSNorm of the K-half of ``to_kv(e)`` for every token (see ``audiox/dit.py``).
        """
        b = time_token.shape[0]
        k = F.linear(time_token, self.time_k_weight).view(b, self.depth, self.num_heads, self.head_dim)
        k = k * torch.rsqrt(torch.mean(k * k, dim=-1, keepdim=True) + self.time_norm_eps)
        return k.reshape(b, self.depth, self.dim).transpose(0, 1).contiguous()

    def _check_step_inputs(self, x: torch.Tensor, t: torch.Tensor, prepared: PreparedConditioning) -> None:
        if not isinstance(prepared, PreparedConditioning):
            raise TypeError(f"prepared must come from AcceleratedDiT.prepare(), got {type(prepared).__name__}")
        if x.dim() != 3 or x.shape[1] != self.io_channels:
            raise ValueError(f"x must be (B, {self.io_channels}, T), got {tuple(x.shape)}")
        if x.shape[0] != prepared.batch:
            raise ValueError(f"x has batch {x.shape[0]} but the conditioning was prepared for {prepared.batch}")
        if x.shape[2] + 1 != prepared.num_tokens:
            raise ValueError(
                f"x has {x.shape[2]} latent frames but the DiT runs {prepared.num_tokens - 1} "
                f"(+1 time token = {prepared.num_tokens})")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if x.device != self.device or t.device != self.device:
            raise ValueError(f"x ({x.device}) and t ({t.device}) must be on the DiT's device {self.device}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point, got {x.dtype}")

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, prepared: PreparedConditioning) -> torch.Tensor:
        """The network at batch B' (no CFG logic): x (B', C, T), t (B',) -> v (B', C, T)."""
        e = self.time_embedding(t)  # (B', D)
        biases = self.time_biases(e)  # (depth, B', D)
        x = self.preprocess_conv(x) + x
        tok = self.transformer.project_in(x.transpose(1, 2))  # (B', T, D)
        tok = torch.cat([e.unsqueeze(1), tok], dim=1)  # (B', N, D)
        mods = prepared.modulation if prepared.block_modulation is None else prepared.block_modulation
        for i, block in enumerate(self.transformer.layers):
            tok = block(tok, mods[i], biases[i], prepared.cos, prepared.sin)
        # CPU blocks keep an fp32 residual stream whatever the weights' dtype.
        out = self.transformer.project_out(tok.to(self.dtype)).transpose(1, 2)[:, :, 1:]  # drop the time token
        return self.postprocess_conv(out) + out

    @torch.no_grad()
    def step(self, x: torch.Tensor, t: torch.Tensor, prepared: PreparedConditioning,
             cfg_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """One velocity evaluation: x (B, C, T), t (B,) -> v (B, C, T) in x's dtype.

        With guided ``prepared``, runs cond and null rows in one batch of 2B and returns
        ``u + (c - u) * cfg_scale`` (``cfg_scale`` defaults to the one given to prepare).
        """
        self._check_step_inputs(x, t, prepared)
        in_dtype = x.dtype
        x = x.to(self.dtype)
        t = t.to(self.dtype)
        if not prepared.guided:
            return self._velocity(x, t, prepared).to(in_dtype)
        # A 0-d tensor scale (a CUDA graph's static buffer) is read on the device, never synced.
        scale = prepared.cfg_scale if cfg_scale is None else cfg_scale
        out = self._velocity(torch.cat([x, x]), torch.cat([t, t]), prepared)
        cond, uncond = out.chunk(2, dim=0)
        return (uncond + (cond - uncond) * scale).to(in_dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cross_attn_cond: torch.Tensor | None = None,
                cfg_scale: float = 1.0, **unused) -> torch.Tensor:
        """Drop-in for ``MMDiffusionTransformer.forward``; prepares once per conditioning tensor."""
        if cross_attn_cond is None:
            raise ValueError("cross_attn_cond is required (the MAF output, (B, num_cond_tokens, Dc))")
        # The release's forward takes more conditioning kinds; the Turbo pipeline passes
        # none of them, and ignoring one silently would compute another function.
        for name in _UNSUPPORTED_KWARGS:
            if unused.get(name) is not None:
                raise NotImplementedError(f"AcceleratedDiT does not support {name} (the AudioX-Turbo "
                                          f"pipeline never passes it); use the eager model")
        for name in ("cfg_dropout_prob", "scale_phi"):
            if unused.get(name):
                raise NotImplementedError(f"AcceleratedDiT does not support {name}={unused[name]!r}")
        prepared = self.cached_prepare(cross_attn_cond, cfg_scale)
        return self.step(x, t, prepared, cfg_scale=cfg_scale)

    def cached_prepare(self, cross_attn_cond: torch.Tensor, cfg_scale: float = 1.0) -> PreparedConditioning:
        """``prepare`` memoised on (the tensor object, its version counter, guided or not)."""
        guided = float(cfg_scale) != 1.0
        cached = self._prepared_cache
        if cached is not None:
            cond, version, was_guided, prepared = cached
            if cond is cross_attn_cond and version == cross_attn_cond._version and was_guided == guided:
                return prepared
        prepared = self.prepare(cross_attn_cond, cfg_scale)
        # Holding the tensor keeps its id from being reused by another tensor.
        self._prepared_cache = (cross_attn_cond, cross_attn_cond._version, guided, prepared)
        return prepared
