"""benchmarks/results.py and environment.py: the result file's schema, and what it records."""

import json
import socket

import pytest
import torch

from audiox_engine.benchmarks import environment, results, timing


def test_environment_is_complete_and_hostname_free():
    env = environment.capture_environment("cpu", config={"suite": "x"})
    for key in ("gpu", "driver_version", "cuda_version", "torch_version", "triton_version", "python_version",
                "cpu_model", "cpu_count", "git", "date_utc", "config"):
        assert key in env
    assert env["torch_version"] == torch.__version__ and env["config"] == {"suite": "x"}
    assert env["date_utc"].endswith("Z") and {"commit", "dirty"} <= set(env["git"])
    host = socket.gethostname()
    if len(host) >= 4:
        assert host not in json.dumps(env)
    assert environment.card_label(env).startswith("CPU: ")


def test_same_card():
    cpu = {"gpu": None, "cpu_model": "EPYC"}
    h100 = {"gpu": {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559}}
    assert environment.same_card(cpu, dict(cpu)) and environment.same_card(h100, json.loads(json.dumps(h100)))
    assert not environment.same_card(cpu, h100) and not environment.same_card(cpu, {"gpu": None, "cpu_model": "Xeon"})


def valid_run():
    run = results.new_run("dit", environment.capture_environment("cpu"))
    t = timing.time_callable(lambda: None, "cpu", warmup=0, reps=3).to_dict()
    run["entries"].append(results.make_entry(name="a", group="dit", params={"p": 1}, timing=t, nfe=1, batch=1,
                                             audio_seconds=10.0, telemetry=None, telemetry_reason="cpu"))
    run["complete"] = True
    return run


def test_results_validation_names_the_bad_field(tmp_path):
    run = valid_run()
    results.validate(run)
    results.save(run, tmp_path / "ok.json")
    assert results.load(tmp_path / "ok.json") == json.loads((tmp_path / "ok.json").read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["ok.json"]  # no temporary file left beside it

    def broken(mutate, match):
        r = json.loads(json.dumps(run))
        mutate(r)
        (tmp_path / "bad.json").write_text(json.dumps(r))
        with pytest.raises(results.ResultsError, match=match):
            results.load(tmp_path / "bad.json")

    broken(lambda r: r["entries"][0].pop("median_ms"), r"entries\[0\]: missing required field 'median_ms'")
    broken(lambda r: r["entries"][0].update(nfe="four"), r"entries\[0\]\.nfe: expected integer or null")
    broken(lambda r: r["entries"][0].update(telemetry_reason=None), "telemetry_reason must say why")
    broken(lambda r: r["entries"][0].update(p10_ms=1e9), "p10_ms <= median_ms <= p90_ms")
    broken(lambda r: r.update(schema_version=results.SCHEMA_VERSION + 1), "newer than this reader")
    broken(lambda r: r["env"].pop("torch_version"), r"\$\.env: missing required field 'torch_version'")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(results.ResultsError, match="not JSON"):
        results.load(tmp_path / "bad.json")
    e = run["entries"][0]
    assert e["rtf"] == pytest.approx(10.0 / (e["median_ms"] / 1e3))
    nan_run = json.loads(json.dumps(run))
    nan_run["entries"][0]["median_ms"] = float("nan")
    with pytest.raises(results.ResultsError, match="is NaN"):
        results.save(nan_run, tmp_path / "nan.json")


def test_entry_key_ignores_param_order():
    a = results.make_entry(name="x", group="g", params={"a": 1, "b": 2}, timing={"median_ms": 1, "p10_ms": 1, "p90_ms": 1})
    b = results.make_entry(name="x", group="g", params={"b": 2, "a": 1}, timing={"median_ms": 2, "p10_ms": 2, "p90_ms": 2})
    assert results.entry_key(a) == results.entry_key(b)
