"""The one implicit-GEMM kernel behind conv1d_k3 and the scaled GEMMs: the switches and
configs its launcher picks for a GPU (checked on CPU by capturing the launch), FP8 at the
DiT's largest K, and the packed weight layout. The ops themselves are tested against
their references in test_conv1d_k3.py and test_quant_gemm.py."""

import pytest
import torch
import torch.nn.functional as F
from kernel_test_utils import assert_close, make_generator, poisoned, randn

from audiox_engine.kernels import (
    _dispatch,
    conv1d_k3,
    pack_conv_weight,
    quantize_per_channel,
    quantize_rows_reference,
    scaled_conv1d_k3,
    scaled_mm,
    unpack_conv_weight,
)
from audiox_engine.kernels import implicit_gemm as ig

H100_SMS = 132
T_REAL = 237  # tokens of one sample
# One DiT block's GEMMs: (name, taps, K per tap, N, swiglu).
DIT_GEMMS = [("qkv", 1, 1536, 4608, False), ("linear1", 3, 1536, 1536, False),
             ("ffn.w1|w3", 3, 1536, 4096, True), ("ffn.w2", 3, 4096, 1536, False)]


class _RecordLaunch:
    """Stands in for the jitted kernel: records (grid, kwargs) of each launch."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
        return launch


@pytest.fixture
def gpu_launch(monkeypatch):
    """Make the launchers take their GPU decisions on CPU tensors and record the launch."""
    monkeypatch.setattr(_dispatch, "interpret_mode", lambda: False)
    monkeypatch.setattr(ig, "interpret_mode", lambda: False)
    monkeypatch.setattr(ig, "use_triton", lambda *tensors: True)
    recorder = _RecordLaunch()
    monkeypatch.setattr(ig, "_implicit_gemm_fwd", recorder)
    return recorder


def _quantized(g, fmt, *shape):
    return quantize_per_channel(randn(g, *shape, scale=0.05), fmt)


def test_fp32_activations_get_exact_fp32_dots_on_gpu(gpu_launch):
    """fp32 operands must not be rounded to TF32 on the tensor cores (~5e-4 relative)."""
    g = make_generator("precision")
    a = randn(g, 2, 7, 32)
    w_q, w_s = _quantized(g, "int8", 16, 32)
    scaled_mm(a, None, w_q, w_s)  # INT8 weight-only, fp32 activations
    conv1d_k3(a, pack_conv_weight(randn(g, 16, 32, 3)))
    conv1d_k3(a.bfloat16(), pack_conv_weight(randn(g, 16, 32, 3, dtype=torch.bfloat16)))
    precisions = [kw["PRECISION"] for _, _, kw in gpu_launch.launches]
    assert precisions == ["ieee", "ieee", "tf32"]  # tf32 is ignored by bf16 dots
    assert not any(kw["DOT_FP32"] for _, _, kw in gpu_launch.launches)


def test_w8a8_switches_on_gpu(gpu_launch):
    g = make_generator("switches")
    x = randn(g, 1, 9, 256)
    for fmt in ("fp8_e4m3", "int8"):
        a, a_s = quantize_rows_reference(x, fmt)
        w_q, w_s = _quantized(g, fmt, 64, 256, 3)
        scaled_conv1d_k3(a, a_s, pack_conv_weight(w_q), w_s)
    (_, fp8_args, fp8), (_, _, int8) = gpu_launch.launches
    # FP8 partial sums are promoted to fp32 every K step, not once per whole K.
    assert fp8["MAX_IMPRECISE_ACC"] == fp8["BLOCK_K"] == 128
    assert fp8_args[0].dtype == torch.float8_e4m3fn  # no int8 view outside the interpreter
    assert not fp8["ACC_INT"] and int8["ACC_INT"] and int8["MAX_IMPRECISE_ACC"] == 0
    assert fp8["A_SCALED"] and fp8["W_SCALED"] and not fp8["A_FP8_AS_INT8"]


@pytest.mark.parametrize("batch", [1, 8])
def test_dit_gemms_launch_at_least_one_wave(batch, gpu_launch):
    """Every DiT GEMM launches a program per SM of an H100 from B=1 (M=237) on, with
    wgmma-sized row blocks (>= 64) and at most 128*128 accumulator elements."""
    M = batch * T_REAL
    for name, taps, K, N, swiglu in DIT_GEMMS:
        for one_byte in (False, True):
            cfg = ig.gemm_config(M, N, K, taps, swiglu, one_byte, H100_SMS)
            assert cfg.programs(M, N) >= H100_SMS, (name, one_byte, cfg)
            assert cfg.block_m >= 64 and cfg.block_k == (128 if one_byte else 64), (name, cfg)
            accumulators = (2 if swiglu else 1) * (2 if one_byte and taps > 1 else 1)
            assert cfg.block_m * cfg.block_n * accumulators <= 128 * 128, (name, one_byte, cfg)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int8"])
def test_w8a8_at_the_largest_k(fmt):
    """The FFN's w2 (Cin=4096, so K = 3*4096 = 12288) with its gated-residual epilogue."""
    g = make_generator("long-k", fmt)
    B, T, cin, cout = 1, 6, 4096, 16
    x = randn(g, B, T, cin) * torch.exp(randn(g, B, T, 1))
    a, a_s = quantize_rows_reference(x, fmt)
    w_q, w_s = _quantized(g, fmt, cout, cin, 3)
    wp = pack_conv_weight(w_q)
    residual, gate = randn(g, B, T, cout), randn(g, B, 1, cout)
    out = poisoned(B, T, cout, dtype=torch.float32)
    kw = dict(epilogue="gated_residual", residual=residual, gate=gate, out_dtype=torch.float32)
    y = scaled_conv1d_k3(a, a_s, wp, w_s, out=out, **kw)
    a64 = a.double() * a_s.double()[..., None]
    w64 = w_q.double() * w_s.double()[:, None, None]

    def conv64(a_, w_):
        return F.conv1d(a_.transpose(1, 2), w_, padding=1).transpose(1, 2)

    expected = residual.double() + conv64(a64, w64) * gate.double()
    magnitude = residual.double().abs() + conv64(a64.abs(), w64.abs()) * gate.double().abs()
    assert y is out
    assert_close(y, expected, torch.float32, reduction=3 * cin, scale=magnitude.abs().max().item())


def test_one_packed_layout_for_every_operand_type():
    """(3, Cout, Cin), Cin contiguous: each tap is the (N, K) Linear layout, whose ``.t()``
    is the column-major B operand ``torch._scaled_mm`` takes."""
    g = make_generator("layout")
    w = randn(g, 6, 5, 3)
    for t in (w, w.half(), quantize_per_channel(w, "int8")[0], quantize_per_channel(w, "fp8_e4m3")[0]):
        p = pack_conv_weight(t)
        assert p.shape == (3, 6, 5) and p.is_contiguous() and p.dtype == t.dtype
        assert torch.equal(p[1].float(), t[:, :, 1].float())
        assert p[0].t().stride() == (1, 5)
        assert torch.equal(unpack_conv_weight(p).float(), t.float())
