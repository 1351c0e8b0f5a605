"""The `throughput` suite over the real `tiny` preset on the CPU (smoke mode: batch 1 and 2)."""

import torch

from audiox_engine.benchmarks import cli, report, results, suites
from audiox_engine.benchmarks.throughput import batch_sizes


def test_throughput_rows_and_table(tmp_path):
    out = tmp_path / "throughput.json"
    rc = cli.main(["bench", "--suite", "throughput", "--smoke", "--device", "cpu", "--backends", "eager",
                   "--reps", "1", "--out", str(out)])
    assert rc == 0
    run = results.load(out)
    assert run["complete"] and run["env"]["cpu_model"] is not None and not run["skipped"]
    rows = {e["batch"]: e for e in run["entries"]}
    assert sorted(rows) == list(batch_sizes(torch.device("cpu"), smoke=True))
    for batch, e in rows.items():
        assert e["group"] == "throughput" and e["name"] == f"turbo-4-b{batch}/eager"
        assert e["params"]["generators"] == "one per item" and e["params"]["threads"] >= 1
        m = e["metrics"]
        assert abs(m["clips_per_s"] - batch / (e["median_ms"] / 1e3)) < 1e-9 * m["clips_per_s"]
        assert m["load_average_1m_before"] >= 0 and m["load_average_1m_after"] >= 0
        assert e["rtf"] > 0 and e["audio_seconds"] == 10.0
    table = report.render_run(run, [run])
    assert "clips/s" in table and "load avg (1 min)" in table
    for e in run["entries"]:
        assert f"| eager | float32 | {e['batch']} | {e['metrics']['clips_per_s']:.3g} |" in table, table


def test_all_leaves_the_throughput_study_out():
    assert "throughput" in suites.SUITES and "throughput" in suites.BY_NAME_ONLY
