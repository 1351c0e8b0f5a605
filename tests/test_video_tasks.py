"""Video tasks as the release computes them: Synchformer sync features from the clip at 25 fps,
refused without the checkpoint unless zero features are asked for; the six tasks end to end
from the `audiox` command on the tiny preset (its Synchformer has seeded random weights)."""

from __future__ import annotations

import logging
import os

import pytest
import soundfile as sf
import torch

from audiox_engine.audiox.media import load_video_and_sync_frames
from audiox_engine.audiox.pipeline import (
    SYNCHFORMER_FILE,
    AudioXPipeline,
    MissingSynchformerError,
    find_synchformer,
)
from audiox_engine.audiox.synchformer import Synchformer, sync_pixels
from audiox_engine.cli import main
from helpers import rel_err, write_test_video

# The release's task table (README "Supported Tasks"): none takes an audio prompt, and music
# versus audio is only the prompt; V2A / V2M carry the release's fixed instructions.
TASKS = {
    "T2A": ["--prompt", "Typing on a keyboard"],
    "T2M": ["--prompt", "A music with piano and violin"],
    "V2A": ["--video", "{clip}", "--prompt", "Generate general audio for the video"],
    "V2M": ["--video", "{clip}", "--prompt", "Generate music for the video"],
    "TV2A": ["--video", "{clip}", "--prompt", "Ocean waves crashing with people laughing"],
    "TV2M": ["--video", "{clip}", "--prompt", "Generate music with piano instrument"],
}


@pytest.fixture(scope="module")
def pipe():
    return AudioXPipeline.from_preset("tiny")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A real 64x64 MPEG-4 clip at 30 fps, 0.7 s: shorter than the tiny model's 0.8 s window,
    so the 25 fps pick (every 2nd frame) pads with the last frame."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_test_video(path, frames=21, size=64, fps=30)
    return str(path)


@pytest.fixture(scope="module")
def bare_model(pipe, tmp_path_factory):
    """The tiny model saved without a Synchformer, and the Synchformer saved on its own."""
    root = tmp_path_factory.mktemp("models")
    pipe.save_pretrained(root / "m", synchformer=False, text_encoder=True)
    weights = root / "synchformer_state_dict.pth"
    torch.save(pipe.synchformer.state_dict(), weights)
    return str(root / "m"), str(weights)


@pytest.fixture(scope="module")
def bare(bare_model):
    return AudioXPipeline.from_pretrained(bare_model[0])


@pytest.fixture
def sync_calls(monkeypatch):
    """Records the clips every Synchformer encodes (the end-to-end tests' spy)."""
    calls = []
    real = Synchformer.encode_video_with_sync

    def spy(self, video):
        out = real(self, video)
        calls.append((tuple(video.shape), out))
        return out

    monkeypatch.setattr(Synchformer, "encode_video_with_sync", spy)
    return calls


def _features_by_hand(pipe, clip):
    _, sync_frames = load_video_and_sync_frames(clip, seconds_total=pipe.video_seconds, size=64, sync_size=64)
    return pipe.synchformer.encode_video_with_sync(sync_pixels(sync_frames)[None])


# ----------------------------------------------------------------------------- the pipeline


def test_video_conditioning_uses_the_clips_sync_features(pipe, clip):
    """The tiny model's trained sync_weight is 0; with it set to 1 the sync term shows."""
    video_cond = pipe.model.conditioner.conditioners["video_prompt"]
    want = _features_by_hand(pipe, clip)
    assert want.shape == (1, 8, 64) and want.abs().max() > 0.1
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        video_cond.sync_weight.fill_(1.0)
    try:
        computed = pipe.encode_conditioning("rain", video=clip, generator=g())
        given = pipe.encode_conditioning("rain", video=clip, video_sync=want, generator=g())
        zeros = pipe.encode_conditioning("rain", video=clip, video_sync="zeros", generator=g())
    finally:
        with torch.no_grad():
            video_cond.sync_weight.fill_(0.0)
    assert torch.equal(computed, given)
    assert rel_err(computed[:, 128:256], zeros[:, 128:256]) > 1e-3


def test_missing_checkpoint_refuses_before_decoding(bare, bare_model, clip, monkeypatch):
    from audiox_engine.audiox import media

    model_dir, _ = bare_model
    assert bare.synchformer is None
    cond = bare.encode_conditioning("Typing on a keyboard")  # text tasks need no Synchformer
    assert cond.shape == (1, 384, 64)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded the video before refusing")

    monkeypatch.setattr(media, "load_video_and_sync_frames", no_decoding)
    with pytest.raises(MissingSynchformerError) as err:
        bare("x", video=clip, generator=0, return_latents=True)
    assert os.path.join(model_dir, SYNCHFORMER_FILE) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="25 fps"):  # 5 fps frames alone cannot feed the Synchformer
        bare("x", video=torch.zeros(1, 4, 3, 64, 64), return_latents=True)
    with pytest.raises(ValueError, match="'zeros' or None"):
        bare("x", video=clip, video_sync="zero", return_latents=True)


def test_zero_sync_opt_in_runs_and_warns(bare, clip, caplog):
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731  (the absent audio prompt is masked at random)
    with caplog.at_level(logging.WARNING):
        a = bare.encode_conditioning("x", video=clip, video_sync="zeros", generator=g())
    assert "not the release's conditioning" in caplog.text
    assert torch.equal(a, bare.encode_conditioning("x", video=clip, video_sync=torch.zeros(1, 8, 64), generator=g()))


def test_checkpoint_from_the_release_layout_or_a_path(pipe, bare_model, clip, tmp_path):
    model_dir, weights = bare_model
    want = _features_by_hand(pipe, clip)
    given = AudioXPipeline.from_pretrained(model_dir, synchformer=weights)
    assert given.synchformer_source == weights
    torch.testing.assert_close(_features_by_hand(given, clip), want, rtol=0, atol=0)
    pipe.save_pretrained(tmp_path / "m")  # writes synchformer/synchformer_state_dict.pth
    assert os.path.isfile(tmp_path / "m" / SYNCHFORMER_FILE)
    found = AudioXPipeline.from_pretrained(tmp_path / "m")
    assert found.synchformer_source == str(tmp_path / "m" / SYNCHFORMER_FILE)
    torch.testing.assert_close(_features_by_hand(found, clip), want, rtol=0, atol=0)
    (tmp_path / "st" / "synchformer").mkdir(parents=True)
    (tmp_path / "st" / "synchformer" / "synchformer_state_dict.safetensors").write_bytes(b"")
    assert find_synchformer(tmp_path / "st") == str(tmp_path / "st" / "synchformer" / "synchformer_state_dict.safetensors")
    assert find_synchformer(tmp_path) is None


def test_accelerated_pipeline_computes_the_same_sync_features(pipe, clip):
    from audiox_engine import engine

    fast = engine.accelerate(pipe, backend="reference", dtype=torch.float32)
    assert engine.describe(fast)["synchformers"][0]["path"] == "vfeat_extractor"
    assert rel_err(_features_by_hand(fast, clip), _features_by_hand(pipe, clip)) <= 1e-5


# ----------------------------------------------------------------------------- the command


def _generate(tmp_path, *args):
    out = tmp_path / "out.wav"
    code = main(["generate", *args, "--seconds", "0.5", "--seed", "2", "-q", "--force", "-o", str(out)])
    return code, out


@pytest.mark.parametrize("task", list(TASKS))
def test_every_release_task_from_the_command(task, clip, tmp_path, sync_calls):
    # Peak-normalised: the release's prompts are outside the tiny model's captions, and some
    # come out near silence at the level the model made.
    code, out = _generate(tmp_path, *[a.replace("{clip}", clip) for a in TASKS[task]], "--normalize", "peak")
    assert code == 0
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 22050)
    data, _ = sf.read(str(out))
    assert data.std() > 0.01
    if "--video" in TASKS[task]:
        # one clip of 0.8 s at 25 fps, 64x64 for the tiny Synchformer: 1 segment, 8 features
        assert [(shape, tuple(feats.shape)) for shape, feats in sync_calls] == [((1, 20, 3, 64, 64), (1, 8, 64))]
    else:
        assert sync_calls == []


def test_command_refuses_a_video_task_without_the_checkpoint(bare_model, clip, tmp_path, capsys, monkeypatch):
    model_dir, _ = bare_model

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the model before refusing")

    monkeypatch.setattr(AudioXPipeline, "from_pretrained", no_loading)
    code, out = _generate(tmp_path, "--video", clip, "--model", model_dir)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and os.path.join(model_dir, SYNCHFORMER_FILE) in err, err
    assert "--synchformer" in err and "--zero-sync" in err


def test_command_synchformer_path_zero_sync_and_video_sync(bare_model, clip, tmp_path, capsys, sync_calls):
    model_dir, weights = bare_model
    assert _generate(tmp_path, "--video", clip, "--model", model_dir, "--synchformer", weights)[0] == 0
    assert len(sync_calls) == 1
    capsys.readouterr()
    assert _generate(tmp_path, "--video", clip, "--model", model_dir, "--zero-sync")[0] == 0
    err = capsys.readouterr().err  # the command prints the pipeline's warnings on stderr
    assert "zero sync features" in err and "not the release's conditioning" in err
    features = tmp_path / "sync.pt"
    torch.save({"sync": torch.randn(1, 8, 64)}, features)
    assert _generate(tmp_path, "--video", clip, "--model", model_dir, "--video-sync", str(features))[0] == 0
    assert len(sync_calls) == 1  # neither the zeros nor the precomputed features ran the Synchformer
    capsys.readouterr()
    for args, match in [(["--zero-sync", "--video-sync", str(features)], "not both"),
                        (["--synchformer", str(tmp_path / "nope.pth")], "--synchformer: file not found")]:
        assert _generate(tmp_path, "--video", clip, "--model", model_dir, *args)[0] == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
