"""The quantized paths users already know, for comparison with the engine's FP8 / INT8 kernels.

- ``torch_scaled_mm_fp8``: ``torch._scaled_mm`` (cuBLASLt FP8 on Hopper) on the operands of
  ``kernels.scaled_mm``, with row-wise scales: ``a_scale`` (M, 1) per token, ``w_scale``
  (1, N) per output channel. The weight (N, K) row-major is passed as ``w_q.t()``, the
  column-major B operand it requires. Runs on CUDA (sm_89+) and, in recent PyTorch builds,
  on CPU.
- ``torch_int_mm_int8``: ``torch._int_mm`` (int8 x int8 -> int32), then both scales and the
  bias in fp32. On CUDA it needs M > 16 and K, N multiples of 8; CPU takes any shape.
- ``swap_to_bnb_linear8bit``: bitsandbytes ``Linear8bitLt`` (LLM.int8()), the INT8 baseline
  users know. Optional: bitsandbytes is detected at run time and never required. Only
  ``nn.Linear`` layers can be swapped (bitsandbytes has no Conv1d), so on the DiT it
  quantizes qkv, to_q, to_kv and the adaLN Linear and leaves the k=3 convs (linear1 and
  the FFN, ~70% of the weights) in high precision; compare it with
  ``Int8WeightAndActivationConfig`` restricted to Linear layers for a like-for-like number.
  Its quantization happens when the model is moved to CUDA (bitsandbytes' rule).

None of these has a fused epilogue beyond the bias.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from audiox_engine.engine.discover import replace_module
from audiox_engine.engine.quantize import default_filter

__all__ = ["torch_scaled_mm_fp8", "torch_int_mm_int8", "bitsandbytes_available", "swap_to_bnb_linear8bit"]


def _flatten(a: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor):
    if w_q.dim() != 2 or a.shape[-1] != w_q.shape[1]:
        raise ValueError(f"w_q must be (N, K) with K = a.shape[-1] = {a.shape[-1]}, got {tuple(w_q.shape)}")
    if tuple(a_scale.shape) != tuple(a.shape[:-1]):
        raise ValueError(f"a_scale must be a.shape[:-1] = {tuple(a.shape[:-1])}, got {tuple(a_scale.shape)}")
    return a.reshape(-1, a.shape[-1]).contiguous(), a_scale.reshape(-1, 1).float()


def torch_scaled_mm_fp8(a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor,
                        w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                        out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """FP8 ``(a_q * a_scale) @ (w_q * w_scale).T + bias`` via ``torch._scaled_mm``.

    a_q (..., K) and w_q (N, K) are ``torch.float8_e4m3fn``; a_scale (...) and w_scale (N,)
    fp32. Row-wise scaling needs a bfloat16 output on CUDA.
    """
    if a_q.dtype != torch.float8_e4m3fn or w_q.dtype != torch.float8_e4m3fn:
        raise ValueError(f"torch_scaled_mm_fp8 needs float8_e4m3fn operands, got {a_q.dtype} and {w_q.dtype}")
    a2, s2 = _flatten(a_q, a_scale, w_q)
    y = torch._scaled_mm(a2, w_q.t(), scale_a=s2, scale_b=w_scale.reshape(1, -1).float(),
                         bias=None if bias is None else bias.to(out_dtype), out_dtype=out_dtype)
    return y.reshape(*a_q.shape[:-1], w_q.shape[0])


def torch_int_mm_int8(a_q: torch.Tensor, a_scale: torch.Tensor, w_q: torch.Tensor,
                      w_scale: torch.Tensor, bias: torch.Tensor | None = None,
                      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """INT8 ``(a_q * a_scale) @ (w_q * w_scale).T + bias`` via ``torch._int_mm``."""
    if a_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise ValueError(f"torch_int_mm_int8 needs int8 operands, got {a_q.dtype} and {w_q.dtype}")
    a2, s2 = _flatten(a_q, a_scale, w_q)
    y = torch._int_mm(a2, w_q.t()).float() * s2 * w_scale.reshape(1, -1).float()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype).reshape(*a_q.shape[:-1], w_q.shape[0])


def bitsandbytes_available() -> bool:
    """True when ``import bitsandbytes`` works (it needs a CUDA build to be useful)."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or its own RuntimeError on a machine without CUDA libs
        return False
    return True


def swap_to_bnb_linear8bit(model: nn.Module,
                           filter_fn: Callable[[nn.Module, str], bool] | None = None,
                           threshold: float = 6.0) -> nn.Module:
    """Replace the selected ``nn.Linear`` layers by ``bnb.nn.Linear8bitLt``, in place.

    ``filter_fn(module, fqn)`` defaults to ``engine.quantize.default_filter`` (the DiT
    blocks); non-Linear modules are never swapped. ``threshold`` is LLM.int8()'s outlier
    threshold (6.0, its default; 0.0 disables the fp16 outlier path). Move the model to
    CUDA afterwards: bitsandbytes quantizes on that move.
    """
    if not bitsandbytes_available():
        raise ImportError("the bitsandbytes baseline needs `pip install bitsandbytes` (a CUDA build); "
                          "it is optional and only used for comparison")
    import bitsandbytes as bnb

    filter_fn = filter_fn or default_filter
    chosen = [(fqn, m) for fqn, m in model.named_modules()
              if isinstance(m, nn.Linear) and filter_fn(m, fqn)]
    if not chosen:
        raise ValueError("swap_to_bnb_linear8bit: the filter selected no nn.Linear")
    for fqn, m in chosen:
        new = bnb.nn.Linear8bitLt(m.in_features, m.out_features, bias=m.bias is not None,
                                  has_fp16_weights=False, threshold=threshold)
        new.weight = bnb.nn.Int8Params(m.weight.data.half(), requires_grad=False, has_fp16_weights=False)
        if m.bias is not None:
            new.bias = nn.Parameter(m.bias.data.half(), requires_grad=False)
        replace_module(model, fqn, new)
    return model
