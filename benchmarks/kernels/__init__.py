"""Kernel benchmarks: one module per op, each with ``run(device, quick) -> list[dict]``.

Rows carry ``kernel, impl, shape, dtype, ms_median, ms_p10, ms_p90`` and ``gbps`` or
``tflops``; ``torch.compile`` rows add ``compile_s``; a baseline that cannot run here
gives a row with NaN times and an ``error``. The harness that calls these lives
elsewhere; ``measure_copy_bandwidth`` gives the copy roofline for the GB/s figures.
"""

from audiox_engine.benchmarks.kernels._common import measure_copy_bandwidth

__all__ = ["measure_copy_bandwidth"]
