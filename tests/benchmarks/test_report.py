"""benchmarks/report.py, charts.py and compare.py: tables, plots, regressions."""

import json

import pytest
import torch

from audiox_engine.benchmarks import cli, compare, environment, report, results


def test_report_writes_tables_plots_and_keeps_prose(smoke_run, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\nHand-written intro.\n\n{report.MARK_BEGIN}\nold\n{report.MARK_END}\n\nOutro.\n")
    plots = tmp_path / "plots"
    assert cli.main(["bench", "report", str(smoke_run), "--md", str(md), "--plots", str(plots)]) == 0
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written intro.") and text.rstrip().endswith("Outro.")
    assert "\nold\n" not in text and text.count(report.MARK_BEGIN) == 1
    assert f"torch: {torch.__version__}" in text and "Triton:" in text and "driver:" in text
    assert "speedup vs eager teacher-1" in text and "Turbo 4 steps" in text and "Smoke run" in text
    assert "skipped" in text and "FP8 needs a CUDA GPU" in text
    assert "The engine against its peers" in text and "vs eager (float32)" in text and "vs compile (float32)" in text
    pngs = sorted(p.name for p in plots.iterdir())
    assert "smoke-headline-latency_vs_steps.png" in pngs and "smoke-headline-speedup.png" in pngs
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{p.name}" in text
    # regenerating replaces the block instead of appending a second one
    assert cli.main(["bench", "report", str(smoke_run), "--md", str(md)]) == 0
    assert md.read_text().count(report.MARK_BEGIN) == 1


def test_report_without_results_says_not_measured(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    assert cli.main(["bench", "report", "--md", str(md)]) == 0
    text = md.read_text()
    assert "not measured yet" in text and report.MARK_BEGIN in text and "ms" not in text.split(report.MARK_BEGIN)[1]
    md.write_text(f"{report.MARK_END}\n{report.MARK_BEGIN}\n")
    assert cli.main(["bench", "report", "--md", str(md)]) == 2  # a broken generated block is refused


def _entry(name, median_ms, **params):
    t = {"median_ms": median_ms, "p10_ms": median_ms, "p90_ms": median_ms, "samples_ms": [median_ms]}
    backend = name.rpartition("/")[2]
    return results.make_entry(name=name, group="headline", params={"backend": backend, "dtype": "bfloat16", **params},
                              timing=t, nfe=4, batch=1, telemetry=None, telemetry_reason="cpu")


def _run(entries, skipped=(), complete=True):
    run = results.new_run("headline", environment.capture_environment("cpu"))
    run["entries"], run["skipped"], run["complete"] = list(entries), list(skipped), complete
    return results.validate(run)


def test_engine_rows_are_put_against_each_peer():
    turbo = {"mode": "turbo", "steps": 4}
    run = _run([_entry("turbo-4/eager", 30.0, **turbo), _entry("turbo-4/compile", 20.0, **turbo),
                _entry("turbo-4/engine-bf16", 10.0, **turbo), _entry("turbo-4/engine-fp8", 8.0, **turbo),
                _entry("teacher-1/engine-bf16", 5.0, mode="teacher", steps=1, cfg_scale=6.0),
                _entry("teacher-1/eager", 15.0, mode="teacher", steps=1, cfg_scale=6.0)])
    ratios = {e["name"]: r for e, r in report.peer_ratios(run, "headline")}
    assert ratios["turbo-4/engine-bf16"] == pytest.approx({"eager": 3.0, "compile": 2.0})
    assert ratios["turbo-4/engine-fp8"] == pytest.approx({"eager": 3.75, "compile": 2.5})
    assert ratios["teacher-1/engine-bf16"] == pytest.approx({"eager": 3.0})
    table = report.peer_table(run, "headline")
    assert "| Turbo 4 steps | engine-bf16 | 10 ms | 3.00× | 2.00× |" in table
    assert "| teacher N=1, CFG 6.0 | engine-bf16 | 5 ms | 3.00× | not measured |" in table
    assert report.peer_table(_run([_entry("turbo-4/eager", 30.0, **turbo)]), "headline") == ""


def test_skipped_rows_are_shown_with_reasons():
    run = _run([], [{"name": f"{m}/engine-fp8", "group": "headline", "reason": "FP8 needs a CUDA GPU"}
                    for m in ("turbo-4", "teacher-1")], complete=False)
    md = report.render_markdown([run])
    assert "not measured yet" not in md and "2 configs (turbo-4, teacher-1)/engine-fp8" in md
    assert "FP8 needs a CUDA GPU" in md and "Incomplete run" in md


def test_compare_flags_synthetic_regression(smoke_run, tmp_path, capsys):
    run = results.load(smoke_run)
    old, new, other = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "other.json"
    results.save(run, old)
    assert cli.main(["bench", "report", "--compare", str(old), str(old)]) == 0
    slow = json.loads(json.dumps(run))
    victim = next(e for e in slow["entries"] if e["name"] == "turbo-4/eager" and e["group"] == "headline")
    for k in ("median_ms", "p10_ms", "p90_ms"):
        victim[k] *= 1.5
    victim["samples_ms"] = [s * 1.5 for s in victim["samples_ms"]]
    results.save(slow, new)
    capsys.readouterr()
    assert cli.main(["bench", "report", "--compare", str(old), str(new), "--threshold", "0.05"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "+50.0%" in out and "1 regression(s)" in out
    assert cli.main(["bench", "report", "--compare", str(old), str(new), "--threshold", "0.6"]) == 0
    md, regs = compare.compare(run, slow, 0.05)
    assert [r["name"] for r in regs] == ["turbo-4/eager"]
    elsewhere = json.loads(json.dumps(run))
    elsewhere["env"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559}
    results.save(elsewhere, other)
    assert cli.main(["bench", "report", "--compare", str(old), str(other)]) == 2
    assert "different cards" in capsys.readouterr().err
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        compare.compare(run, run, -0.1)


def test_bad_result_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "audiox-bench", "schema_version": 1}))
    assert cli.main(["bench", "report", str(bad)]) == 2
    assert "missing required field 'suite'" in capsys.readouterr().err
