"""Ahead-of-time compile of the FP8/INT8 kernels for sm_90 (H100) with no GPU present.

The interpreter checks numerics (with fp32-upcast dots); this checks the lowering the
speed targets rest on: FP8 x FP8 and INT8 x INT8 ``tl.dot`` become Hopper wgmma
(``e4m3`` / ``s8`` operand types), the weight-only path compiles with its in-register
int8 -> bf16 upcast, and the quantize kernels compile. Uses the launchers' own configs
at the real shapes. Marked slow; run with ``-m slow``. The compile runs in a subprocess
because ``triton.jit`` has already chosen the interpreter in this one.
"""

import pytest
from sm90 import compile_ptx_sm90, run_script_without_interpreter


@pytest.mark.slow
def test_quant_kernels_compile_for_sm90():
    proc = run_script_without_interpreter(__file__, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _main():
    from audiox_engine.kernels import quant_adaln, quant_gemm, quant_rows

    M = 237  # one sample's tokens
    gemm = quant_gemm._scaled_gemm_fwd
    divisible = {"K", "N", "stride_a_b", "stride_a_t", "stride_res_b", "stride_res_t",
                 "stride_g_b", "stride_g_t"}
    # (mode, a pointer type, accumulate in int32, wgmma operand type in the PTX)
    modes = [("w8a8_fp8", "*i8", False, "e4m3"), ("w8a8_int8", "*i8", True, "s8"),
             ("int8_weight_only", "*bf16", False, "bf16")]
    # (taps, epilogue, K, N): qkv, linear1, ffn w1|w3 SwiGLU, ffn w2 + gate/residual.
    layers = [(1, 0, 1536, 4608), (3, 0, 1536, 1536), (3, 1, 1536, 4096), (3, 2, 4096, 1536)]
    for mode, a_ty, acc_int, wgmma_ty in modes:
        quant_a = mode != "int8_weight_only"
        for taps, epilogue, K, N in layers:
            bm, bn, bk, warps, stages = quant_gemm._config(M, N, K, epilogue == 1, quant_a)
            types = {"A": a_ty, "A_SCALE": "*fp32", "W": "*i8", "W_SCALE": "*fp32", "W3": "*i8",
                     "W3_SCALE": "*fp32", "BIAS": "*bf16", "RES": "*bf16", "GATE": "*bf16",
                     "OUT": "*bf16"}
            consts = dict(TAPS=taps, A_QUANT=quant_a, A_FP8=mode == "w8a8_fp8",
                          W_FP8=mode == "w8a8_fp8", ACC_INT=acc_int, EPILOGUE=epilogue,
                          HAS_BIAS=epilogue != 1, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                          DOT_FP32=False, PRECISION="tf32")
            ptx = compile_ptx_sm90(gemm, types, consts, divisible, warps, stages)
            wgmma = [line for line in ptx.splitlines() if "wgmma.mma_async" in line]
            assert wgmma, f"{mode} taps={taps} epilogue={epilogue}: no wgmma"
            assert any(wgmma_ty in line for line in wgmma), \
                f"{mode}: wgmma is not on {wgmma_ty} operands: {wgmma[0].strip()}"
            print(f"{mode:17s} taps={taps} epilogue={epilogue} K={K} N={N}: {wgmma[0].strip()[:60]}")

    for fmt, q_ty in (("fp8_e4m3", "*fp8e4nv"), ("int8", "*i8")):
        dtype, qmax = quant_rows.FORMATS[fmt]
        block_rows, block_k, warps = quant_rows._config(M, 1536)
        compile_ptx_sm90(quant_rows._quantize_rows_fwd, {"X": "*bf16", "Q": q_ty, "S": "*fp32"},
                 dict(QMAX=qmax, EPS_=quant_rows.EPS, IS_INT8=fmt == "int8", FP8_ROUND_FIX=False,
                      BLOCK_ROWS=block_rows, BLOCK_K=block_k), {"K", "stride_x"}, warps, 1)
        compile_ptx_sm90(quant_adaln._adaln_quantize_fwd,
                 {"X": "*bf16", "SHIFT": "*bf16", "SCALE": "*bf16", "Q": q_ty, "S": "*fp32", "eps": "fp32"},
                 dict(QMAX=qmax, EPS_=quant_rows.EPS, IS_INT8=fmt == "int8", FP8_ROUND_FIX=False,
                      BLOCK_ROWS=1, BLOCK_D=2048),
                 {"D", "stride_x_b", "stride_x_n", "stride_sh_b", "stride_sh_n", "stride_sc_b", "stride_sc_n"},
                 8, 1)
    print("all quantized kernels compiled for sm_90")


if __name__ == "__main__":
    _main()
