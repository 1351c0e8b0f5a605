"""The `audiox` command, in-process: every bad input exits 2 with one line naming the problem
and what to do, found before any model is built when it lies in the arguments or paths;
Ctrl-C exits 130 with one line; what it writes is what the extension names."""

import json
import os
import re
import shutil

import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audiox_engine import cli
from audiox_engine.audiox import pipeline
from audiox_engine.audiox.pipeline import AudioXPipeline, embedded_folder
from audiox_engine.audiox.sampling import TEACHER_CFG_SCALE
from audiox_engine.cli import main
from helpers import write_test_video, write_test_wav

TONE = "a loud square tone at 523 Hz"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(code, err, *words) -> str:
    """Exit 2, one stderr line (progress bars aside), no traceback; the line holds ``words``."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("audiox: error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model is built anywhere but on the meta device (shape checks)."""
    real = pipeline.AudioXModel

    def guarded(*args, **kwargs):
        assert torch.get_default_device().type == "meta", "a model was built"
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "AudioXModel", guarded)


@pytest.fixture
def media(tmp_path):
    write_test_video(tmp_path / "clip.mp4")
    write_test_wav(tmp_path / "prompt.wav")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    (tmp_path / "notes.txt").write_text("hello\n")
    return tmp_path


@pytest.fixture(scope="module")
def tiny_pipe():
    return AudioXPipeline.from_preset("tiny")


@pytest.fixture
def loaded(tiny_pipe, monkeypatch):
    """The command with the embedded model already loaded (the tests of loading load it themselves)."""
    def load(args, plan):
        assert plan["kind"] == "preset" and plan["model"] == "tiny"
        return tiny_pipe

    monkeypatch.setattr(cli, "_load_pipeline", load)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A copy of the embedded model as a model folder (config, weights, its own t5-base)."""
    d = tmp_path_factory.mktemp("models") / "tiny-copy"
    shutil.copytree(embedded_folder("tiny"), d)
    return d


# ----------------------------------------------------------------------------- help


def test_help_is_plain_text_and_agrees_with_the_code(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "``" not in out and "audiox generate --prompt" in out
    code, out, _ = run(capsys, "generate", "--help")
    assert code == 0 and f"default: {TEACHER_CFG_SCALE:g}," in re.sub(r"\s+", " ", out)
    code, _, err = run(capsys)
    one_error_line(code, err, "required")


# ----------------------------------------------------------------------------- arguments and paths


@pytest.mark.parametrize("args,words", [
    (["--steps", "0"], ["--steps must be >= 1"]),
    (["--steps", "2.5"], ["--steps", "invalid int"]),
    (["--seconds", "0"], ["--seconds must be in (0, 10]"]),
    (["--seconds", "11"], ["--seconds must be in (0, 10]"]),
    (["--seconds", "nan"], ["--seconds must be a finite number"]),
    (["--batch", "0"], ["--batch must be >= 1"]),
    (["--seed", str(2 ** 64)], ["--seed must be <="]),
    (["--cfg", "3"], ["--cfg applies to the teacher"]),
    (["--device", "foo"], ["--device 'foo' is not a device name", "cpu"]),
    (["--dtype", "int8"], ["--dtype", "invalid choice"]),
    (["--normalize", "rms"], ["--normalize", "invalid choice"]),
    (["--model", "no-such-preset"], ["neither a folder nor a preset", "tiny"]),
    (["--model", "./no-such-folder"], ["folder not found"]),
    (["--t5", "/nonexistent"], ["--t5", "has its own text encoder"]),
    (["--prompt", "x" * 200, "--strict"], ["takes 201 tokens", "reads 128", "shorten"]),
])
def test_bad_arguments_exit_2_before_any_model(no_model, tmp_path, capsys, args, words):
    out = tmp_path / "o.wav"
    argv = ["generate", "--prompt", "x", *args, "-o", out] if "--prompt" not in args else ["generate", *args, "-o", out]
    one_error_line(*run(capsys, *argv)[::2], *words)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(no_model, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--prompt", "x", "--device", "cuda", "-o", tmp_path / "o.wav")
    one_error_line(code, err, "no cuda device", "use cpu")


@pytest.mark.parametrize("args,words", [
    ([], ["at least one of --prompt, --video, --audio"]),
    (["--video", "missing.mp4"], ["video file not found"]),
    (["--video", "{m}/broken.mp4"], ["--video", "not a video file"]),
    (["--video", "{m}/notes.txt"], ["--video", "not a video file"]),
    (["--audio", "{m}/broken.wav"], ["--audio", "not an audio file"]),
    (["--audio", "{m}"], ["audio path is not a file"]),
    (["--prompt", "x", "--video-sync", "{m}/notes.txt"], ["--video-sync", "unknown checkpoint extension"]),
    (["--prompt", "x", "--video-sync", "{m}/sync_text.pt"], ["--video-sync", "a text file"]),
    (["--prompt", "x", "--video-sync", "{m}/sync_full.pt"], ["--video-sync must be", "(8, 64)", "(240, 768)"]),
    (["--prompt", "x", "--video-sync", "{m}/sync_two.pt"], ["expected one tensor, found 2"]),
])
def test_bad_prompt_files_exit_2_before_any_model(no_model, media, capsys, args, words):
    (media / "sync_text.pt").write_text("not tensors\n")
    torch.save(torch.randn(240, 768), media / "sync_full.pt")  # the full model's shape; tiny takes (8, 64)
    torch.save({"a": torch.randn(8, 64), "b": torch.randn(8, 64)}, media / "sync_two.pt")
    args = [a.replace("{m}", str(media)) for a in args]
    out = media / "o.wav"
    one_error_line(*run(capsys, "generate", *args, "-o", out)[::2], *words)
    assert not out.exists()


def test_bad_outputs_exit_2_before_any_model(no_model, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken.wav").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    cases = [
        ("", ["-o is empty"]),
        (tmp_path / "folder", ["is a folder", "give a file name in it"]),
        (f"{tmp_path / 'folder'}/", ["is a folder"]),
        (tmp_path / "nowhere" / "o.wav", ["does not exist", "create it first"]),
        (tmp_path / "o.aac", ["cannot write a .aac file", ".wav, .flac"]),
        (tmp_path / "o", ["without an extension", ".wav"]),
        (tmp_path / "taken.wav", ["exists", "--force"]),
    ]
    for out, words in cases:
        one_error_line(*run(capsys, "generate", "--prompt", "x", "-o", out)[::2], *words)

    def read_only(*args, **kwargs):  # what a read-only folder does, even to root
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "mkstemp", read_only)
    line = one_error_line(*run(capsys, "generate", "--prompt", "x", "-o", tmp_path / "o.wav")[::2],
                          "cannot write in", "Permission denied")
    assert ".audiox" not in line and ".o.wav" not in line  # no hidden temporary names
    assert sorted(os.listdir(tmp_path)) == ["folder", "taken.wav"]


def test_batch_outputs_are_all_checked_first(no_model, tmp_path, capsys):
    (tmp_path / "o_2.wav").write_bytes(b"x")
    one_error_line(*run(capsys, "generate", "--prompt", "x", "--batch", "3", "-o", tmp_path / "o.wav")[::2],
                   "o_2.wav exists")


def test_a_folder_named_like_the_preset(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    one_error_line(*run(capsys, "generate", "--prompt", "x", "--model", "tiny", "-o", "o.wav")[::2],
                   "both the preset 'tiny' and the folder ./tiny", "write ./tiny for the folder")
    one_error_line(*run(capsys, "generate", "--prompt", "x", "--model", "./tiny", "-o", "o.wav")[::2],
                   "no model config found")
    # the default is the embedded preset, whatever the working folder holds
    code, _, err = run(capsys, "generate", "--prompt", TONE, "--seconds", "0.5", "-q", "-o", "o.wav")
    assert code == 0 and err == "" and sf.info("o.wav").duration == 0.5


# ----------------------------------------------------------------------------- model folders


def _folder_with_config(tmp_path, model_dir, config_text):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(model_dir / "model.safetensors", d)
    (d / "model_config.json").write_text(config_text)
    return d


@pytest.mark.parametrize("config_text,words", [
    ("null", ["must hold a JSON object", "null"]),
    ("[1, 2]", ["must hold a JSON object"]),
    ("{}", ["neither the release's format", "save_pretrained"]),
    ("{", ["not valid JSON"]),
    ('{"dit": {"depth": "3"}, "maf": {}}', ["DiTConfig.depth must be an integer"]),
    ('{"dit": {"num_heads": 0}, "maf": {}}', ["DiTConfig.num_heads must be an integer >= 1"]),
    ('{"dit": {"heads": 3}, "maf": {}}', ["unknown DiTConfig keys ['heads']"]),
    ('{"dit": [], "maf": {}}', ["AudioXConfig.dit must be a JSON object"]),
    # the full-size defaults against the tiny checkpoint: refused from the file's header, not
    # after allocating 2.7 B parameters
    ('{"dit": {}, "maf": {}}', ["does not match the model config", "in the file but", "more keys differ"]),
])
def test_bad_model_configs_exit_2_before_any_model(no_model, tmp_path, model_dir, capsys, config_text, words):
    d = _folder_with_config(tmp_path, model_dir, config_text)
    one_error_line(*run(capsys, "generate", "--prompt", "x", "--model", d, "-o", tmp_path / "o.wav")[::2], *words)


def test_wrong_shape_key_is_named_on_the_one_line(no_model, tmp_path, model_dir, capsys):
    cfg = json.loads((model_dir / "model_config.json").read_text())
    cfg["dit"]["embed_dim"] = 256
    d = _folder_with_config(tmp_path, model_dir, json.dumps(cfg))
    line = one_error_line(*run(capsys, "generate", "--prompt", "x", "--model", d, "-o", tmp_path / "o.wav")[::2])
    assert "model.model." in line and "(128, " in line and "(256, " in line and "more keys differ in shape" in line


def test_t5_folders(no_model, tmp_path, model_dir, capsys):
    out = tmp_path / "o.wav"
    one_error_line(*run(capsys, "generate", "--prompt", "x", "--model", model_dir, "--t5", "/nonexistent",
                        "-o", out)[::2], "T5 folder not found: /nonexistent")
    empty = tmp_path / "empty_t5"
    empty.mkdir()
    one_error_line(*run(capsys, "generate", "--prompt", "x", "--model", model_dir, "--t5", empty, "-o", out)[::2],
                   "no config.json")


def test_a_malicious_t5_pickle_is_refused_on_one_line_and_never_run(no_model, tmp_path, model_dir, capsys):
    evil = tmp_path / "evil_t5"
    evil.mkdir()
    for name in ("config.json", "audiox_byte_tokenizer.json"):
        shutil.copy(model_dir / "t5-base" / name, evil)
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(witness),))

    torch.save({"shared.weight": Payload()}, evil / "pytorch_model.bin")
    line = one_error_line(*run(capsys, "generate", "--prompt", "x", "--model", model_dir, "--t5", evil,
                               "-o", tmp_path / "o.wav")[::2], "pytorch_model.bin: refused", "safetensors")
    assert "weights_only=False" not in line
    assert not witness.exists()


def test_release_layout_with_a_separate_vae_loads_without_warnings(model_dir, tmp_path, capsys, caplog):
    """The release's layout: the student checkpoint without the VAE, and pretransform/vae.ckpt
    (a Lightning file with its own prefix)."""
    from safetensors.torch import load_file, save_file

    d = tmp_path / "release"
    shutil.copytree(model_dir, d)
    sd = load_file(d / "model.safetensors")
    student = {k: v for k, v in sd.items() if not k.startswith("pretransform.")}
    vae = {"autoencoder." + k[len("pretransform."):]: v for k, v in sd.items() if k.startswith("pretransform.")}
    save_file(student, d / "model.safetensors")
    (d / "pretransform").mkdir()
    torch.save({"state_dict": vae, "epoch": 3}, d / "pretransform" / "vae.ckpt")
    with caplog.at_level("WARNING"):
        loaded = AudioXPipeline.from_pretrained(d)
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    ref = AudioXPipeline.from_pretrained(model_dir)
    a, _ = loaded(TONE, seconds=0.5, generator=1)
    b, _ = ref(TONE, seconds=0.5, generator=1)
    assert torch.equal(a, b)
    # and what is still missing after both files is named
    torch.save({"state_dict": {k: v for k, v in list(vae.items())[1:]}}, d / "pretransform" / "vae.ckpt")
    with pytest.raises(pipeline.CheckpointError, match=r"1 key missing from the file \(first: pretransform\."):
        AudioXPipeline.from_pretrained(d)


# ----------------------------------------------------------------------------- generating


def test_generate_writes_the_format_the_extension_names(loaded, tmp_path, capsys):
    from audiox_engine.audiox.media import writable_formats

    for ext in writable_formats():  # .wav .flac .ogg (.mp3 where this libsndfile writes it)
        out = tmp_path / f"clip{ext}"
        code, stdout, err = run(capsys, "generate", "--prompt", TONE, "--seconds", "1", "--seed", "2", "-o", out)
        assert code == 0 and "Traceback" not in err
        assert f"wrote {out} (1.00 s, 44100 Hz, 2 ch, peak " in stdout
        info = sf.info(str(out))
        assert info.format == writable_formats()[ext][0] and info.samplerate == 44100 and info.channels == 2
        data, _ = sf.read(str(out))
        assert data.std() > 0.01
    assert sorted(os.listdir(tmp_path)) == sorted(f"clip{e}" for e in writable_formats())  # no temporary files
    one_error_line(*run(capsys, "generate", "--prompt", "x", "-q", "-o", tmp_path / "clip.wav")[::2], "exists")


def test_level_is_kept_unless_asked_and_clipping_is_reported(loaded, tmp_path, capsys):
    def peak(path):
        data, _ = sf.read(str(path))
        return abs(data).max()

    run(capsys, "generate", "--prompt", "a soft sine tone at 440 Hz", "--seconds", "2", "-q", "-o", tmp_path / "soft.wav")
    run(capsys, "generate", "--prompt", "a loud sine tone at 440 Hz", "--seconds", "2", "-q", "-o", tmp_path / "loud.wav")
    assert peak(tmp_path / "loud.wav") > 2.5 * peak(tmp_path / "soft.wav")  # > 8 dB apart (measured ~15)
    code, _, err = run(capsys, "generate", "--prompt", "a soft sine tone at 440 Hz", "--seconds", "2", "-q",
                       "--normalize", "peak", "-o", tmp_path / "norm.wav")
    assert code == 0 and err == "" and peak(tmp_path / "norm.wav") > 0.99


def test_clipping_is_reported_on_one_line(loaded, tmp_path, capsys, monkeypatch):
    real_call = AudioXPipeline.__call__

    def too_loud(self, *args, **kwargs):
        wave, sr = real_call(self, *args, **kwargs)
        return wave * 50, sr

    monkeypatch.setattr(AudioXPipeline, "__call__", too_loud)
    code, _, err = run(capsys, "generate", "--prompt", TONE, "--seconds", "1", "-q", "-o", tmp_path / "o.wav")
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1 and "clipped" in lines[0] and "--normalize peak" in lines[0]


def test_a_long_prompt_is_cut_with_one_warning(loaded, tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--prompt", "a loud sine tone at 440 Hz " * 8, "--seconds", "0.5", "-q",
                       "-o", tmp_path / "o.wav")
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1 and "the rest is cut" in lines[0] and "Traceback" not in err


def test_uppercase_prompt_reads_as_the_trained_lowercase_one(loaded, tmp_path, capsys):
    for name, prompt in (("lower.wav", "a loud square tone at 523 Hz"), ("upper.wav", "A LOUD SQUARE TONE AT 523 HZ")):
        assert run(capsys, "generate", "--prompt", prompt, "--seconds", "1", "-q", "-o", tmp_path / name)[0] == 0
    a, _ = sf.read(str(tmp_path / "lower.wav"))
    b, _ = sf.read(str(tmp_path / "upper.wav"))
    assert (a == b).all()


def test_video_sync_of_the_right_shape_and_a_batch(loaded, tmp_path, media, capsys):
    torch.save(torch.randn(1, 8, 64), media / "sync.pth")  # the release stores a bare tensor
    code, out, err = run(capsys, "generate", "--video", media / "clip.mp4", "--video-sync", media / "sync.pth",
                         "--batch", "2", "--seconds", "0.5", "-o", tmp_path / "v.wav")
    assert code == 0, err
    a, _ = sf.read(str(tmp_path / "v.wav"))
    b, _ = sf.read(str(tmp_path / "v_1.wav"))
    assert a.shape == b.shape and not (a == b).all()  # two clips of one video, other noise


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(loaded, tmp_path, capsys, monkeypatch):
    from audiox_engine.audiox import media as media_module

    real_write = media_module.write_audio

    def interrupted_write(path, audio, sample_rate, format=None):
        def write_half_then_stop(tmp, data, sr, **kwargs):
            with open(tmp, "wb") as f:
                f.write(b"RIFF half")
            raise KeyboardInterrupt

        monkeypatch.setattr("soundfile.write", write_half_then_stop)
        return real_write(path, audio, sample_rate, format)

    monkeypatch.setattr(media_module, "write_audio", interrupted_write)
    code, _, err = run(capsys, "generate", "--prompt", TONE, "--seconds", "0.5", "-q", "-o", tmp_path / "o.wav")
    lines = err.strip().splitlines()
    assert code == 130 and len(lines) == 1 and "interrupted" in lines[0] and "Traceback" not in err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- property


_values = st.one_of(st.integers(-3, 12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["", "x", "abc", "0.001", "1e-9", "-0", "1e30", "cuda", "cpu", "peak"]))
_flags = st.sampled_from(["--seconds", "--steps", "--seed", "--batch", "--cfg", "--device", "--dtype", "--normalize",
                          "--model", "--t5", "--video-sync", "--video", "--audio"])
_switches = st.sampled_from(["--teacher", "--strict", "--force", "--no-mask-audio-prompt", "--quiet", "--bogus"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(_flags, _values), max_size=4), switches=st.lists(_switches, max_size=2),
       prompt=st.one_of(st.none(), st.text(max_size=40)), seconds=st.floats(0.01, 0.3))
def test_any_arguments_either_work_or_fail_on_one_line(loaded, tmp_path, capsys, pairs, switches, prompt, seconds):
    argv = ["generate", "--seconds", f"{seconds:.3f}", "--steps", "2"]
    if prompt is not None:
        argv += ["--prompt", prompt]
    for flag, value in pairs:
        argv += [flag, value]
    out = tmp_path / "p.wav"
    code, _, err = run(capsys, *argv, *switches, "--force", "-o", out)
    if code != 0:
        one_error_line(code, err)
    else:
        assert "Traceback" not in err and sf.info(str(out)).samplerate == 44100
