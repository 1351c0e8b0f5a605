"""What this CPU can do, as the CPU backend needs it: vector ISA and fast bf16 matmuls.

bf16 GEMMs pay on a CPU only with hardware bf16 dot products: AMX tiles (Intel Sapphire
Rapids and later) or AVX-512 BF16 (Cooper Lake, AMD Zen 4 and later). Elsewhere oneDNN
emulates them with fp32 FMAs plus conversions, slower than fp32 itself, so
``dtype="auto"`` picks bf16 only when ``bf16_matmul_is_fast()``.

The probes are private ``torch.cpu`` helpers (present since torch 2.3); each is read
with ``getattr`` so a torch without one reports False instead of failing.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["cpu_features", "bf16_matmul_is_fast", "auto_cpu_dtype"]


def _probe(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    if fn is None:
        return False
    try:
        return bool(fn())
    except Exception:  # a probe that cannot run on this build says "no"
        return False


@functools.lru_cache(maxsize=None)
def cpu_features() -> dict:
    """{"capability": "AVX512" | "AVX2" | "DEFAULT" | ..., "amx": bool, "avx512_bf16": bool,
    "bf16_fast": bool}: ATen's vector kernels in use, and the bf16 matmul hardware."""
    get_cap = getattr(torch.backends.cpu, "get_cpu_capability", None)
    capability = str(get_cap()) if get_cap is not None else "unknown"
    amx = _probe("_is_amx_tile_supported")
    avx512_bf16 = _probe("_is_avx512_bf16_supported")
    return {"capability": capability, "amx": amx, "avx512_bf16": avx512_bf16,
            "bf16_fast": amx or avx512_bf16}


def bf16_matmul_is_fast() -> bool:
    """True when this CPU has AMX or AVX-512 BF16, so bf16 GEMMs beat fp32 ones."""
    return cpu_features()["bf16_fast"]


def auto_cpu_dtype() -> torch.dtype:
    """The CPU backend's ``dtype="auto"``: bf16 where the ISA makes it pay, fp32 otherwise."""
    return torch.bfloat16 if bf16_matmul_is_fast() else torch.float32
