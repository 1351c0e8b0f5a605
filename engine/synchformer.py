"""The Synchformer video encoder on the engine: ``AcceleratedMotionFormer``.

``engine.accelerate`` finds every module with the release's MotionFormer layout (the
``vfeat_extractor`` of the release's ``Synchformer`` or of ``audiox.synchformer``) by its
attribute names (``engine.discover.find_motionformers``) and puts an ``AcceleratedMotionFormer`` at its attribute. Same call, same
result: segments (B, S, 3, T, H, W) -> features (B, S, t, D).

What changes against the eager module:
- matmuls and convolutions in the engine's dtype (bf16 on GPU by default), while the
  residual stream, the position embeddings and every LayerNorm stay fp32, and so does the
  aggregation layer's CLS row (its query, output projection and MLP, ~1% of the FLOPs):
  real features reach |x| ~ 440, where a bf16 output would keep 2-3 significant digits of
  a large common part and lose what varies with the video;
- attention through the engine's dispatch (``attend_heads``: flash-attn, xformers or
  SDPA). The Synchformer's attention has no q/k norm or RoPE, so the DiT's fused Triton
  kernel does not apply; ``"auto"`` and ``"triton"`` take the best of the others;
- divided attention without wasted rows: the patch queries of each group attend to the
  group plus the CLS key, the CLS query to all keys, in two calls;
- the per-frame aggregation layer computes only the CLS query row, the one it returns.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from audiox_engine.engine.attention import attend_heads, available_attention_backends, resolve_attention
from audiox_engine.engine.discover import MOTIONFORMER_ATTRS, SYNC_BLOCK_PATHS, looks_like_motionformer

__all__ = [
    "AcceleratedMotionFormer",
    "motionformer_layout_problem",
    "resolve_sync_attention",
]


def motionformer_layout_problem(module: nn.Module) -> str | None:
    """Why the engine cannot run this MotionFormer as the release's Synchformer does, or None."""
    temp_agg = getattr(module, "temp_attn_agg", None)
    if temp_agg is not None and not isinstance(temp_agg, nn.Identity):
        return "temp_attn_agg is not Identity (only the Synchformer's per-frame features are supported)"
    if getattr(module, "add_global_repr", False) or getattr(module, "factorize_space_time", True) is False:
        return "add_global_repr / factorize_space_time differ from the Synchformer's"
    conv = getattr(module.patch_embed_3d, "proj", None)
    if not isinstance(conv, nn.Conv3d) or tuple(conv.kernel_size) != tuple(conv.stride):
        return "patch_embed_3d.proj must be a Conv3d with stride = kernel size"
    width = module.cls_token.shape[-1]
    grid = math.isqrt(module.pos_embed.shape[1] - 1)
    if grid * grid + 1 != module.pos_embed.shape[1]:
        return f"pos_embed has {module.pos_embed.shape[1]} slots, not 1 + a square grid"
    for i, block in enumerate(module.blocks):
        for attn in (block.attn, block.timeattn):
            heads = getattr(attn, "num_heads", None)
            if not isinstance(heads, int) or width % heads or attn.qkv.out_features != 3 * width:
                return f"blocks.{i}: attention must have num_heads dividing {width} and a {width}->{3 * width} qkv"
    return None


def resolve_sync_attention(requested: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The attention backend for the Synchformer: ``requested`` unless it is ``"auto"`` or
    ``"triton"`` (the fused kernel is the DiT's), which take the best available plain one."""
    if requested in ("auto", "triton"):
        avail = available_attention_backends(device, dtype, triton_ok=False)
        return next(name for name in ("flash", "xformers", "sdpa") if avail[name])
    return resolve_attention(requested, device, dtype, triton_ok=False)


class AcceleratedMotionFormer(nn.Module):
    """Drop-in for a MotionFormer ``vfeat_extractor``: (B, S, 3, T, H, W) -> (B, S, t, D) fp32.

    Takes the module's parameters by reference under their release names (the state dict
    keeps the official keys); the blocks' Linear and the patch Conv weights are cast to
    ``dtype`` (None keeps them), everything else to fp32.
    """

    _audiox_engine_accelerated = True

    def __init__(self, motionformer: nn.Module, dtype: torch.dtype | None = None, attention: str = "sdpa"):
        super().__init__()
        if not looks_like_motionformer(motionformer):
            raise ValueError(f"{type(motionformer).__name__} does not have the MotionFormer layout "
                             f"({', '.join(MOTIONFORMER_ATTRS)}; blocks with {', '.join(SYNC_BLOCK_PATHS)})")
        problem = motionformer_layout_problem(motionformer)
        if problem:
            raise ValueError(f"cannot accelerate this MotionFormer: {problem}")
        self.attention = attention
        self.cls_token = motionformer.cls_token
        self.pos_embed = motionformer.pos_embed
        self.temp_embed = motionformer.temp_embed
        if hasattr(motionformer, "patch_embed"):
            self.patch_embed = motionformer.patch_embed  # unused by the forward; kept for the keys
        self.patch_embed_3d = motionformer.patch_embed_3d
        self.blocks = motionformer.blocks
        self.norm = motionformer.norm
        self.spatial_attn_agg = motionformer.spatial_attn_agg
        self.depth = len(self.blocks)
        self.dim = self.cls_token.shape[-1]
        self.num_heads = int(self.blocks[0].attn.num_heads)
        self.frames = self.temp_embed.shape[1]
        self.grid = math.isqrt(self.pos_embed.shape[1] - 1)
        with torch.no_grad():
            for p in (self.cls_token, self.pos_embed, self.temp_embed):
                p.data = p.data.float()
            self.norm.float()
            self.spatial_attn_agg.float()
            for b in self.blocks:
                b.float()
            if dtype is not None:
                self.patch_embed_3d.to(dtype)
                for m in [b.get_submodule(p) for b in self.blocks for p in SYNC_BLOCK_PATHS if not p.startswith("norm")]:
                    m.to(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed_3d.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.cls_token.device

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.dim}, heads={self.num_heads}, attention={self.attention}"

    # ------------------------------------------------------------------ pieces
    def _norm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm in fp32, output in the compute dtype."""
        return F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).to(self.dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attend_heads(q, k, v, self.attention)

    def _divided(self, attn: nn.Module, h: torch.Tensor, axis: str) -> torch.Tensor:
        """Divided attention: h (N, 1 + F*P, D) -> (N, 1 + F*P, D) in the compute dtype."""
        n, length, dim = h.shape
        heads = attn.num_heads
        q, k, v = F.linear(h, attn.qkv.weight, attn.qkv.bias).view(n, length, 3, heads, dim // heads).unbind(2)
        cls_out = self._attend(q[:, :1], k, v)                                  # (N, 1, H, d)
        per_frame = (length - 1) // self.frames

        def groups(t: torch.Tensor) -> torch.Tensor:                            # (N, G, len, H, d)
            patches = t[:, 1:].unflatten(1, (self.frames, per_frame))           # (N, F, P, H, d)
            return patches.transpose(1, 2) if axis == "time" else patches

        def with_cls(t: torch.Tensor) -> torch.Tensor:                          # (N*G, 1 + len, H, d)
            g = groups(t)
            return torch.cat([t[:, :1, None].expand(-1, g.shape[1], -1, -1, -1), g], dim=2).flatten(0, 1)

        q_groups = groups(q)
        out = self._attend(q_groups.flatten(0, 1), with_cls(k), with_cls(v)).unflatten(0, q_groups.shape[:2])
        if axis == "time":
            out = out.transpose(1, 2)                                           # (N, F, P, H, d)
        out = torch.cat([cls_out, out.flatten(1, 2)], dim=1).reshape(n, length, dim)
        return F.linear(out, attn.proj.weight, attn.proj.bias)

    def _aggregate(self, frames: torch.Tensor) -> torch.Tensor:
        """The per-frame encoder layer's CLS output: frames (M, P, D) fp32 -> (M, D) fp32.

        Keys and values of all P + 1 tokens in the compute dtype; the CLS row in fp32."""
        agg = self.spatial_attn_agg
        mha = agg.self_attn
        m, _, dim = frames.shape
        heads = mha.num_heads
        x = torch.cat([agg.cls_token.expand(m, -1, -1), frames], dim=1)
        h = F.layer_norm(x, agg.norm1.normalized_shape, agg.norm1.weight, agg.norm1.bias, agg.norm1.eps)
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = F.linear(h[:, :1], w[:dim], b[:dim]).to(self.dtype).view(m, 1, heads, dim // heads)
        kv = F.linear(h.to(self.dtype), w[dim:].to(self.dtype), b[dim:].to(self.dtype))
        k, v = kv.view(m, -1, 2, heads, dim // heads).unbind(2)
        attended = self._attend(q, k, v).reshape(m, 1, dim).float()
        cls = x[:, :1] + F.linear(attended, mha.out_proj.weight, mha.out_proj.bias)
        normed = F.layer_norm(cls, agg.norm2.normalized_shape, agg.norm2.weight, agg.norm2.bias, agg.norm2.eps)
        hidden = F.gelu(F.linear(normed, agg.linear1.weight, agg.linear1.bias))
        return (cls + F.linear(hidden, agg.linear2.weight, agg.linear2.bias))[:, 0]

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 6 or x.shape[2] != 3:
            raise ValueError(f"MotionFormer input must be (B, S, 3, T, H, W) segments, got {tuple(x.shape)}")
        b, s = x.shape[:2]
        conv = self.patch_embed_3d.proj
        tokens = F.conv3d(x.flatten(0, 1).to(self.device, self.dtype), conv.weight, conv.bias, stride=conv.stride)
        if tokens.shape[2:] != (self.frames, self.grid, self.grid):
            raise ValueError(f"segments of {tuple(x.shape[3:])} give {tuple(tokens.shape[2:])} tubelets; this "
                             f"MotionFormer takes {(self.frames, self.grid, self.grid)}")
        tokens = tokens.flatten(2).transpose(1, 2).float()                      # (N, t*h*w, D), time-major
        pos = self.pos_embed[:, 1:].repeat(1, self.frames, 1) + self.temp_embed.repeat_interleave(self.grid ** 2, 1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        h = torch.cat([cls, tokens + pos], dim=1)                               # fp32 residual stream
        for block in self.blocks:
            h = h + self._divided(block.timeattn, self._norm(block.norm3, h), "time")
            h = h + self._divided(block.attn, self._norm(block.norm1, h), "space")
            hidden = F.gelu(F.linear(self._norm(block.norm2, h), block.mlp.fc1.weight, block.mlp.fc1.bias))
            h = h + F.linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)
        patches = F.layer_norm(h[:, 1:], self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        features = self._aggregate(patches.reshape(b * s * self.frames, self.grid ** 2, self.dim))
        return features.view(b, s, self.frames, self.dim)
