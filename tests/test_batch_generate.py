"""``audiox generate --prompts FILE.jsonl --out DIR``: refusals before any work, bad lines and
failing items reported and skipped, resuming after a kill, and a 2-process torchrun run that
writes the same bytes per id as a single process.

The runs in subprocesses set OMP_NUM_THREADS=1 for every process (torchrun's own default per
rank): on CPU the clips' last bits depend on the threads per process (oneDNN's convolutions)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch

from audiox_engine import cli
from audiox_engine.batch_prompts import item_seed
from audiox_engine.audiox import pipeline
from audiox_engine.audiox.pipeline import AudioXPipeline
from audiox_engine.batch_io import Journal, finished_records, merge_manifest, read_records
from audiox_engine.cli import main
from helpers import write_test_video, write_test_wav

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a loud square tone at 523 Hz", "rain on a roof", "a dog barking", "wind", "a kick drum",
           "a noise burst", "a rising chirp", "a soft tone", "a low hum", "crackling fire"]


def write_prompts(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def ten_lines(path: Path) -> Path:
    return write_prompts(path, [{"id": f"clip{i:02d}", "prompt": p, "seed": 100 + i} for i, p in enumerate(PROMPTS)])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def manifest_ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(cli, "_load_pipeline", refuse)
    monkeypatch.setattr(pipeline.AudioXPipeline, "from_preset", refuse)


@pytest.fixture(scope="module")
def tiny_pipe():
    return AudioXPipeline.from_preset("tiny")


@pytest.fixture
def loaded(tiny_pipe, monkeypatch):
    monkeypatch.setattr(cli, "_load_pipeline", lambda args, plan: tiny_pipe)


# ----------------------------------------------------------------------------- refused before any work


@pytest.mark.parametrize("lines,words", [
    ([{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}],
     ["id 'a' on line 3 repeats line 1"]),
    ([{"id": "Rain", "prompt": "x"}, {"id": "rain", "prompt": "y"}], ["'rain' on line 2 repeats line 1"]),
    ([{"id": "ok", "prompt": "x"}, {"id": "../escape", "prompt": "y"}], ["line 2", "not safe as a file name"]),
    ([{"id": ".hidden", "prompt": "x"}], ["not safe as a file name"]),
    ([{"id": "a/b", "prompt": "x"}], ["not safe as a file name"]),
    ([""], ["holds no line"]),
])
def test_bad_ids_are_refused_before_any_work(capsys, tmp_path, no_model, lines, words):
    prompts = write_prompts(tmp_path / "p.jsonl", lines)
    code, _, err = run(capsys, "generate", "--prompts", prompts, "--out", tmp_path / "out")
    assert code == 2 and all(w in err for w in words), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,words", [
    (["--prompt", "x"], ["--prompt: not with --prompts"]),
    (["-o", "x.wav"], ["-o: not with --prompts"]),
    (["--batch", "2"], ["--batch: not with --prompts"]),
    (["--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["--seconds", "11"], ["--seconds must be in (0, 10]"]),
    (["--cfg", "3"], ["--cfg applies to the teacher"]),
    (["--synchformer", "nope.pth"], ["--synchformer: file not found"]),
])
def test_bad_flags_are_refused_before_any_work(capsys, tmp_path, no_model, extra, words):
    prompts = ten_lines(tmp_path / "p.jsonl")
    code, _, err = run(capsys, "generate", "--prompts", prompts, "--out", tmp_path / "out", *extra)
    assert code == 2 and all(w in err for w in words), err


def test_batch_flags_need_prompts_and_prompts_need_out(capsys, tmp_path, no_model):
    code, _, err = run(capsys, "generate", "--prompt", "x", "--out", tmp_path)
    assert code == 2 and "--out goes with --prompts" in err, err
    code, _, err = run(capsys, "generate", "--prompts", ten_lines(tmp_path / "p.jsonl"))
    assert code == 2 and "--prompts needs --out DIR" in err, err
    code, _, err = run(capsys, "generate", "--prompts", tmp_path / "missing.jsonl", "--out", tmp_path / "o")
    assert code == 2 and "cannot read it" in err, err


# ----------------------------------------------------------------------------- bad lines, failing items


def test_bad_lines_and_failing_items_are_reported_and_skipped(capsys, tmp_path, loaded):
    write_test_video(tmp_path / "clip.mp4")
    write_test_wav(tmp_path / "prompt.wav")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"id": "text", "prompt": "rain", "seed": 3},
        '{"id": "cut", "prompt": ',
        {"id": "video", "video": "clip.mp4", "prompt": "a dog"},
        {"id": "broken", "video": "broken.mp4"},
        "",
        {"id": "typo", "promt": "x"},
        {"id": "audio", "audio": "prompt.wav", "seconds": 0.25},
        {"id": "gone", "audio": "missing.wav"},
    ])
    out = tmp_path / "out"
    argv = ["generate", "--prompts", prompts, "--out", out, "--seconds", "0.5", "--batch-size", "2", "-q"]
    code, stdout, err = run(capsys, *argv)
    assert code == 1, err
    for words in ("line 2: not JSON", "line 4 (id 'broken'): cannot open video file",
                  "line 6 (id 'typo'): unknown key(s) 'promt'", "line 8 (id 'gone'): audio file not found"):
        assert words in err, err
    assert "3 made, 0 already done, 4 failed" in stdout and "Traceback" not in err
    assert manifest_ids(out) == ["text", "video", "audio"]
    assert sorted(p.name for p in out.iterdir()) == ["audio.wav", "manifest.jsonl", "text.wav", "video.wav"]
    assert sf.info(str(out / "audio.wav")).frames == round(0.25 * 44100)
    records = read_records(str(out))
    assert records["text"]["seed"] == 3 and records["text"]["line"] == 1
    # Lines without a seed: one derived from --seed (0 here) and the id, different per id.
    assert records["video"]["seed"] == item_seed(0, "video") != records["audio"]["seed"] == item_seed(0, "audio")
    assert records["text"]["weights_sha256"] and records["text"]["batch_size"] == 2
    # A rerun makes nothing already made and reports the same failures.
    code, stdout, err = run(capsys, *argv)
    assert code == 1 and "0 made, 3 already done, 4 failed" in stdout, stdout + err


def test_accelerate_runs_the_engine_and_format_picks_the_files(capsys, tmp_path, loaded):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "rain"}, {"id": "b", "prompt": "wind"}])
    code, stdout, err = run(capsys, "generate", "--prompts", prompts, "--out", tmp_path / "out", "--seconds", "0.5",
                            "--batch-size", "2", "--accelerate", "--format", "flac", "-q")
    assert code == 0 and "2 made" in stdout, err
    assert manifest_ids(tmp_path / "out") == ["a", "b"]
    assert sf.info(str(tmp_path / "out" / "a.flac")).format == "FLAC"


def test_batch_size_one_writes_the_bytes_of_one_clip_generate(capsys, tmp_path, loaded):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "wind", "seed": 5},
                                                   {"id": "b", "prompt": "rain", "seed": 9, "seconds": 0.25}])
    code, _, err = run(capsys, "generate", "--prompts", prompts, "--out", tmp_path / "out", "--seconds", "0.5", "-q")
    assert code == 0, err
    code, _, err = run(capsys, "generate", "--prompt", "rain", "--seed", "9", "--seconds", "0.25", "-o",
                       tmp_path / "one.wav", "-q")
    assert code == 0, err
    assert (tmp_path / "one.wav").read_bytes() == (tmp_path / "out" / "b.wav").read_bytes()


def test_strict_fails_a_prompt_the_text_encoder_would_cut(capsys, tmp_path, loaded):
    long = " ".join(["a loud square tone"] * 60)
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "short", "prompt": "rain"}, {"id": "long", "prompt": long}])
    argv = ["generate", "--prompts", prompts, "--out", tmp_path / "out", "--seconds", "0.5", "-q"]
    code, stdout, err = run(capsys, *argv, "--strict")
    assert code == 1 and "line 2 (id 'long'): the prompt takes" in err and "shorten it" in err, err
    assert manifest_ids(tmp_path / "out") == ["short"]
    code, stdout, err = run(capsys, *argv)  # without --strict: made, with a warning
    assert code == 0 and "1 made, 1 already done" in stdout and "the rest is cut" in err, stdout + err


# ----------------------------------------------------------------------------- the manifest on disk


def test_a_journal_line_cut_by_a_kill_is_ignored_and_the_next_stands_alone(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    (tmp_path / "b.wav").write_bytes(b"x")
    (tmp_path / "manifest.rank1.jsonl").write_text('{"id": "a", "file": "a.wav"}\n{"id": "b", "fi')
    with Journal(str(tmp_path), 1) as journal:
        journal.append({"id": "c", "file": "c.wav"})
    assert sorted(read_records(str(tmp_path))) == ["a", "c"]
    assert sorted(finished_records(str(tmp_path))) == ["a"]  # c.wav is not there: made again
    assert merge_manifest(str(tmp_path)) == 1
    assert manifest_ids(tmp_path) == ["a"] and not list(tmp_path.glob("manifest.rank*"))


# ----------------------------------------------------------------------------- processes


def _command(*argv, processes: int = 1) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    return [sys.executable, *launcher, "-m", "audiox_engine", "generate", *map(str, argv)]


def _environment() -> dict:
    # The checkout under test first, whatever the venv has installed; one thread per process.
    path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def test_killed_run_resumes_and_two_processes_write_the_same_bytes(tmp_path):
    prompts = ten_lines(tmp_path / "p.jsonl")
    single, double = tmp_path / "single", tmp_path / "double"
    flags = ["--prompts", prompts, "--seconds", "0.5", "--batch-size", "4", "-q"]

    # One process, killed once its first clip is journaled, then rerun to the end.
    proc = subprocess.Popen(_command(*flags, "--out", single), cwd=ROOT, env=_environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    part, deadline = single / "manifest.rank0.jsonl", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if part.is_file() and part.read_text().count("\n") >= 1:
            proc.kill()
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode < 0, f"the run ended before it was killed: {err}"
    journaled = part.read_text().count("\n")
    assert 1 <= journaled < len(PROMPTS) and not (single / "manifest.jsonl").exists()
    done = subprocess.run(_command(*flags, "--out", single), cwd=ROOT, env=_environment(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(PROMPTS) - journaled} made, {journaled} already done, 0 failed" in done.stdout, done.stdout
    ids = [f"clip{i:02d}" for i in range(len(PROMPTS))]
    assert manifest_ids(single) == ids  # each id once, in line order
    assert sorted(p.name for p in single.iterdir()) == sorted([f"{i}.wav" for i in ids] + ["manifest.jsonl"])

    # Two processes under torchrun: each id's file is byte-identical to the single process's.
    two = subprocess.run(_command(*flags, "--out", double, processes=2), cwd=ROOT, env=_environment(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert manifest_ids(double) == ids
    records = read_records(str(double))
    assert {r["device"] for r in records.values()} == {"cpu"} and {r["threads"] for r in records.values()} == {1}
    for i in ids:
        assert (double / f"{i}.wav").read_bytes() == (single / f"{i}.wav").read_bytes(), i
    assert torch.from_numpy(sf.read(str(double / "clip00.wav"))[0]).abs().max() > 0


def test_a_refusal_under_torchrun_is_reported_once(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    two = subprocess.run(_command("--prompts", prompts, "--out", tmp_path / "out", processes=2), cwd=ROOT,
                         env=_environment(), capture_output=True, text=True, timeout=300)
    lines = [ln for ln in two.stderr.splitlines() if ln.startswith("audiox: ")]
    assert two.returncode != 0 and lines == ["audiox: error: --prompts " + str(prompts) + ": id 'a' on line 2 "
                                             "repeats line 1 (ids name the output files: make each unique)"], lines


def test_item_seed_is_stable_and_differs_per_id():
    assert item_seed(0, "a") == item_seed(0, "a")
    assert len({item_seed(0, f"clip{i}") for i in range(100)}) == 100
    assert item_seed(0, "a") != item_seed(1, "a")
    assert 0 <= item_seed(2**63, "a") < 2**63
