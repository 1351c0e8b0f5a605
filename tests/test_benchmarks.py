"""Smoke tests of the benchmark harness (benchmarks/): no timing assertions.

The harness is exercised end to end in smoke mode on CPU. The model API it drives
(audiox.config / dit / sampling / pipeline, engine.accelerate) is replaced by a small
stand-in installed with monkeypatch, so these tests check the harness, not the model,
and do not depend on the state of the model code; `test_real_tiny_preset_smoke` runs
the same path over the real `audiox` package when it is importable.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import sys
import time
import types

import numpy as np
import pytest
import torch
from torch import nn

from audiox_engine.benchmarks import cli, environment, report, results, telemetry, timing, workloads
from audiox_engine.benchmarks.suites import BenchConfig, run_suite

# ---------------------------------------------------------------- stand-in model API


class _StubDiT(nn.Module):
    """Shapes like MMDiffusionTransformer: x (B, C, T), t (B,), cond (B, N, D) -> (B, C, T).

    Linear layers only: CPU conv1d has a large fixed cost per call, and this stand-in
    only has to give the harness something to time.
    """

    def __init__(self, dit_cfg):
        super().__init__()
        c, w = dit_cfg.io_channels, dit_cfg.embed_dim
        self.preprocess_conv = nn.Conv1d(c, c, 1, bias=False)  # only read for its in_channels
        self.transformer = nn.Module()
        self.transformer.proj_mm_tokens = nn.Linear(dit_cfg.cond_token_dim, w)
        self.transformer.proj_mm_seq_len = nn.Linear(dit_cfg.num_cond_tokens, 1)
        self.to_time = nn.Linear(1, w)
        self.proj_in = nn.Linear(c, w)
        self.gate = nn.Parameter(torch.zeros(w))  # zero-initialised, like a DiT gate
        self.proj_out = nn.Linear(w, c)

    def forward(self, x, t, cross_attn_cond, cfg_scale=1.0):
        assert x.dim() == 3 and t.shape == (x.shape[0],) and cross_attn_cond.shape[0] == x.shape[0]
        if cfg_scale != 1.0:  # batched CFG inside the model, as the real DiT does: one forward at 2B
            v = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cross_attn_cond, torch.zeros_like(cross_attn_cond)]))
            c, u = v.chunk(2)
            return u + (c - u) * cfg_scale
        c = self.transformer.proj_mm_tokens(cross_attn_cond)  # (B, N, W)
        c = self.transformer.proj_mm_seq_len(c.transpose(1, 2)).transpose(1, 2)  # (B, 1, W)
        h = self.proj_in(x.transpose(1, 2)) + c + self.to_time(t[:, None, None])  # (B, T, W)
        return self.proj_out(torch.tanh(h) * (1 + self.gate)).transpose(1, 2)


def _get_preset(name):
    if name not in ("tiny", "audiox-turbo"):
        raise KeyError(name)
    dit = types.SimpleNamespace(io_channels=8, embed_dim=32, cond_token_dim=16, num_cond_tokens=12)
    return types.SimpleNamespace(dit=dit, sample_rate=4000, seconds=0.5, latent_length=16)


def _sample_turbo(model_fn, noise, steps=4, generator=None, **kw):
    ts = torch.linspace(1, 0, steps + 1)[:steps]
    z = noise
    for i, t in enumerate(ts):
        v = model_fn(z, t.expand(z.shape[0]).to(z), **kw)
        x0 = z - t * v
        if i == steps - 1:
            return x0
        fresh = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = ts[i + 1] * fresh + (1 - ts[i + 1]) * x0


def _sample_teacher(model_fn, noise, steps=250, cfg_scale=6.0, cross_attn_cond=None, generator=None):
    ts = torch.linspace(1, 0, steps + 1)
    x = noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = model_fn(x, t.expand(x.shape[0]).to(x), cross_attn_cond=cross_attn_cond, cfg_scale=cfg_scale)
        x = x + (t_next - t) * v
    return x


def _engine_sample_turbo(dit, noise, cross_attn_cond, steps=4, generator=None):
    return _sample_turbo(dit, noise, steps, generator, cross_attn_cond=cross_attn_cond)


def _engine_sample_teacher(dit, noise, cross_attn_cond, steps=250, cfg_scale=6.0):
    return _sample_teacher(dit, noise, steps, cfg_scale, cross_attn_cond=cross_attn_cond)


class _StubVAE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.up = nn.Linear(c, 2 * 8)  # 8x upsampling to stereo

    def decode(self, z):  # (B, C, T) -> (B, 2, 8T)
        b, _, t = z.shape
        return self.up(z.transpose(1, 2)).reshape(b, t, 2, 8).permute(0, 2, 1, 3).reshape(b, 2, 8 * t)


class _StubPipeline:
    def __init__(self, cfg):
        self.cfg = cfg
        self.text_encoder = nn.Embedding(256, cfg.dit.cond_token_dim)
        self.model = _StubDiT(cfg.dit)
        self.vae = _StubVAE(cfg.dit.io_channels)

    @classmethod
    def from_preset(cls, name, *, device="cpu", dtype=torch.float32):
        pipe = cls(_get_preset(name))
        for m in (pipe.text_encoder, pipe.model, pipe.vae):
            m.to(device=device, dtype=dtype)
        return pipe

    def encode_conditioning(self, text):
        d = self.cfg.dit
        ids = torch.tensor([[ord(ch) % 256 for ch in s[: d.num_cond_tokens].ljust(d.num_cond_tokens)] for s in text])
        return self.text_encoder(ids)

    def decode(self, latents, seconds=None):
        wave = self.vae.decode(latents)
        return wave / wave.abs().amax().clamp_min(1e-6)

    def __call__(self, text, seconds=10.0, steps=4, cfg_scale=1.0, mode="turbo", generator=None):
        d = self.cfg.dit
        cond = self.encode_conditioning(text)
        noise = torch.randn(len(text), d.io_channels, self.cfg.latent_length, generator=generator)
        if mode == "turbo":
            z = _sample_turbo(self.model, noise, steps, generator, cross_attn_cond=cond)
        else:
            z = _sample_teacher(self.model, noise, steps, cfg_scale, cross_attn_cond=cond, generator=generator)
        return self.decode(z, seconds), self.cfg.sample_rate


def _stub_accelerate(obj, backend="auto", dtype=torch.bfloat16, cuda_graphs=True):
    return obj


def _stub_quantize_accelerated_(module, config):
    raise NotImplementedError(f"int8 path not built in this stand-in ({type(config).__name__})")


def _install_stub_api(monkeypatch):
    """Installs the stand-in audiox + engine modules (undone with the monkeypatch)."""
    pkg = types.ModuleType("audiox")
    pkg.__path__ = []
    mods = {
        "audiox": pkg,
        "audiox_engine.audiox.config": types.SimpleNamespace(get_preset=_get_preset),
        "audiox_engine.audiox.dit": types.SimpleNamespace(MMDiffusionTransformer=_StubDiT),
        "audiox_engine.audiox.sampling": types.SimpleNamespace(sample_turbo=_sample_turbo, sample_teacher=_sample_teacher),
        "audiox_engine.audiox.pipeline": types.SimpleNamespace(AudioXPipeline=_StubPipeline),
        "engine": types.SimpleNamespace(accelerate=_stub_accelerate, sample_turbo=_engine_sample_turbo,
                                        sample_teacher=_engine_sample_teacher),
        "audiox_engine.engine.quantize": types.SimpleNamespace(Float8WeightAndActivationConfig=type("Float8", (), {}),
                                                 Int8WeightAndActivationConfig=type("Int8", (), {})),
        "audiox_engine.engine.quant_fused_block": types.SimpleNamespace(quantize_accelerated_=_stub_quantize_accelerated_),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


_GOOD_KERNEL_MODULE = """
import torch
from audiox_engine.benchmarks import timing

def run(device="cuda", quick=False):
    x = torch.randn(1 << 12)
    t = timing.time_callable(lambda: x * 2, device, warmup=1, reps=3)
    return [{"kernel": "scale", "impl": "torch", "shape": [1 << 12], "dtype": torch.float32,
             "ms_median": t.median_ms, "ms_p10": t.p10_ms, "ms_p90": t.p90_ms,
             "gbps": 2 * x.numel() * 4 / (t.median_ms / 1e3) / 1e9, "compile_s": 0.0}]
"""
_BAD_KERNEL_MODULE = """
def run(device="cuda", quick=False):
    return [{"kernel": "x", "impl": "y"}]
"""


def _install_stub_kernels(monkeypatch, directory):
    """A benchmarks.kernels package in `directory` with a well-formed and a malformed module."""
    (directory / "good_op.py").write_text(_GOOD_KERNEL_MODULE)
    (directory / "bad_op.py").write_text(_BAD_KERNEL_MODULE)
    pkg = types.ModuleType("audiox_engine.benchmarks.kernels")
    pkg.__path__ = [str(directory)]
    monkeypatch.setitem(sys.modules, "audiox_engine.benchmarks.kernels", pkg)
    for name in ("good_op", "bad_op"):  # registered so that undo() removes what the run imports
        monkeypatch.setitem(sys.modules, f"audiox_engine.benchmarks.kernels.{name}", None)
        monkeypatch.delitem(sys.modules, f"audiox_engine.benchmarks.kernels.{name}")


@pytest.fixture
def stub_api(monkeypatch):
    _install_stub_api(monkeypatch)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests time nothing that matters; one intra-op thread avoids the large
    per-op cost of thread hand-offs on a busy 2-core CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One `bench --suite all --smoke` run over the stand-ins, shared by the tests below."""
    mp = pytest.MonkeyPatch()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see _one_torch_thread
    try:
        _install_stub_api(mp)
        _install_stub_kernels(mp, tmp_path_factory.mktemp("kernels"))
        out = tmp_path_factory.mktemp("bench") / "smoke.json"
        rc = cli.main(["bench", "--suite", "all", "--smoke", "--device", "cpu", "--out", str(out)])
    finally:
        mp.undo()  # the tests below read the JSON; none of them may see the stand-ins
        torch.set_num_threads(before)
    assert rc == 0
    return out


# ---------------------------------------------------------------- timing


def test_percentiles_match_numpy():
    vals = sorted(np.random.default_rng(0).random(37).tolist())
    for q in (0, 10, 50, 90, 100):
        assert timing.percentile(vals, q) == pytest.approx(np.percentile(vals, q))
    s = timing.summarize(vals)
    assert s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
    with pytest.raises(ValueError, match="zero timing samples"):
        timing.summarize([])


def test_time_callable_counts_calls_and_keeps_first_call_apart():
    calls = []
    res = timing.time_callable(lambda: calls.append(1), "cpu", warmup=2, reps=5)
    assert len(calls) == 1 + 2 + 5
    assert len(res.samples_ms) == res.reps == 5 and res.method == "perf_counter"
    assert res.first_call_s >= 0 and res.compile_s >= 0 and not res.l2_flushed
    calls.clear()
    res = timing.time_callable(lambda: calls.append(1), "cpu", warmup=1, reps=3, first_call_s=1.5)
    assert len(calls) == 1 + 3 and res.first_call_s == 1.5
    with pytest.raises(ValueError, match="cpu and cuda"):
        timing.time_callable(lambda: None, "meta")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_callable_cuda_events_flush_l2():
    x = torch.randn(1 << 20, device="cuda")
    res = timing.time_callable(lambda: x * 2, "cuda", warmup=2, reps=5)
    assert res.method == "cuda_events" and res.l2_flushed and len(res.samples_ms) == 5


# ---------------------------------------------------------------- telemetry


def test_telemetry_without_nvml_warns_once(caplog, monkeypatch):
    telemetry._reset_for_tests()
    if telemetry.nvml_available():
        pytest.skip("NVML works on this machine")
    telemetry._reset_for_tests()
    with caplog.at_level(logging.WARNING, logger="audiox_engine.benchmarks.telemetry"):
        samplers = [telemetry.NvmlSampler() for _ in range(3)]
        for s in samplers:
            with s:
                pass
    warnings = [r for r in caplog.records if "telemetry disabled" in r.getMessage()]
    assert len(warnings) == 1
    assert all(s.summary() is None and not s.available for s in samplers)
    assert telemetry.unavailable_reason()


class _FakeNvml:
    """Stands in for pynvml on a machine without a GPU: fixed readings, a thermal throttle."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self):
        self.energy_mj = 10_000_000

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        raise RuntimeError("unknown bus id")

    def nvmlDeviceGetHandleByIndex(self, index):
        return f"gpu{index}"

    def nvmlDeviceGetPowerUsage(self, handle):
        return 250_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.energy_mj += 5_000
        return self.energy_mj

    def nvmlDeviceGetClockInfo(self, handle, kind):
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, handle, kind):
        return 71

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=3 * 2**30)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0x40  # hw_thermal_slowdown

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"


def test_nvml_sampler_with_fake_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    telemetry._reset_for_tests()
    try:
        sampler = telemetry.NvmlSampler(0, interval_s=0.005, pci_bus_id="00000000:3B:00.0")
        assert sampler.available and sampler.reason is None
        with sampler:
            time.sleep(0.05)
        s = sampler.summary()
        assert s["n_samples"] >= 2 and s["energy_j"] == pytest.approx(5.0) and s["energy_source"] == "counter"
        assert s["power_w"]["max"] == pytest.approx(250.0) and s["memory_used_mib"]["max"] == pytest.approx(3072)
        assert s["throttled"] and s["throttled_by"] == ["hw_thermal_slowdown"]
        assert environment.capture_environment("cpu")["driver_version"] == "550.54.15"
    finally:
        telemetry._reset_for_tests()


def test_telemetry_summary_flags_throttling_and_integrates_power():
    samples = [
        {"t": 0.0, "power_w": 100.0, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "temperature_c": 60,
         "memory_used_mib": 1000.0, "throttle_mask": 0x1},
        {"t": 1.0, "power_w": 300.0, "sm_clock_mhz": 1500, "mem_clock_mhz": 2619, "temperature_c": 85,
         "memory_used_mib": 1200.0, "throttle_mask": 0x20 | 0x4},
    ]
    s = telemetry.summarize_samples(samples, duration_s=1.0, energy_counter_j=None)
    assert s["energy_j"] == pytest.approx(200.0) and s["energy_source"] == "integrated_power"
    assert s["throttled"] and s["throttled_by"] == ["sw_power_cap", "sw_thermal_slowdown"]
    assert s["sm_clock_mhz"]["min"] == 1500 and s["temperature_c"]["max"] == 85
    calm = telemetry.summarize_samples(samples[:1], duration_s=0.1, energy_counter_j=12.5)
    assert not calm["throttled"] and calm["energy_j"] == 12.5 and calm["energy_source"] == "counter"
    assert calm["throttle_reasons"] == ["gpu_idle"]


# ---------------------------------------------------------------- environment and results


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


def _valid_run():
    run = results.new_run("dit", environment.capture_environment("cpu"))
    t = timing.time_callable(lambda: None, "cpu", warmup=0, reps=3).to_dict()
    run["entries"].append(results.make_entry(name="a", group="dit", params={"p": 1}, timing=t, nfe=1, batch=1,
                                             audio_seconds=10.0, telemetry=None, telemetry_reason="cpu"))
    run["complete"] = True
    return run


def test_results_validation_names_the_bad_field(tmp_path):
    run = _valid_run()
    results.validate(run)
    results.save(run, tmp_path / "ok.json")
    assert results.load(tmp_path / "ok.json") == json.loads((tmp_path / "ok.json").read_text())

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


# ---------------------------------------------------------------- the smoke run


def test_smoke_json_is_complete(smoke_run):
    run = results.load(smoke_run)
    assert run["complete"] and run["suite"] == "all"
    env = run["env"]
    assert env["torch_version"] == torch.__version__ and env["config"]["smoke"] is True
    assert env["config"]["preset"] == "tiny" and env["config"]["teacher_steps"] == [10, 4, 2, 1]
    required = set(results.ENTRY_SCHEMA["required"])
    for e in run["entries"]:
        assert required <= set(e), e["name"]
        assert e["telemetry"] is None and "cpu" in e["telemetry_reason"]
        assert all(isinstance(v, float) and math.isfinite(v) for v in e["samples_ms"])

    by = {(e["group"], e["name"]): e for e in run["entries"]}
    for backend in ("eager", "engine-bf16"):
        for mode, steps in [("turbo", 4), ("teacher", 10), ("teacher", 4), ("teacher", 2), ("teacher", 1)]:
            e = by[("headline", f"{mode}-{steps}/{backend}")]
            assert e["nfe"] == steps and e["params"]["level"] == "e2e"
            assert e["params"]["forward_batch"] == (2 if mode == "teacher" else 1)
            assert e["rtf"] is not None and e["rtf"] > 0 and len(e["samples_ms"]) == 2
    loops_t10 = by[("loops", "teacher-10/eager")]
    assert loops_t10["metrics"]["forward_calls_observed"] == 10
    assert loops_t10["metrics"]["forward_batches_observed"] == [2]
    dit_eager, dit_engine = by[("dit", "dit_forward/eager")], by[("dit", "dit_forward/engine-bf16")]
    assert dit_eager["metrics"]["flops_per_call"] > 0
    assert dit_engine["metrics"]["flops_per_call"] == dit_eager["metrics"]["flops_per_call"]
    assert dit_engine["metrics"]["tflops"] > 0
    for stage in ("conditioning", "vae_decode"):
        assert by[("e2e_stages", f"{stage}/eager")]["rtf"] is None  # a stage alone makes no audio

    skipped = {(s["group"], s["name"]): s["reason"] for s in run["skipped"]}
    assert "CUDA" in skipped[("headline", "turbo-4/engine-fp8")]
    assert "int8 path not built" in skipped[("headline", "teacher-10/engine-int8")]
    assert "cpu" in skipped[("ceilings", "ceilings")]
    assert "lacks" in skipped[("kernels", "bad_op[0]")]
    kern = by[("kernels", "scale/torch")]
    assert kern["metrics"]["gbps"] > 0 and kern["params"]["dtype"] == "float32"


def test_report_writes_tables_plots_and_keeps_prose(smoke_run, tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\nHand-written intro.\n\n{report.MARK_BEGIN}\nold\n{report.MARK_END}\n\nOutro.\n")
    plots = tmp_path / "plots"
    assert cli.main(["bench", "report", str(smoke_run), "--md", str(md), "--plots", str(plots)]) == 0
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written intro.") and text.rstrip().endswith("Outro.")
    assert "\nold\n" not in text and text.count(report.MARK_BEGIN) == 1
    assert f"torch: {torch.__version__}" in text and "Triton:" in text and "driver:" in text
    assert "speedup vs eager teacher-10" in text and "Turbo 4 steps" in text and "Smoke run" in text
    assert "skipped" in text and "int8 path not built" in text
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
    md, regs = report.compare(run, slow, 0.05)
    assert [r["name"] for r in regs] == ["turbo-4/eager"]
    elsewhere = json.loads(json.dumps(run))
    elsewhere["env"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559}
    results.save(elsewhere, other)
    assert cli.main(["bench", "report", "--compare", str(old), str(other)]) == 2
    assert "different cards" in capsys.readouterr().err


def test_bad_result_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "audiox-bench", "schema_version": 1}))
    assert cli.main(["bench", "report", str(bad)]) == 2
    assert "missing required field 'suite'" in capsys.readouterr().err


def test_headline_falls_back_to_loops_without_pipeline(stub_api, monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "audiox_engine.audiox.pipeline")
    monkeypatch.setitem(sys.modules, "audiox_engine.audiox.pipeline", types.SimpleNamespace())
    cfg = BenchConfig.smoke_defaults(suite="headline", device="cpu", backends=("eager",), teacher_steps=(50, 25),
                                     out=str(tmp_path / "h.json"))
    run = run_suite(cfg)
    assert {e["params"]["level"] for e in run["entries"]} == {"loops"}
    assert "AudioXPipeline" in run["env"]["config"]["headline_level_reason"]
    assert sorted(e["name"] for e in run["entries"]) == ["teacher-1/eager", "teacher-2/eager", "turbo-4/eager"]


class _ExplodingModel(nn.Module):
    def forward(self, *args, **kwargs):
        raise RuntimeError("kernel exploded")


def test_failing_row_is_recorded_and_the_rest_runs(stub_api, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(sys.modules["engine"], "accelerate", lambda obj, **kw: _ExplodingModel())
    out = tmp_path / "f.json"
    with caplog.at_level(logging.ERROR):
        rc = cli.main(["bench", "--suite", "dit", "--smoke", "--device", "cpu", "--backends", "eager,engine-bf16",
                       "--out", str(out)])
    assert rc == 3
    run = results.load(out)
    assert [e["name"] for e in run["entries"]] == ["dit_forward/eager"]
    assert run["skipped"] == [{"name": "dit_forward/engine-bf16", "group": "dit",
                               "reason": "FAILED: RuntimeError: kernel exploded"}]
    assert run["complete"]


def test_missing_model_api_skips_with_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "audiox", None)  # import audiox -> ImportError
    monkeypatch.setitem(sys.modules, "audiox_engine.audiox.config", None)
    cfg = BenchConfig.smoke_defaults(suite="dit", device="cpu", out=str(tmp_path / "d.json"))
    run = run_suite(cfg)
    assert run["entries"] == [] and len(run["skipped"]) == len(workloads.BACKENDS)
    assert all("audiox_engine.audiox.config" in s["reason"] for s in run["skipped"][:1])
    assert "not measured yet" not in report.render_markdown([run])  # skipped rows are shown, with reasons
    assert "skipped" in report.render_markdown([run])


def test_profile_trace_has_named_ranges(stub_api, tmp_path):
    from audiox_engine.benchmarks.profiler import profile_generation, read_trace_names

    info = profile_generation("tiny", "cpu", tmp_path / "trace.json", mode="turbo", steps=4)
    names = read_trace_names(info["trace"])
    assert {"generation", "step 0", "step 1", "step 2", "step 3", "decode", "conditioning:text_encoder"} <= names
    assert info["steps_seen"] == 4 and info["level"] == "e2e"


def _require_real_api():
    from audiox_engine.benchmarks import workloads

    try:
        workloads.load_model_api()
    except workloads.WorkloadUnavailable as exc:
        pytest.skip(f"real audiox API not available yet: {exc}")


def test_real_tiny_preset_smoke(tmp_path):
    """Loops and the end-to-end headline over the real tiny preset and engine, kept short:
    one teacher N (25 / 25 = 1 step), eager and engine-bf16, one repetition."""
    _require_real_api()
    for suite in ("loops", "headline"):
        out = tmp_path / f"{suite}.json"
        assert cli.main(["bench", "--suite", suite, "--smoke", "--device", "cpu", "--backends", "eager,engine-bf16",
                         "--teacher-steps", "25", "--reps", "1", "--out", str(out)]) == 0
        run = results.load(out)
        assert run["complete"] and run["skipped"] == [], run["skipped"]
        by = {e["name"]: e for e in run["entries"]}
        assert set(by) == {f"{m}/{b}" for m in ("turbo-4", "teacher-1") for b in ("eager", "engine-bf16")}
        level = {e["params"]["level"] for e in run["entries"]}
        assert level == ({"loops"} if suite == "loops" else {"e2e"})
        assert all(e["metrics"]["notes"] == [] or e["params"]["backend"] != "eager" for e in run["entries"])
        if suite == "loops":
            assert by["turbo-4/eager"]["metrics"]["forward_calls_observed"] == 4
            assert by["teacher-1/eager"]["metrics"]["forward_batches_observed"] == [2]  # CFG: batch 2B
            assert by["turbo-4/engine-bf16"]["params"]["sampler"] == "engine.sample_turbo"
        else:
            assert all(e["audio_seconds"] > 0 and e["rtf"] > 0 for e in run["entries"])


@pytest.mark.slow
def test_real_tiny_headline_smoke_end_to_end(tmp_path):
    """`bench --suite headline --smoke` over the real pipeline and engine (minutes on 2 CPUs)."""
    _require_real_api()
    out = tmp_path / "headline.json"
    assert cli.main(["bench", "--suite", "headline", "--smoke", "--device", "cpu", "--out", str(out)]) == 0
    run = results.load(out)
    names = {e["name"] for e in run["entries"]}
    assert {"turbo-4/eager", "teacher-10/eager"} <= names
    assert {e["params"]["level"] for e in run["entries"]} == {"e2e"}
