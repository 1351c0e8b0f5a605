"""Ahead-of-time compilation for sm_90 (H100) without a GPU, shared by the compile tests.

``triton.jit`` picks the interpreter at decoration time, so each compile test runs its
own file as a script in a subprocess with ``TRITON_INTERPRET`` removed.
"""

from __future__ import annotations

import os
import subprocess
import sys


def compile_ptx_sm90(fn, types: dict, constexprs: dict, divisible: set, num_warps: int, num_stages: int) -> str:
    """PTX of ``fn`` for sm_90; ``types`` maps pointer/float args to Triton types (others
    i32); ``divisible`` names the int args the runtime would mark 16-divisible."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n in divisible or sig[n].startswith("*")}
    src = ASTSource(fn, sig, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages}).asm["ptx"]


def run_script_without_interpreter(script: str, timeout: int) -> subprocess.CompletedProcess:
    """Run ``script`` (a test file's ``__main__``) with the repository on the path and no interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, os.path.abspath(script)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=timeout)
