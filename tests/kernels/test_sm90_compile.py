"""Ahead-of-time compile of every kernel for sm_90 (H100) with no GPU present.

The interpreter checks numerics, not lowering: this catches kernels that do not compile
for Hopper, and checks the two properties the performance targets rest on (wgmma for
the bf16 dots, 16-byte vector loads in the norm kernel). It uses the launchers' own
configs for the real shapes. Marked slow (~1 min); run with ``-m slow``. The compile runs in
a subprocess because ``triton.jit`` has already chosen the interpreter in this one.
"""

import pytest
from sm90 import compile_ptx_sm90, run_script_without_interpreter


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    proc = run_script_without_interpreter(__file__, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _main():
    import importlib

    # By path: the package re-exports functions under the same names as their files.
    adaln, conv1d_k3, dit_attention, snake_beta = (
        importlib.import_module(f"audiox_engine.kernels.{m}")
        for m in ("adaln", "conv1d_k3", "dit_attention", "snake_beta"))

    bf16 = "*bf16"
    # adaLN at D=1536 (16-divisible, as the runtime would specialise it).
    block_rows, block_d, warps = adaln._config(237, 1536)
    ptx = compile_ptx_sm90(adaln._adaln_fwd,
                   {**{n: bf16 for n in ["X", "Y", "GATE", "BIAS", "SHIFT", "SCALE",
                                         "X2_OUT", "H_OUT"]}, "eps": "fp32"},
                   dict(HAS_RESIDUAL=True, HAS_BIAS=True, BLOCK_ROWS=block_rows,
                        BLOCK_D=block_d),
                   {"D"} | {n for n in adaln._adaln_fwd.arg_names if n.startswith("stride")},
                   warps, 1)
    assert "ld.global.v4" in ptx, "adaLN loads are not vectorised"

    # Attention: the real shape (64 x 24, N=237) and a head dim of 128.
    for B, N, H, d in [(1, 237, 64, 24), (1, 1024, 16, 128)]:
        block_m, block_n, warps = dit_attention._config(N, d, B, H)
        half, block_dv = dit_attention._head_blocks(d)
        ptx = compile_ptx_sm90(dit_attention._dit_attention_fwd,
                       {"QKV": bf16, "OUT": bf16, "COS": "*fp32", "SIN": "*fp32",
                        "eps": "fp32", "qk_scale": "fp32"},
                       dict(BLOCK_M=block_m, BLOCK_N=block_n,
                            HALF=half, BLOCK_DV=block_dv, DOT_FP32=False,
                            PRECISION="tf32"), set(), warps, 2)
        assert "mma" in ptx, f"attention d={d} does not use tensor cores"

    # Conv k3: the three epilogues at their real shapes.
    for epilogue, cin, cout in [(1, 1536, 4096), (2, 4096, 1536), (0, 1536, 1536)]:
        bm, bn, bk, warps, stages = conv1d_k3._config(237, cout, cin, epilogue == 1)
        ptx = compile_ptx_sm90(conv1d_k3._conv1d_k3_fwd,
                       {n: bf16 for n in ["X", "W1", "W3", "BIAS", "RES", "GATE", "OUT"]},
                       dict(EPILOGUE=epilogue, HAS_BIAS=epilogue != 1, BLOCK_M=bm,
                            BLOCK_N=bn, BLOCK_K=bk, DOT_FP32=False, PRECISION="tf32"),
                       {"CIN", "COUT", "stride_x_b", "stride_x_t"}, warps, stages)
        assert "wgmma" in ptx, f"conv epilogue {epilogue} does not use wgmma"

    block, warps = snake_beta._config(474)
    compile_ptx_sm90(snake_beta._snake_beta_fwd, {n: "*fp32" for n in ["X", "ALPHA", "BETA", "OUT"]},
             dict(BLOCK=block), {"stride_x_b", "stride_x_c"}, warps, 1)
    print("all kernels compiled for sm_90")


if __name__ == "__main__":
    _main()
