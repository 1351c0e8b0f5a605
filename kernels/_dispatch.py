"""Choose between a Triton kernel and its plain-PyTorch reference.

One rule for every op: Triton runs when the tensors are on CUDA, or when
``TRITON_INTERPRET=1`` is set (the Triton interpreter runs kernels on CPU tensors,
which is how the tests exercise them without a GPU). Plain CPU falls back to the
reference. Also holds the small launcher helpers and ``@triton.jit`` helpers the ops share.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Streaming multiprocessors assumed where no GPU can be asked: an H100 SXM's.
H100_SMS = 132


def interpret_mode() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether the ops should launch their Triton kernels for these tensors.

    Read at call time (not import time) so tests can flip ``TRITON_INTERPRET``.
    """
    present = [t for t in tensors if t is not None]
    if interpret_mode():
        return True
    return bool(present) and all(t.is_cuda for t in present)


def dot_in_fp32() -> bool:
    """Whether ``tl.dot`` operands must be upcast to fp32.

    The interpreter gives wrong results for ``tl.dot`` on fp16/bf16 operands; on a GPU
    the kernels keep half-precision operands for the tensor cores.
    """
    return interpret_mode()


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 for fp32 inputs (and for the interpreter's
    upcast operands), so fp32 callers get fp32 results rather than TF32 ones."""
    return "ieee" if dtype == torch.float32 or dot_in_fp32() else "tf32"


def check_same_device_dtype(ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Raise ValueError unless every given tensor matches ``ref``'s device and dtype."""
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but the input is on {ref.device}")
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but the input has {ref.dtype}")


def check_float(name: str, t: torch.Tensor) -> None:
    """Raise ValueError unless ``t`` is fp32, fp16 or bf16."""
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    """Kernels pass outer strides but assume unit stride along the last dim."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last dimension (stride {t.stride()})")


def expand_broadcast(name: str, t: torch.Tensor, B: int, N: int, D: int) -> torch.Tensor:
    """Validate a per-token (B, N, D) or per-sample (B, 1, D) tensor (a modulation, a
    gate) and expand it to (B, N, D): per-sample rows get stride 0, nothing is copied."""
    if t.dim() != 3 or t.shape[0] != B or t.shape[2] != D or t.shape[1] not in (1, N):
        raise ValueError(f"{name} must be (B, N, D) or (B, 1, D) = ({B}, {N} or 1, {D}), "
                         f"got {tuple(t.shape)}")
    check_last_dim_contiguous(name, t)
    return t.expand(B, N, D)


def check_out(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor,
              name: str = "out", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``out`` after validating it, or a fresh contiguous tensor on ``like``'s
    device, in ``dtype`` (default: ``like``'s)."""
    dtype = like.dtype if dtype is None else dtype
    if out is None:
        return torch.empty(shape, device=like.device, dtype=dtype)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != dtype or out.device != like.device:
        raise ValueError(f"{name} must be {dtype} on {like.device}, got {out.dtype} on {out.device}")
    if not out.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return out


def copy_into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """Reference path: honour ``out=`` by copying into it."""
    if out is None:
        return result
    out.copy_(result)
    return out


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA ``device``; ``H100_SMS`` anywhere else (the
    interpreter, ahead-of-time compiles), where launch configs are sized for an H100."""
    if device.type == "cuda":
        return _cuda_sm_count(torch.device(device).index or torch.cuda.current_device())
    return H100_SMS


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@triton.jit
def load_rows_f32(ptr, b, n, stride_b, stride_n, cols, mask):
    """fp32 [rows, cols] tile of a (B, N, D) tensor with strides (stride_b, stride_n, 1),
    for rows given by their (b, n) indices (int64) and columns ``cols``; zero where masked."""
    offs = (b * stride_b + n * stride_n)[:, None] + cols[None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
