"""Ahead-of-time compile of the FP8/INT8 paths for sm_90 (H100) with no GPU present.

The interpreter checks numerics (with fp32-upcast dots); this checks the lowering the
speed targets rest on, with the launchers' own configs at the DiT's GEMMs for B=1 and
B=8: FP8 x FP8 and INT8 x INT8 ``tl.dot`` become Hopper wgmma (``e4m3`` / ``s8``
operands), the weight-only path compiles with its in-register int8 -> bf16 upcast, no
config spills registers, FP8 partial sums are promoted to fp32 every BLOCK_K; and the
quantize kernels compile. Marked slow; run with ``-m slow``. The compile runs in a
subprocess because ``triton.jit`` has already chosen the interpreter in this one.
"""

import pytest
from sm90 import DIT_GEMMS, check_gemm_sm90, compile_sm90, run_script_without_interpreter


@pytest.mark.slow
def test_quant_kernels_compile_for_sm90():
    proc = run_script_without_interpreter(__file__, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _main():
    from audiox_engine.kernels import adaln, quant_rows

    for M in (237, 8 * 237):  # one sample's tokens, and eight
        for mode in ("w8a8_fp8", "w8a8_int8", "int8_weight_only"):
            for layer, *_ in DIT_GEMMS:
                print(check_gemm_sm90(mode, layer, M))

    for fmt, q_ty in (("fp8_e4m3", "*fp8e4nv"), ("int8", "*i8")):
        dtype, qmax = quant_rows.FORMATS[fmt]
        block_rows, block_k, warps = quant_rows._config(237, 1536)
        compile_sm90(quant_rows._quantize_rows_fwd, {"X": "*bf16", "Q": q_ty, "S": "*fp32"},
                     dict(QMAX=qmax, EPS_=quant_rows.EPS, IS_INT8=fmt == "int8", FP8_ROUND_FIX=False,
                          BLOCK_ROWS=block_rows, BLOCK_K=block_k), {"K", "stride_x"}, warps, 1)
        block_rows, block_d, warps = adaln._config(237, 1536)
        compile_sm90(adaln._adaln_fwd,
                     {**{n: "*bf16" for n in ["X", "Y", "GATE", "BIAS", "SHIFT", "SCALE", "X2_OUT"]},
                      "H_OUT": q_ty, "H_SCALE": "*fp32", "eps": "fp32"},
                     dict(HAS_RESIDUAL=False, HAS_BIAS=False, QUANTIZE=True, QMAX=qmax, QEPS=quant_rows.EPS,
                          IS_INT8=fmt == "int8", FP8_ROUND_FIX=False, BLOCK_ROWS=block_rows, BLOCK_D=block_d),
                     {"D"} | {n for n in adaln._adaln_fwd.arg_names if n.startswith("stride")}, warps, 1)
    print("all quantized kernels compiled for sm_90")


if __name__ == "__main__":
    _main()
