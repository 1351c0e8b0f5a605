"""Ahead-of-time compilation for sm_90 (H100) without a GPU, shared by the compile tests.

``triton.jit`` picks the interpreter at decoration time, so each compile test runs its
own file as a script in a subprocess with ``TRITON_INTERPRET`` removed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys


def compile_sm90(fn, types: dict, constexprs: dict, divisible: set, num_warps: int, num_stages: int):
    """The compiled kernel (``.asm`` holds ttgir, ptx, cubin) of ``fn`` for sm_90;
    ``types`` maps pointer/float args to Triton types (others i32); ``divisible`` names the
    int args the runtime would mark 16-divisible. ``.ptxas_log`` holds what Triton's own
    ``ptxas -v`` said (compiled afresh, not from the cache, so the log is there)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n in divisible or sig[n].startswith("*")}
    src = ASTSource(fn, sig, constexprs, attrs)
    os.environ["TRITON_ALWAYS_COMPILE"] = os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages})
    kernel.ptxas_log = log.getvalue()
    return kernel


def compile_ptx_sm90(fn, types: dict, constexprs: dict, divisible: set, num_warps: int, num_stages: int) -> str:
    """PTX of ``fn`` for sm_90 (see ``compile_sm90``)."""
    return compile_sm90(fn, types, constexprs, divisible, num_warps, num_stages).asm["ptx"]


def ptxas_usage(kernel) -> dict:
    """Registers per thread and spill bytes of a ``compile_sm90`` kernel, from its ptxas log:
    ``{"registers": int, "spill_stores": int, "spill_loads": int}``."""
    regs = re.search(r"Used (\d+) registers", kernel.ptxas_log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", kernel.ptxas_log)
    assert regs and spills, f"no ptxas -v figures in the log: {kernel.ptxas_log[-500:]}"
    return {"registers": int(regs.group(1)), "spill_stores": int(spills.group(1)),
            "spill_loads": int(spills.group(2))}


def run_script_without_interpreter(script: str, timeout: int) -> subprocess.CompletedProcess:
    """Run ``script`` (a test file's ``__main__``) with the repository on the path and no interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, os.path.abspath(script)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=timeout)


# One DiT block's GEMMs: (name, taps, K per tap, N, epilogue index of implicit_gemm.EPILOGUES).
DIT_GEMMS = [("qkv", 1, 1536, 4608, 0), ("linear1", 3, 1536, 1536, 0),
             ("ffn.w1|w3", 3, 1536, 4096, 1), ("ffn.w2", 3, 4096, 1536, 2)]
# mode -> (a pointer type, w pointer type, a dtype name, w dtype name, wgmma operand type).
GEMM_MODES = {
    "bf16": ("*bf16", "*bf16", "bfloat16", "bfloat16", "bf16"),
    "w8a8_fp8": ("*fp8e4nv", "*fp8e4nv", "float8_e4m3fn", "float8_e4m3fn", "e4m3"),
    "w8a8_int8": ("*i8", "*i8", "int8", "int8", "s8"),
    "int8_weight_only": ("*bf16", "*i8", "bfloat16", "int8", "bf16"),
}


def check_gemm_sm90(mode: str, layer: str, M: int, sms: int = 132) -> str:
    """Compile ``implicit_gemm``'s kernel with its launcher's config and switches for one
    DiT GEMM at M rows; assert wgmma on the mode's operand type, no register spills, and
    FP8 partial sums promoted every BLOCK_K. Returns a one-line summary."""
    import torch

    from audiox_engine.kernels import implicit_gemm as ig

    a_ty, w_ty, a_name, w_name, wgmma_ty = GEMM_MODES[mode]
    a_dtype, w_dtype = getattr(torch, a_name), getattr(torch, w_name)
    _, taps, K, N, epilogue = next(g for g in DIT_GEMMS if g[0] == layer)
    quantized_w = w_dtype != a_dtype or a_dtype.itemsize == 1
    cfg = ig.gemm_config(M, N, K, taps, epilogue == 1, a_dtype.itemsize == 1, sms)
    switches = ig.kernel_switches(a_dtype, w_dtype, a_dtype.itemsize == 1, quantized_w, cfg.block_k)
    types = {"A": a_ty, "A_SCALE": "*fp32", "W1": w_ty, "W1_SCALE": "*fp32", "W3": w_ty,
             "W3_SCALE": "*fp32", "BIAS": "*bf16", "RES": "*bf16", "GATE": "*bf16", "OUT": "*bf16"}
    consts = dict(TAPS=taps, EPILOGUE=epilogue, HAS_BIAS=epilogue != 1, BLOCK_M=cfg.block_m,
                  BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **switches)
    # The runtime marks these 16-divisible at the DiT's sizes (K, N, strides multiples of 16).
    divisible = {"K", "N", "stride_a_b", "stride_a_t", "stride_res_b", "stride_res_t",
                 "stride_g_b", "stride_g_t"}
    kernel = compile_sm90(ig._implicit_gemm_fwd, types, consts, divisible, cfg.num_warps, cfg.num_stages)
    what = f"{mode} {layer} M={M} tile {cfg.block_m}x{cfg.block_n}x{cfg.block_k} " \
           f"warps={cfg.num_warps} stages={cfg.num_stages} programs={cfg.programs(M, N)}"
    wgmma = [line.strip() for line in kernel.asm["ptx"].splitlines() if "wgmma.mma_async" in line]
    assert wgmma, f"{what}: no wgmma"
    assert all(wgmma_ty in line for line in wgmma), f"{what}: wgmma not on {wgmma_ty}: {wgmma[0]}"
    usage = ptxas_usage(kernel)
    assert usage["spill_stores"] == usage["spill_loads"] == 0, f"{what}: spills {usage}"
    promotions = set(re.findall(r"maxNumImpreciseAcc = (\d+)", kernel.asm["ttgir"]))
    if mode == "w8a8_fp8":
        assert promotions == {str(cfg.block_k)}, f"{what}: FP8 promotion interval {promotions}"
    return f"{what}: {usage['registers']} registers, no spills, {wgmma[0][:52]}"
