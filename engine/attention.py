"""Attention backend choice for the DiT's self-attention, detected at run time.

Every backend computes the same thing from the interleaved qkv projection
(B, N, 3*H*d) laid out ``(heads d j)``: parameter-free RMSNorm of q and k over d, RoPE
on pairs (2i, 2i+1), softmax attention with scale 1/sqrt(d), output (B, N, H*d).

- ``triton``: our fused kernel (``kernels.dit_attention`` via ``audiox::dit_attention``);
  norm and RoPE happen inside the kernel, nothing but the output touches memory.
- ``flash`` (flash-attn) / ``xformers``: norm + RoPE in PyTorch, then their kernels.
  Imported lazily, never required; both are CUDA-only (no CPU kernels), flash-attn
  also needs fp16/bf16.
- ``sdpa``: norm + RoPE in PyTorch, then ``F.scaled_dot_product_attention``.

``attend_heads`` is the plain q/k/v form of the last three (no norm, no RoPE, q and k
lengths may differ), used by the Synchformer's attention (``engine.synchformer``).
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F

__all__ = [
    "ATTENTION_BACKENDS",
    "available_attention_backends",
    "resolve_attention",
    "qk_rms_norm_rope",
    "attend",
    "attend_heads",
]

ATTENTION_BACKENDS = ("auto", "triton", "flash", "xformers", "sdpa")


@functools.lru_cache(maxsize=None)
def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_attention_backends(device: torch.device | str, dtype: torch.dtype,
                                  triton_ok: bool) -> dict[str, bool]:
    """Which backends can run on ``device``/``dtype`` in this environment."""
    cuda = torch.device(device).type == "cuda"
    half = dtype in (torch.float16, torch.bfloat16)
    return {
        "triton": bool(triton_ok),
        "flash": cuda and half and _installed("flash_attn"),
        "xformers": cuda and _installed("xformers"),
        "sdpa": True,
    }


def resolve_attention(requested: str, device: torch.device | str, dtype: torch.dtype,
                      triton_ok: bool) -> str:
    """Turn ``requested`` (one of ATTENTION_BACKENDS) into a concrete backend or raise."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {requested!r}")
    avail = available_attention_backends(device, dtype, triton_ok)
    if requested == "auto":
        # Our kernel fuses RMSNorm + RoPE, so it wins whenever Triton runs; then the
        # external kernels, then SDPA which is always there.
        for name in ("triton", "flash", "xformers", "sdpa"):
            if avail[name]:
                return name
    if not avail[requested]:
        why = {
            "triton": "Triton kernels run only on CUDA tensors or under TRITON_INTERPRET=1, "
                      "with backend='triton'",
            "flash": "flash-attn needs the flash_attn package, a CUDA device and fp16/bf16",
            "xformers": "xformers needs the xformers package and a CUDA device (no CPU kernels)",
        }[requested]
        raise ValueError(f"attention={requested!r} is not available on {device} / {dtype}: {why}")
    return requested


def qk_rms_norm_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float) -> torch.Tensor:
    """x (B, N, H, d) -> RMSNorm over d (no scale), RoPE on pairs; math in fp32, x's dtype out.

    cos, sin: (N, d/2) fp32.
    """
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    even, odd = xf[..., 0::2], xf[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((c * even - s * odd, s * even + c * odd), dim=-1).flatten(-2).to(x.dtype)


def _split(qkv: torch.Tensor, num_heads: int, cos, sin, eps):
    b, n, three_d = qkv.shape
    d = three_d // (3 * num_heads)
    q, k, v = qkv.view(b, n, num_heads, d, 3).unbind(-1)  # each (B, N, H, d)
    return qk_rms_norm_rope(q, cos, sin, eps), qk_rms_norm_rope(k, cos, sin, eps), v


def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Softmax attention, scale 1/sqrt(d), no mask: q (B, Nq, H, d), k and v (B, Nk, H, d) ->
    (B, Nq, H, d) with ``backend`` (``flash``, ``xformers`` or ``sdpa``)."""
    if backend == "flash":
        from flash_attn import flash_attn_func  # lazily: optional dependency

        return flash_attn_func(q, k, v.contiguous())
    if backend == "xformers":
        from xformers.ops import memory_efficient_attention  # lazily: optional dependency

        return memory_efficient_attention(q.contiguous(), k.contiguous(), v.contiguous())
    if backend == "sdpa":
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2).contiguous()
        ).transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}")


def attend(qkv: torch.Tensor, num_heads: int, cos: torch.Tensor, sin: torch.Tensor,
           eps: float, backend: str) -> torch.Tensor:
    """Self-attention from interleaved qkv (B, N, 3*H*d) -> (B, N, H*d) with ``backend``."""
    b, n, three_d = qkv.shape
    if backend == "triton":
        from audiox_engine.engine import ops

        return ops.dit_attention(qkv, num_heads, cos, sin, eps)
    q, k, v = _split(qkv, num_heads, cos, sin, eps)
    return attend_heads(q, k, v, backend).reshape(b, n, three_d // 3)
