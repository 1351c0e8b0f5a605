"""audiox-engine: the one import root of this project.

The repository's top-level folders install under it, so no installed name can collide
with another distribution's (``kernels``, ``benchmarks`` and ``audiox`` are all taken on
PyPI)::

    audiox/      -> audiox_engine.audiox      the eager reference (plain PyTorch)
    kernels/     -> audiox_engine.kernels     Triton kernels beside their references
    engine/      -> audiox_engine.engine      the accelerated backend
    benchmarks/  -> audiox_engine.benchmarks  the harness behind BENCHMARKS.md
    audiox_engine/cli.py                      the ``audiox`` command, above all four

Layers point one way: kernels <- audiox <- engine <- benchmarks <- cli.
"""

__version__ = "0.1.0"

import os as _os

# Run from a source checkout that is not installed (a fresh clone, a copy on a GPU box, a
# second worktree): the subpackages are this folder's siblings. An installed wheel has
# them inside this folder instead, and no pyproject.toml beside it.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
        _os.path.join(_checkout, "kernels", "__init__.py")):
    __path__.append(_checkout)  # noqa: F821 (a package's own __path__)
del _os, _checkout
