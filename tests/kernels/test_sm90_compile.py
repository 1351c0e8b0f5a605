"""Ahead-of-time compile of the float kernels for sm_90 (H100) with no GPU present.

The interpreter checks numerics, not lowering: this catches kernels that do not compile
for Hopper, and checks what the performance targets rest on, with the launchers' own
configs at the real shapes: wgmma for the bf16 dots (the implicit GEMM at B=1 and B=8,
attention at B=1), no register spills, 16-byte vector loads in the norm kernel. Marked
slow; run with ``-m slow``. The compile runs in a subprocess because ``triton.jit`` has
already chosen the interpreter in this one. The FP8/INT8 kernels: test_quant_sm90_compile.py.
"""

import pytest
from sm90 import check_gemm_sm90, compile_sm90, ptxas_usage, run_script_without_interpreter


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    proc = run_script_without_interpreter(__file__, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _main():
    import importlib

    # By path: the package re-exports functions under the same names as their files.
    adaln, dit_attention, snake_beta = (
        importlib.import_module(f"audiox_engine.kernels.{m}")
        for m in ("adaln", "dit_attention", "snake_beta"))

    bf16 = "*bf16"
    # adaLN at D=1536 (16-divisible, as the runtime would specialise it).
    block_rows, block_d, warps = adaln._config(237, 1536)
    kernel = compile_sm90(
        adaln._adaln_fwd,
        {**{n: bf16 for n in ["X", "Y", "GATE", "BIAS", "SHIFT", "SCALE", "X2_OUT", "H_OUT"]},
         "H_SCALE": "*fp32", "eps": "fp32"},
        dict(HAS_RESIDUAL=True, HAS_BIAS=True, QUANTIZE=False, QMAX=1.0, QEPS=1e-12, IS_INT8=False,
             FP8_ROUND_FIX=False, BLOCK_ROWS=block_rows, BLOCK_D=block_d),
        {"D"} | {n for n in adaln._adaln_fwd.arg_names if n.startswith("stride")}, warps, 1)
    assert "ld.global.v4" in kernel.asm["ptx"], "adaLN loads are not vectorised"

    # Attention: the real shape (64 heads of 24, N=237) at B=1 and a head dim of 128.
    for B, N, H, d in [(1, 237, 64, 24), (1, 1024, 16, 128)]:
        block_m, block_n, warps = dit_attention._config(N, d, B, H)
        half, block_dv = dit_attention._head_blocks(d)
        kernel = compile_sm90(dit_attention._dit_attention_fwd,
                              {"QKV": bf16, "OUT": bf16, "COS": "*fp32", "SIN": "*fp32",
                               "eps": "fp32", "qk_scale": "fp32"},
                              dict(BLOCK_M=block_m, BLOCK_N=block_n, HALF=half, BLOCK_DV=block_dv,
                                   DOT_FP32=False, PRECISION="tf32"), set(), warps, 2)
        assert "wgmma.mma_async" in kernel.asm["ptx"], f"attention d={d} does not use wgmma"
        usage = ptxas_usage(kernel)
        assert usage["spill_stores"] == 0, f"attention d={d} spills: {usage}"
        print(f"attention B={B} N={N} H={H} d={d} BLOCK_M={block_m} warps={warps}: "
              f"{usage['registers']} registers, no spills, wgmma")

    # The bf16 convs (the implicit GEMM with three taps) at B=1 and B=8.
    for M in (237, 8 * 237):
        for layer in ("linear1", "ffn.w1|w3", "ffn.w2"):
            print(check_gemm_sm90("bf16", layer, M))

    block, warps = snake_beta._config(474)
    compile_sm90(snake_beta._snake_beta_fwd, {n: "*fp32" for n in ["X", "ALPHA", "BETA", "OUT"]},
                 dict(BLOCK=block), {"stride_x_b", "stride_x_c"}, warps, 1)
    print("all kernels compiled for sm_90")


if __name__ == "__main__":
    _main()
