"""benchmarks/report.py, charts.py and compare.py: tables, plots, regressions."""

import json
from pathlib import Path

import pytest
import torch

from audiox_engine.benchmarks import cli, compare, environment, report, results


def test_report_writes_tables_plots_and_keeps_prose(smoke_run, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nHand-written intro.\n\nOutro.\n")
    plots = tmp_path / "plots"
    assert cli.main(["bench", "report", str(smoke_run), "--md", str(md), "--plots", str(plots)]) == 0
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written intro.\n\nOutro.\n\n<!-- BEGIN GENERATED all · CPU: ")
    assert f"torch: {torch.__version__}" in text and "Triton:" in text and "driver:" in text
    assert "speedup vs eager teacher-1" in text and "Turbo 4 steps" in text and "Smoke run" in text
    assert "skipped" in text and "FP8 needs a CUDA GPU" in text
    assert "The engine against its peers" in text and "vs eager (float32)" in text and "vs compile (float32)" in text
    pngs = sorted(p.name for p in plots.iterdir())
    assert "smoke-headline-latency_vs_steps.png" in pngs and "smoke-headline-speedup.png" in pngs
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{p.name}" in text
    # regenerating replaces the run's block instead of appending a second one
    assert cli.main(["bench", "report", str(smoke_run), "--md", str(md)]) == 0
    assert list(report.generated_blocks(md.read_text())) == [report.run_key(results.load(smoke_run))]


def test_report_without_results_says_not_measured(tmp_path, capsys):
    md = tmp_path / "BENCHMARKS.md"
    assert cli.main(["bench", "report", "--md", str(md)]) == 0
    text = md.read_text()
    assert "not measured yet" in text and report.generated_blocks(text) == {}
    md.write_text("prose\n")
    assert cli.main(["bench", "report", "--md", str(md)]) == 0 and md.read_text() == "prose\n"
    assert "left as it was" in capsys.readouterr().out
    md.write_text(f"{report.end_marker('x')}\n{report.begin_marker('x')}\n")
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


# ---------------------------------------------------------------- generated blocks, one per run


def _keyed_run(suite, cpu="AMD EPYC", preset="tiny", median=10.0):
    run = _run([_entry("turbo-4/eager", median, mode="turbo", steps=4)])
    run["suite"], run["env"]["cpu_model"], run["env"]["cpu_count_usable"] = suite, cpu, 2
    run["env"]["config"] = {"preset": preset}
    return run


def test_run_key_is_suite_card_and_preset():
    run = _keyed_run("headline")
    assert report.run_key(run) == "headline · CPU: AMD EPYC (2 cores) · tiny"
    run["env"]["config"]["smoke"] = True
    assert report.run_key(run) == "headline · CPU: AMD EPYC (2 cores) · tiny (smoke)"


def test_report_replaces_only_the_blocks_of_its_runs(tmp_path, capsys):
    files = {}
    for name, run in {"h": _keyed_run("headline", median=11.0), "l": _keyed_run("loops", median=22.0),
                      "g": _keyed_run("headline", cpu="Intel Xeon", median=33.0)}.items():
        files[name] = tmp_path / f"{name}.json"
        results.save(run, files[name])
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nIntro.\n")
    assert cli.main(["bench", "report", str(files["h"]), str(files["l"]), "--md", str(md)]) == 0
    text = md.read_text()
    md.write_text(text.replace("\n<!-- BEGIN GENERATED loops", "\nProse between the blocks.\n\n<!-- BEGIN GENERATED loops")
                  + "\nOutro.\n")
    capsys.readouterr()

    fresh = _keyed_run("headline", median=44.0)
    results.save(fresh, files["h"])
    assert cli.main(["bench", "report", str(files["h"]), str(files["g"]), "--md", str(md)]) == 0
    assert "1 generated block(s) replaced, 1 appended" in capsys.readouterr().out
    text = md.read_text()
    blocks = report.generated_blocks(text)
    assert list(blocks) == ["headline · CPU: AMD EPYC (2 cores) · tiny", "loops · CPU: AMD EPYC (2 cores) · tiny",
                            "headline · CPU: Intel Xeon (2 cores) · tiny"]
    body = {k: text[a:b] for k, (a, b) in blocks.items()}
    assert "44 ms" in body["headline · CPU: AMD EPYC (2 cores) · tiny"] and "11 ms" not in text
    assert "22 ms" in body["loops · CPU: AMD EPYC (2 cores) · tiny"]
    assert "33 ms" in body["headline · CPU: Intel Xeon (2 cores) · tiny"]
    assert text.startswith("# Benchmarks\n\nIntro.\n\n<!-- BEGIN GENERATED headline")
    assert "\nProse between the blocks.\n\n<!-- BEGIN GENERATED loops" in text
    assert text.index("Outro.") < blocks["headline · CPU: Intel Xeon (2 cores) · tiny"][0]  # new runs go at the end
    before = text
    assert cli.main(["bench", "report", str(files["h"]), "--md", str(md)]) == 0
    assert md.read_text() == before  # the same run again: nothing moves


@pytest.mark.parametrize("text, message", [
    (f"{report.begin_marker('a')}\nx\n", "line 1: generated block 'a' has no END marker"),
    (f"x\n{report.end_marker('a')}\n", "line 2: END marker of generated block 'a' without its BEGIN"),
    (f"{report.begin_marker('a')}\n{report.end_marker('b')}\n", "closes generated block 'a' (line 1)"),
    (f"{report.begin_marker('a')}\n{report.begin_marker('b')}\n{report.end_marker('b')}\n",
     "generated block 'a' has no END marker before the next BEGIN (line 2)"),
    (f"{report.begin_marker('a')}\n{report.end_marker('a')}\n" * 2, "line 3: a second generated block 'a'"),
    ("<!-- BEGIN GENERATED by benchmarks/report.py: edits between these markers are overwritten -->\nx\n"
     "<!-- END GENERATED by benchmarks/report.py -->\n", "not keyed by run"),
])
def test_broken_markers_are_refused_with_one_line(tmp_path, capsys, text, message):
    run = tmp_path / "r.json"
    results.save(_keyed_run("headline"), run)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(text)
    assert cli.main(["bench", "report", str(run), "--md", str(md)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"audiox bench report: error: {md}: ") and message in line
    assert md.read_text() == text


def test_two_files_of_one_run_identity_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    results.save(_keyed_run("headline", median=1.0), a)
    results.save(_keyed_run("headline", median=2.0), b)
    assert cli.main(["bench", "report", str(a), str(b), "--md", str(tmp_path / "B.md")]) == 2
    assert "are both the run 'headline · CPU: AMD EPYC (2 cores) · tiny'" in capsys.readouterr().err
    assert not (tmp_path / "B.md").exists()


def test_committed_blocks_are_what_their_result_files_render():
    """BENCHMARKS.md's CPU blocks regenerate from benchmarks/results/cpu-2026-11-26/ to the same tables."""
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "BENCHMARKS.md").read_text()
    blocks = report.generated_blocks(text)
    folder = repo / "benchmarks" / "results" / "cpu-2026-11-26"
    for suite in ("headline", "loops", "dit"):
        run = results.load(folder / f"cpu_{suite}_tiny.json")
        key = report.run_key(run)
        assert key == f"{suite} · CPU: AMD EPYC (2 cores) · tiny"
        start, end = blocks[key]
        committed = [line for line in text[start:end].splitlines() if line.startswith("|")]
        [(_, body)] = report.render_blocks([run])
        assert committed == [line for line in body.splitlines() if line.startswith("|")]
