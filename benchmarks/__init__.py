"""Benchmark harness for audiox-engine: timing, telemetry, result files, reports, suites.

Entry points: `python -m audiox_engine.benchmarks bench ...`, `python -m audiox_engine.benchmarks bench report ...`,
`python -m audiox_engine.benchmarks profile ...` (see benchmarks/cli.py).
"""
