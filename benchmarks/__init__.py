"""Benchmark harness for audiox-engine: timing, telemetry, result files, reports, suites.

Entry points: `python -m benchmarks bench ...`, `python -m benchmarks bench report ...`,
`python -m benchmarks profile ...` (see benchmarks/cli.py).
"""
