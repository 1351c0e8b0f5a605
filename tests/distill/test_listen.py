"""The listening sheet: one WAV per prompt, pitch of tone prompts, spectrogram PNG, JSON."""
import json

import soundfile as sf
import torch

from audiox_engine.audiox.distill.classifier import ProceduralAudioClassifier
from audiox_engine.audiox.distill.listen import listen, main, stated_frequency
from audiox_engine.audiox.distill.recipe import RecipeConfig, build_model
from audiox_engine.audiox.distill.toy import torch_threads
from audiox_engine.audiox.pipeline import AudioXPipeline, _Source


def test_stated_frequency():
    assert stated_frequency("a loud square tone at 523 Hz") == 523.0
    assert stated_frequency("three kick drum hits") is None


def test_listen_writes_wavs_plot_and_numbers(tmp_path):
    model = build_model(RecipeConfig.micro())  # 0.56 s clips: seconds, not minutes
    pipe = AudioXPipeline(model, source=_Source("tiny-micro", False, "test"))
    prompts = ("a loud sine tone at 440 Hz", "two kick drum hits")
    with torch_threads(1), torch.no_grad():
        records = listen(pipe, str(tmp_path), prompts, classifier=ProceduralAudioClassifier().eval())
    assert [r["prompt"] for r in records] == list(prompts)
    assert "semitone_error" in records[0] and "semitone_error" not in records[1]
    for r in records:
        data, sr = sf.read(tmp_path / r["wav"])
        assert sr == 44100 and data.shape == (int(round(pipe.cfg.seconds * sr)), 2) and abs(data).max() > 0
        assert r["peak_hz"] > 0 and r["heard_kind"] in ("tone", "drums", "noise", "chirp")
    assert json.loads((tmp_path / "listen.json").read_text()) == records
    assert (tmp_path / "listen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_listen_cli_refuses_a_missing_pipeline(tmp_path):
    try:
        main([str(tmp_path / "nope"), str(tmp_path / "out")])
    except (ValueError, KeyError, FileNotFoundError, SystemExit) as e:
        assert "nope" in str(e) or "preset" in str(e)
    else:
        raise AssertionError("a missing pipeline was accepted")
