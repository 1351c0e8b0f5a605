"""Kernel benchmarks: one module per op, each with ``run(device, quick)`` yielding rows.

A row carries ``kernel, impl, shape, dtype`` and either ``timing`` (from
``benchmarks.timing``) with ``gbps`` or ``tflops``, or ``error`` for an implementation
that cannot run here, or ``skipped`` with the reason it was left out; ``torch.compile`` rows add ``compile_s`` (see ``_common``). The
``kernels`` suite of ``benchmarks.suites`` runs every module here and saves each row as it
comes; ``measure_copy_bandwidth`` gives the copy roofline for the GB/s figures.
"""

from audiox_engine.benchmarks.kernels._common import measure_copy_bandwidth

__all__ = ["measure_copy_bandwidth"]
