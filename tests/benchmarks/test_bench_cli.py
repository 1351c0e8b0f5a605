"""benchmarks/cli.py and profiler.py: the `bench` and `profile` commands."""

import subprocess
import sys
from pathlib import Path

import pytest

from audiox_engine.benchmarks import cli
from audiox_engine.benchmarks.profiler import profile_generation, read_trace_names

REPO = Path(__file__).resolve().parents[2]


def test_bad_input_exits_2_with_the_reason(tmp_path, capsys):
    assert cli.main([]) == 2 and "usage" in capsys.readouterr().err
    assert cli.main(["bench", "--smoke", "--device", "cpu", "--backends", "eager,tensorrt",
                     "--out", str(tmp_path / "x.json")]) == 2
    assert "unknown backend(s) ['tensorrt']" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--teacher-steps must be comma-separated integers"):
        cli.main(["bench", "--teacher-steps", "250,lots"])
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--suite", "everything"])
    assert exc.value.code == 2
    assert not (tmp_path / "x.json").exists()


def test_profile_trace_has_named_ranges(tmp_path):
    info = profile_generation("tiny", "cpu", tmp_path / "trace.json", mode="turbo", steps=4)
    names = read_trace_names(info["trace"])
    assert {"generation", "step 0", "step 1", "step 2", "step 3", "decode", "conditioning:conditioner"} <= names
    assert info["steps_seen"] == 4 and info["level"] == "e2e" and info["ranges"]["generation"] > 0


def test_module_entry_point_runs_from_the_checkout(tmp_path):
    """`python -m audiox_engine.benchmarks` from the repository root: the source checkout
    imports itself (audiox_engine/__init__.py extends its __path__), nothing installed needed."""
    out = subprocess.run([sys.executable, "-m", "audiox_engine.benchmarks", "bench", "report", "--md",
                          str(tmp_path / "B.md")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "not measured yet" in (tmp_path / "B.md").read_text()
