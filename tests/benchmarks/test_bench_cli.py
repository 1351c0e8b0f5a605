"""benchmarks/cli.py and profiler.py: the `audiox bench` and `audiox profile` commands.

The CUDA check and the suite runner are replaced where a real run is not the point: these
tests check what the commands choose and say, not what they measure.
"""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audiox_engine import cli as audiox_cli
from audiox_engine.benchmarks import cli, profiler, suites, workloads
from audiox_engine.benchmarks.profiler import profile_generation, read_trace_names
from audiox_engine.benchmarks.runner import BenchConfig, Runner

REPO = Path(__file__).resolve().parents[2]
TINY_NOTE = "{prog}: no CUDA device: using the tiny preset (give --preset audiox-turbo for the full model: {cost} on a CPU)"


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def suite_calls(monkeypatch):
    """run_suite replaced by a recorder: the configs it was given; the run it returns is empty."""
    calls = []

    def fake_run_suite(config):
        calls.append(config)
        return {"entries": [], "skipped": []}

    monkeypatch.setattr(cli, "run_suite", fake_run_suite)
    return calls


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---------------------------------------------------------------- the preset a run uses


@pytest.mark.parametrize("suite, cost", [
    ("headline", "~11 GB of weights, minutes per Turbo row, hours per 250-step teacher row"),
    ("loops", "~9 GB of weights, minutes per Turbo row, hours per 250-step teacher row"),
    ("dit", "~9 GB of weights, about half a minute per row")])
def test_without_cuda_the_tiny_preset_runs_and_says_so(no_cuda, suite_calls, tmp_path, capsys, suite, cost):
    assert cli.main(["bench", "--suite", suite, "--out", str(tmp_path / "r.json")]) == 0
    assert suite_calls[0].preset == "tiny" and not suite_calls[0].smoke
    assert _err_lines(capsys) == [TINY_NOTE.format(prog="audiox bench", cost=cost)]


def test_with_cuda_the_full_model_runs_without_a_note(monkeypatch, suite_calls, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.main(["bench", "--suite", "headline", "--out", str(tmp_path / "r.json")]) == 0
    assert suite_calls[0].preset == "audiox-turbo" and capsys.readouterr().err == ""


def test_full_size_preset_on_the_cpu_runs_with_a_note_of_its_cost(no_cuda, suite_calls, tmp_path, capsys):
    assert cli.main(["bench", "--preset", "audiox-turbo", "--out", str(tmp_path / "r.json")]) == 0
    assert suite_calls[0].preset == "audiox-turbo"
    [note] = _err_lines(capsys)
    assert note.startswith("audiox bench: note: preset audiox-turbo on the CPU: ~11 GB of weights per model, "
                           "minutes per Turbo row, hours per 250-step teacher row (on 2 cores one DiT forward took")
    assert note.endswith("--time-budget-s S stops starting rows after S s")
    assert cli.main(["bench", "--preset", "tiny", "--out", str(tmp_path / "r.json")]) == 0
    assert suite_calls[1].preset == "tiny" and capsys.readouterr().err == ""  # asked for: nothing to say
    assert cli.main(["bench", "--suite", "kernels", "--out", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().err == ""  # the kernels suite builds no model


def test_cpu_suite_runs_the_full_width_with_a_note_and_its_depth(no_cuda, suite_calls, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert cli.main(["bench", "--suite", "cpu", "--device", "cpu", "--depth", "12", "--out", out]) == 0
    assert suite_calls[0].preset == "audiox-turbo" and suite_calls[0].depth == 12
    [note] = _err_lines(capsys)
    assert note.startswith("audiox bench: note: preset audiox-turbo on the CPU: ~9 GB of weights per model, "
                           "8-12 minutes at --depth 12")
    assert cli.main(["bench", "--suite", "cpu", "--smoke", "--device", "cpu", "--out", out]) == 0
    assert suite_calls[1].preset == "tiny" and suite_calls[1].depth is None and capsys.readouterr().err == ""


def test_smoke_on_the_cpu_leaves_torch_compile_out_unless_asked(no_cuda, suite_calls, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    assert cli.main(["bench", "--smoke", "--out", out]) == 0
    config = suite_calls[-1]
    assert config.smoke and config.preset == "tiny" and capsys.readouterr().err == ""
    assert set(config.backends) == set(workloads.BACKENDS) - set(workloads.COMPILE_MODES)
    assert cli.main(["bench", "--smoke", "--backends", "eager,compile", "--out", out]) == 0
    assert suite_calls[-1].backends == ("eager", "compile")


def test_profile_default_preset_follows_the_device(no_cuda, monkeypatch, tmp_path, capsys):
    seen = []
    monkeypatch.setattr(profiler, "profile_generation", lambda preset, device, out, **kw: seen.append(preset) or {})
    assert cli.main(["profile", "--out", str(tmp_path / "t.json")]) == 0
    assert seen == ["tiny"]
    cost = "~11 GB of weights, 17 GB of memory at the peak and about 3 minutes"
    assert _err_lines(capsys) == [TINY_NOTE.format(prog="audiox profile", cost=cost)]
    assert cli.main(["profile", "--preset", "audiox-turbo", "--out", str(tmp_path / "t.json")]) == 0
    assert seen == ["tiny", "audiox-turbo"]
    assert _err_lines(capsys)[0].startswith("audiox profile: note: preset audiox-turbo on the CPU: ~11 GB")


def test_full_size_memory_in_the_notes_is_the_model_s():
    """FULL_DIT_GB / FULL_PIPELINE_GB: the full-size model's fp32 bytes, counted on the meta device."""
    meta = torch.device("meta")  # shapes without memory: the 2.8 B parameters in a second
    from audiox_engine.audiox import AudioXPipeline
    from audiox_engine.audiox.config import get_preset
    from audiox_engine.audiox.dit import MMDiffusionTransformer

    with meta:
        dit_params = sum(p.numel() for p in MMDiffusionTransformer(get_preset("audiox-turbo").dit).parameters())
        pipe = AudioXPipeline.from_preset("audiox-turbo", device=meta, dtype=torch.float32)
    pipe_params = sum(p.numel() for m in vars(pipe).values() if isinstance(m, torch.nn.Module) for p in m.parameters())
    assert round(4 * dit_params / 1e9) == cli.FULL_DIT_GB
    assert round(4 * pipe_params / 1e9) == cli.FULL_PIPELINE_GB


# ---------------------------------------------------------------- progress lines


def test_long_phases_say_so_on_stderr_as_they_start(monkeypatch, capsys):
    r = Runner(BenchConfig(suite="headline", preset="tiny", device="cpu", reps=1, warmup=0))
    heard = []

    def fake_prepare(preset, device, backend, base=None):
        heard.append(capsys.readouterr().err)  # what had been said when the build started
        return "prepared"

    monkeypatch.setattr(workloads, "prepare_pipeline", fake_prepare)
    assert suites.prepare_backend(r, "headline", "e2e", "eager") == "prepared"
    assert heard == ["  headline  preparing eager: the tiny pipeline ...\n"]

    def fn():
        heard.append(capsys.readouterr().err)

    w = workloads.Workload(name="turbo-4/compile", group="headline", params={"backend": "compile"}, fn=fn,
                           device=torch.device("cpu"), nfe=4)
    r.measure(w)
    assert heard[1] == "  headline  measuring turbo-4/compile (its first call compiles: torch.compile) ...\n"
    assert "turbo-4/compile" in capsys.readouterr().out  # the measured row, on stdout


# ---------------------------------------------------------------- usage and bad input


@pytest.mark.parametrize("argv, usage", [(["bench", "--help"], "usage: audiox bench "),
                                         (["bench", "report", "--help"], "usage: audiox bench report "),
                                         (["profile", "--help"], "usage: audiox profile ")])
def test_usage_names_the_audiox_command(argv, usage, capsys):
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(usage)


def _bad_inputs(tmp_path):
    not_json = tmp_path / "not.json"
    not_json.write_text("{ nope")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"schema": "audiox-bench", "schema_version": 1}')
    out = ["--out", str(tmp_path / "r.json")]
    return [
        (["bench", "--suite", "everything", *out], "argument --suite: invalid choice: 'everything'"),
        (["bench", "--device", "gpu", *out], "--device 'gpu': expected cuda, cuda:N, cpu or auto"),
        (["bench", "--device", "cuda", *out], "--device cuda: this machine has no CUDA device"),
        (["bench", "--device", "meta", *out], "--device 'meta': expected cuda, cuda:N, cpu or auto"),
        (["bench", "--preset", "huge", *out], "--preset: unknown preset 'huge'"),
        (["bench", "--backends", "eager,tensorrt", *out], "--backends: unknown backend(s) ['tensorrt']"),
        (["bench", "--teacher-steps", "250,lots", *out], "--teacher-steps must be comma-separated integers"),
        (["bench", "--reps", "0", *out], "argument --reps: expected an integer >= 1, got 0"),
        (["bench", "--time-budget-s", "-5", *out], "argument --time-budget-s: expected seconds > 0"),
        (["bench", "--out", str(tmp_path)], "is a folder; give a file name"),
        (["bench", "--out", str(not_json / "r.json")], "cannot write there"),
        (["bench", "report", str(tmp_path / "missing.json")], "cannot read result file"),
        (["bench", "report", str(not_json)], "not JSON"),
        (["bench", "report", str(binary)], "not a result file (not UTF-8 text)"),
        (["bench", "report", str(invalid)], "missing required field 'suite'"),
        (["bench", "report", "--md", str(tmp_path)], "--md"),
        (["profile", "--steps", "0", "--out", str(tmp_path / "t.json")], "argument --steps"),
        (["profile", "--device", "tpu", "--out", str(tmp_path / "t.json")], "--device 'tpu'"),
        (["profile", "--preset", "huge", "--out", str(tmp_path / "t.json")], "unknown preset 'huge'"),
    ]


def test_bad_input_exits_2_with_one_line(no_cuda, suite_calls, tmp_path, capsys):
    for argv, message in _bad_inputs(tmp_path):
        assert cli.main(argv) == 2, argv
        lines = _err_lines(capsys)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in lines[0], (argv, lines)
        assert lines[0].startswith(("audiox bench: error: ", "audiox bench report: error: ",
                                    "audiox profile: error: ")), lines
    assert suite_calls == []  # every one was refused before anything ran
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "t.json").exists()
    assert cli.main([]) == 2 and capsys.readouterr().err.startswith("usage: audiox {bench|profile}")


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_exits_130_with_one_line(no_cuda, monkeypatch, tmp_path, capsys):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_suite", interrupted)
    out = tmp_path / "r.json"
    assert cli.main(["bench", "--smoke", "--out", str(out)]) == 130
    assert _err_lines(capsys) == ["audiox bench: interrupted: nothing was measured yet"]
    monkeypatch.setattr(profiler, "profile_generation", lambda *a, **kw: interrupted(None))
    assert cli.main(["profile", "--preset", "tiny", "--out", str(tmp_path / "t.json")]) == 130
    assert _err_lines(capsys) == ["audiox profile: interrupted"]


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
                    reason="SIGINT is not Python's default handler in this process")
def test_ctrl_c_through_the_audiox_command_is_one_line(no_cuda, monkeypatch, tmp_path, capsys):
    """A real SIGINT under `audiox bench`: the bench command's line, not a second one from `audiox`."""
    def run_suite(config):
        out.write_text("{}")  # a row was saved before the signal came
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("SIGINT did not interrupt")

    out = tmp_path / "r.json"
    monkeypatch.setattr(cli, "run_suite", run_suite)
    assert audiox_cli.main(["bench", "--smoke", "--out", str(out)]) == 130
    assert _err_lines(capsys) == [f'audiox bench: interrupted: the rows finished so far are in {out} '
                                  '("complete": false)']


# ---------------------------------------------------------------- real runs


def test_profile_trace_has_named_ranges(tmp_path):
    said = []
    info = profile_generation("tiny", "cpu", tmp_path / "trace.json", mode="turbo", steps=4, progress=said.append)
    names = read_trace_names(info["trace"])
    assert {"generation", "step 0", "step 1", "step 2", "step 3", "decode", "conditioning:conditioner"} <= names
    assert info["steps_seen"] == 4 and info["level"] == "e2e" and info["ranges"]["generation"] > 0
    assert [s.split(" ")[0] for s in said] == ["building", "warm-up", "tracing"]


def test_module_entry_point_runs_from_the_checkout(tmp_path):
    """`python -m audiox_engine.benchmarks` from the repository root: the source checkout
    imports itself (audiox_engine/__init__.py extends its __path__), nothing installed needed."""
    out = subprocess.run([sys.executable, "-m", "audiox_engine.benchmarks", "bench", "report", "--md",
                          str(tmp_path / "B.md")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "not measured yet" in (tmp_path / "B.md").read_text()
    out = subprocess.run([sys.executable, "-m", "audiox_engine.benchmarks", "bench", "--suite", "nope"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("audiox bench: error: argument --suite")
    assert len(out.stderr.splitlines()) == 1
