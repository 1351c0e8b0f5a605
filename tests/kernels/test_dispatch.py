"""The dispatch rule: Triton on CUDA or under TRITON_INTERPRET=1, the reference otherwise."""

import importlib

import pytest
import torch

from audiox_engine import kernels
from audiox_engine.kernels import _dispatch

# Modules by path: the package re-exports functions under the same names as their files.
KERNEL_OBJECTS = [
    ("audiox_engine.kernels.adaln", "_adaln_fwd"),
    ("audiox_engine.kernels.dit_attention", "_dit_attention_fwd"),
    ("audiox_engine.kernels.implicit_gemm", "_implicit_gemm_fwd"),
    ("audiox_engine.kernels.quant_rows", "_quantize_rows_fwd"),
    ("audiox_engine.kernels.snake_beta", "_snake_beta_fwd"),
]


class _NoLaunch:
    """Stands in for a jitted kernel: any launch fails the test."""

    def __getitem__(self, grid):
        raise AssertionError("the Triton kernel was launched on plain CPU")


def _cpu_cases():
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g)

    x, m = r(2, 5, 16), r(2, 5, 16)
    qkv = r(1, 6, 3 * 2 * 8)
    cos, sin = kernels.rope_tables(6, 8)
    w = kernels.pack_conv_weight(r(12, 16, 3))
    a_q, a_s = kernels.quantize_rows_reference(x, "int8")
    w_q, w_s = kernels.quantize_per_channel(r(12, 16, 3), "int8")
    wq = kernels.pack_quant_conv_weight(w_q)
    return [
        (kernels.adaln_modulate, kernels.adaln_modulate_reference, (x, m, m)),
        (kernels.gated_residual_adaln, kernels.gated_residual_adaln_reference,
         (x, x, m, m, m, r(2, 16))),
        (kernels.dit_attention, kernels.dit_attention_reference, (qkv, 2, cos, sin)),
        (kernels.conv1d_k3, kernels.conv1d_k3_reference, (x, w, r(12))),
        (kernels.conv1d_k3_swiglu, kernels.conv1d_k3_swiglu_reference, (x, w, w)),
        (kernels.conv1d_k3_gated_residual, kernels.conv1d_k3_gated_residual_reference,
         (x, w, r(2, 5, 12), r(2, 1, 12))),
        (kernels.snake_beta, kernels.snake_beta_reference, (x, r(5), r(5))),
        (kernels.adaln_modulate_quantize, kernels.adaln_modulate_quantize_reference, (x, m, m, "fp8_e4m3")),
        (kernels.quantize_rows, kernels.quantize_rows_reference, (x, "int8")),
        (kernels.scaled_conv1d_k3, kernels.scaled_conv1d_k3_reference, (a_q, a_s, wq, w_s)),
        (kernels.scaled_mm, kernels.scaled_mm_reference, (x, None, w_q[..., 0].contiguous(), w_s)),
    ]


def test_plain_cpu_falls_back_to_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for module, name in KERNEL_OBJECTS:
        monkeypatch.setattr(importlib.import_module(module), name, _NoLaunch())
    for op, reference, args in _cpu_cases():
        got, expected = op(*args), reference(*args)
        if isinstance(got, tuple):
            for a, b in zip(got, expected, strict=True):
                assert torch.equal(a, b), op.__name__
        else:
            assert torch.equal(got, expected), op.__name__


def test_plain_cpu_fallback_honours_out(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(1, 3, 8)
    out = torch.full_like(x, float("nan"))
    assert kernels.adaln_modulate(x, x, x, out=out) is out
    assert torch.equal(out, kernels.adaln_modulate_reference(x, x, x))


def test_use_triton_rule(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not _dispatch.use_triton(cpu)
    assert not _dispatch.use_triton(cpu, None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.use_triton(cpu)
    assert _dispatch.dot_in_fp32()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_uses_triton(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert _dispatch.use_triton(torch.zeros(1, device="cuda"))
    assert not _dispatch.dot_in_fp32()
