"""benchmarks/suites.py, runner.py and workloads.py over the real `tiny` preset on the CPU."""

import json
import logging
import math

import pytest
import torch

from audiox_engine.benchmarks import charts, cli, cpu_suite, report, results, runner, suites, workloads
from audiox_engine.benchmarks.kernels import snake_beta


def _by(run):
    return {(e["group"], e["name"]): e for e in run["entries"]}


def _skipped(run):
    return {(s["group"], s["name"]): s["reason"] for s in run["skipped"]}


def test_smoke_json_is_complete(smoke_run):
    run = results.load(smoke_run)
    assert run["complete"] and run["suite"] == "all"
    env = run["env"]
    assert env["torch_version"] == torch.__version__ and env["config"]["smoke"] is True
    assert env["config"]["preset"] == "tiny" and env["config"]["teacher_steps"] == [1]
    required = set(results.ENTRY_SCHEMA["required"])
    for e in run["entries"]:
        assert required <= set(e), e["name"]
        assert e["telemetry"] is None and "cpu" in e["telemetry_reason"]
        assert e["samples_ms"] and all(isinstance(v, float) and math.isfinite(v) for v in e["samples_ms"])
    assert {e["group"] for e in run["entries"]} == {"kernels", "dit", "loops", "e2e", "e2e_stages", "headline"}


def test_smoke_model_rows(smoke_run):
    run = results.load(smoke_run)
    by = _by(run)
    for backend in ("eager", "engine-fp32", "compile"):
        for mode, steps in [("turbo", 4), ("teacher", 1)]:
            e = by[("headline", f"{mode}-{steps}/{backend}")]
            assert e["nfe"] == steps and e["params"]["level"] == "e2e" and e["params"]["backend"] == backend
            assert e["params"]["forward_batch"] == (2 if mode == "teacher" else 1)
            assert e["audio_seconds"] > 0 and e["rtf"] > 0 and len(e["samples_ms"]) == 1
            assert e["params"]["dtype"] == "float32"
    assert by[("headline", "turbo-4/compile")]["params"]["compile_mode"] == "default"
    loops_t1 = by[("loops", "teacher-1/eager")]
    assert loops_t1["metrics"]["forward_calls_observed"] == 1
    assert loops_t1["metrics"]["forward_batches_observed"] == [2]  # CFG: one forward at batch 2B per step
    assert by[("loops", "turbo-4/eager")]["metrics"]["forward_calls_observed"] == 4
    assert by[("loops", "turbo-4/engine-fp32")]["params"]["sampler"] == "engine.sample_turbo"
    assert by[("loops", "turbo-4/compile")]["params"]["sampler"] == "audiox.sampling.sample_turbo"
    assert all(e["metrics"]["notes"] == [] for e in run["entries"] if e["params"].get("backend") == "eager"
               and e["group"] in ("loops", "headline"))
    dit_eager, dit_engine = by[("dit", "dit_forward/eager")], by[("dit", "dit_forward/engine-fp32")]
    assert dit_eager["metrics"]["flops_per_call"] > 0
    assert dit_engine["metrics"]["flops_per_call"] == dit_eager["metrics"]["flops_per_call"]
    assert dit_engine["metrics"]["tflops"] > 0 and ("dit", "dit_forward/compile") in by
    for stage in ("conditioning", "vae_decode"):
        assert by[("e2e_stages", f"{stage}/eager")]["rtf"] is None  # a stage alone makes no audio
    assert {n for g, n in by if g == "e2e"} == {"turbo-4/eager", "teacher-1/eager"}  # e2e: eager and engine-bf16


def test_smoke_skips_say_why(smoke_run):
    skipped = _skipped(results.load(smoke_run))
    assert "CUDA" in skipped[("headline", "turbo-4/engine-fp8")]
    assert "release's precision" in skipped[("dit", "dit_forward/eager-fp32")]
    assert "max-autotune" in skipped[("headline", "teacher-1/compile-max-autotune")]
    assert "cpu" in skipped[("ceilings", "ceilings")]
    assert "quick CPU run" in skipped[("kernels", "snake_beta/torch.compile")]
    assert not [r for r in skipped.values() if r.startswith("FAILED")]


def test_smoke_kernel_rows(smoke_run):
    by = _by(results.load(smoke_run))
    modules = {e["params"]["module"] for (g, _), e in by.items() if g == "kernels"}
    assert modules == {"adaln", "conv1d_k3", "dit_attention", "quant_gemm", "snake_beta"}
    snake = by[("kernels", "snake_beta/ours")]
    assert snake["metrics"]["gbps"] > 0 and snake["params"]["dtype"] == "float32" and snake["params"]["shape"]
    assert snake["timing"]["method"] == "perf_counter via snake_beta.run"
    assert by[("kernels", "dit_gemm ffn.w2/W8A8-INT8 triton")]["metrics"]["tflops"] > 0


def test_failing_row_is_recorded_and_the_rest_runs(monkeypatch, tmp_path, caplog):
    def exploding(obj, **kwargs):
        raise ZeroDivisionError("kernel exploded")

    monkeypatch.setattr(workloads.engine, "accelerate", exploding)
    out = tmp_path / "f.json"
    with caplog.at_level(logging.ERROR):
        rc = cli.main(["bench", "--suite", "dit", "--smoke", "--device", "cpu", "--backends", "eager,engine-bf16",
                       "--out", str(out)])
    assert rc == 3
    run = results.load(out)
    assert [e["name"] for e in run["entries"]] == ["dit_forward/eager"]
    assert run["skipped"] == [{"name": "dit_forward/engine-bf16", "group": "dit",
                               "reason": "FAILED: ZeroDivisionError: kernel exploded"}]
    assert run["complete"]


def test_kernel_module_that_breaks_keeps_its_earlier_rows(monkeypatch, tmp_path):
    rows = list(snake_beta.run("cpu", quick=True))[:1]

    def run_then_break(device, quick):
        yield rows[0]
        yield {"kernel": "snake_beta", "impl": "half"}  # malformed: recorded as such
        raise RuntimeError("device lost")

    monkeypatch.setattr(snake_beta, "run", run_then_break)
    r = runner.Runner(runner.BenchConfig.smoke_defaults(suite="kernels", device="cpu", out=str(tmp_path / "k.json")))
    suites._run_kernel_module(r, "snake_beta")
    run = results.load(tmp_path / "k.json")  # on disk already, before the run finishes
    assert [e["name"] for e in run["entries"]] == ["snake_beta/ours"]
    assert [s["name"] for s in run["skipped"]] == ["snake_beta[1]", "snake_beta[2:]"]
    assert "lacks" in run["skipped"][0]["reason"] and "device lost" in run["skipped"][1]["reason"]
    assert r.failures == 1


def test_time_budget_shares_and_estimates(tmp_path):
    r = runner.Runner(runner.BenchConfig.smoke_defaults(suite="loops", device="cpu", time_budget_s=2.0))
    assert r.out_of_time() is None and 0 < r.time_left() <= 2.0
    with r.share(4):
        assert r.time_left() <= 0.5
        assert "would take about 9.0 s" in r.too_long(9.0)
    unbounded = runner.Runner(runner.BenchConfig.smoke_defaults(suite="loops", device="cpu"))
    with unbounded.share(3):
        assert unbounded.time_left() == float("inf") and unbounded.too_long(1e9) is None
    r._start -= 5  # as if five seconds had passed
    assert "2 s time budget was spent" in r.out_of_time()
    assert r.attempt("x", "loops", lambda: pytest.fail("must not start")) is None
    assert r.run["skipped"][-1]["reason"].startswith("not run: the 2 s time budget")
    with pytest.raises(ValueError, match="time_budget_s must be > 0"):
        runner.BenchConfig(time_budget_s=0)


def test_rows_past_the_time_budget_are_listed(tmp_path):
    out = tmp_path / "b.json"
    assert cli.main(["bench", "--suite", "loops", "--smoke", "--device", "cpu", "--backends", "eager,engine-fp32",
                     "--time-budget-s", "0.6", "--out", str(out)]) == 0
    run = results.load(out)
    names = {e["name"] for e in run["entries"]} | {s["name"] for s in run["skipped"]}
    for backend in ("eager", "engine-fp32"):  # every row is either measured or listed with its reason
        assert {f"{m}/{backend}" for m in ("turbo-4", "teacher-1", "teacher-2", "teacher-4", "teacher-10")} <= names
    late = [s for s in run["skipped"] if "time budget" in s["reason"]]
    assert late and run["complete"]


def test_interrupted_run_keeps_its_rows(monkeypatch, tmp_path):
    real = workloads.loop_workload

    def interrupt_on_teacher(prep, mode, steps, *args, **kwargs):
        if mode == "teacher":
            raise KeyboardInterrupt
        return real(prep, mode, steps, *args, **kwargs)

    monkeypatch.setattr(workloads, "loop_workload", interrupt_on_teacher)
    out = tmp_path / "i.json"
    rc = cli.main(["bench", "--suite", "loops", "--smoke", "--device", "cpu", "--backends", "eager",
                   "--out", str(out)])
    assert rc == 130
    run = json.loads(out.read_text())
    assert not run["complete"] and [e["name"] for e in run["entries"]] == ["turbo-4/eager"]
    assert "interrupted" in run["skipped"][-1]["reason"]
    results.validate(run)


def test_full_size_model_is_built_on_the_benchmark_device(monkeypatch):
    """Construction happens on the device (here `meta`: no memory, so a CPU-built model
    would show up as parameters on the CPU); the 2.2 B DiT never passes through the CPU."""
    monkeypatch.setattr(workloads, "fill_zero_params_", lambda module, seed=0: 0)  # cannot read meta values
    meta = torch.device("meta")
    dit = workloads.build_dit("audiox-turbo", meta, torch.bfloat16)
    assert {p.device.type for p in dit.parameters()} == {"meta"}
    assert sum(p.numel() for p in dit.parameters()) > 2.2e9 and next(dit.parameters()).dtype == torch.bfloat16
    pipe = workloads.build_pipeline("audiox-turbo", meta, torch.bfloat16)
    tensors = [*pipe.model.parameters(), *pipe.model.buffers()]
    assert {t.device.type for t in tensors} == {"meta"}


def test_compile_peer_compiles_what_the_engine_changes(monkeypatch):
    compiled = []

    def record(fn=None, **kwargs):
        compiled.append((getattr(fn, "__qualname__", type(fn).__name__), kwargs.get("mode")))
        return fn

    monkeypatch.setattr(torch, "compile", record)
    prep = workloads.prepare_pipeline("tiny", "cpu", "compile")
    assert prep.dtype == torch.float32 and prep.backend == "compile"
    assert compiled[0] == ("Module._call_impl", "default")  # the DiT
    assert "decode" not in vars(prep.obj.model.pretransform)  # the tiny DDSP codec has no SnakeBeta: eager
    with pytest.raises(workloads.WorkloadUnavailable, match="max-autotune"):
        workloads.prepare_dit("tiny", "cpu", "compile-max-autotune")
    with pytest.raises(workloads.WorkloadUnavailable, match="no MMDiffusionTransformer"):
        workloads.compile_peer_(torch.nn.Linear(2, 2))


def test_smoke_defaults_scale_the_teacher_down():
    c = runner.BenchConfig.smoke_defaults(suite="headline")
    assert c.preset == "tiny" and c.teacher_steps == (10, 4, 2, 1) and c.reps == 2 and c.calls_per_row() == 3
    assert suites.step_matrix(c) == [("turbo", 4), ("teacher", 1), ("teacher", 2), ("teacher", 4), ("teacher", 10)]


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown backend"):
        runner.BenchConfig(backends=("eager", "tensorrt"))
    with pytest.raises(ValueError, match="unknown suite"):
        suites.run_suite(runner.BenchConfig(suite="everything", device="cpu"))
    with pytest.raises(ValueError, match="teacher_steps must be positive"):
        runner.BenchConfig(teacher_steps=(0,))
    with pytest.raises(ValueError, match="mode must be"):
        workloads._check_mode("student", 4)


@pytest.mark.slow
def test_compile_peer_with_inductor_on_cpu(tmp_path):
    """The real torch.compile peer (Inductor's CPU backend, default mode): a minute or more
    on two cores when its cache is cold."""
    out = tmp_path / "c.json"
    assert cli.main(["bench", "--suite", "dit", "--smoke", "--device", "cpu", "--backends", "eager,compile,engine-fp32",
                     "--out", str(out)]) == 0
    by = {e["name"]: e for e in results.load(out)["entries"]}
    assert by["dit_forward/compile"]["compile_s"] > 0 and by["dit_forward/compile"]["metrics"]["tflops"] > 0
    assert "| dit_forward | engine-fp32 |" in report.peer_table(results.load(out), "dit")


def test_cpu_suite_rows_ratios_and_table(no_torch_compile, tmp_path):
    """`bench --suite cpu` (run by name only): four rows per workload, interleaved, each
    with its ratios against eager and compiled from the same run and its accuracy."""
    out = tmp_path / "cpu.json"
    assert cli.main(["bench", "--suite", "cpu", "--smoke", "--device", "cpu", "--depth", "1", "--reps", "1",
                     "--out", str(out)]) == 0
    run = results.load(out)
    by = {e["name"]: e for e in run["entries"]}
    workloads_ = ("dit_forward", "turbo-4", "vae_decode")
    assert set(by) == {f"{w}/{v}" for w in workloads_ for v in cpu_suite.VARIANTS}
    assert run["skipped"] == [] and run["env"]["cpu_isa"]["capability"]
    for name, e in by.items():
        assert e["group"] == "cpu" and e["params"]["depth"] == 1
        assert e["metrics"]["speedup_vs_eager"] > 0 and e["metrics"]["speedup_vs_compiled"] > 0
        if not name.endswith("/eager"):
            floor = 0.99 if "bf16" in name else 1 - 1e-5
            assert e["metrics"]["cosine_vs_eager"] > floor, name
    table = report.render_run(run, [run])
    assert "| Turbo 4-step loop | engine-bf16 |" in table and "AMX" in table and "vs engine" not in table
    assert charts.plot_cpu_speedups(run, tmp_path / "cpu.png") and (tmp_path / "cpu.png").stat().st_size > 0
    assert "cpu" in suites.SUITES and "cpu" in suites.BY_NAME_ONLY  # `all` leaves it out


def test_cpu_suite_starts_no_row_once_the_time_budget_is_spent(no_torch_compile, monkeypatch, tmp_path):
    """--time-budget-s: the cpu suite checks the budget before each row it builds."""
    answers = iter([None, None])  # the suite's start, then its first row; spent from then on
    monkeypatch.setattr(runner.Runner, "out_of_time", lambda self, share=True: next(answers, "not run: spent"))
    out = tmp_path / "cpu.json"
    assert cli.main(["bench", "--suite", "cpu", "--smoke", "--device", "cpu", "--depth", "1", "--reps", "1",
                     "--out", str(out)]) == 0
    run = results.load(out)
    assert [e["name"] for e in run["entries"]] == ["dit_forward/eager"]
    assert len(run["skipped"]) == 11 and {s["reason"] for s in run["skipped"]} == {"not run: spent"}
