"""Conditioners (text T5, CLIP video + sync, audio prompt) and media reading.

The video and audio-prompt conditioners are compared with plain re-statements of the
release's forward (loops + einsum) on randomised weights; full-size layouts are checked
key by key against tests/data/*.tsv on the meta device.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import randomize_, read_reference_keys, write_gray_video, write_test_wav
from torch import nn
from torch.nn import functional as F

from audiox_engine.audiox.conditioners import (
    CLIP_MEAN,
    CLIP_STD,
    ByteTokenizer,
    CLIPWithSyncWithEmptyFeatureConditioner,
    ConditionerConfig,
    MultiConditioner,
    T5Conditioner,
)
from audiox_engine.audiox.media import (
    MediaError,
    load_audio_prompt,
    load_video_frames,
    read_audio,
    resample,
    resize_frames,
)

TINY = ConditionerConfig.tiny()


@pytest.fixture(scope="module")
def multi() -> MultiConditioner:
    torch.manual_seed(0)
    m = MultiConditioner(TINY).eval()
    randomize_(m, std=0.05, seed=1)  # sync_weight and empty_visual_feat are zero at init
    randomize_(m.conditioners["text_prompt"].model, std=0.05, seed=2)
    return m


def _frames(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, TINY.video_frames, 3, TINY.clip_image_size, TINY.clip_image_size),
                         generator=g).float()


# ----------------------------------------------------------------------------- layout


def test_full_size_keys_and_shapes_match_official():
    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.conditioner = MultiConditioner(ConditionerConfig.full())

    with torch.device("meta"):
        top = Top()
    ours = {k: tuple(v.shape) for k, v in top.state_dict().items()}
    ref = read_reference_keys("conditioner_keys.tsv", {"vision_model.encoder.layers.": 12, "Temp_transformer.layers.": 4})
    vae = read_reference_keys("vae_keys.tsv", {})
    ref.update({k.replace("pretransform.", "conditioner.conditioners.audio_prompt.pretransform.", 1): s
                for k, s in vae.items()})
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert {k: s for k, s in ours.items() if ref[k] != s} == {}
    # T5 is present but, as in the release, outside the module tree and the checkpoint
    text = top.conditioner.conditioners["text_prompt"]
    assert isinstance(text, T5Conditioner) and text.model.config.d_model == 768
    assert not any("text_prompt" in k for k in ours)
    assert list(top.conditioner.conditioners) == ["video_prompt", "text_prompt", "audio_prompt"]


def test_without_text_has_the_same_keys():
    with torch.device("meta"):
        a = MultiConditioner(ConditionerConfig.full(), with_text=False)
    assert "text_prompt" not in a.conditioners
    with pytest.raises(ValueError, match="no T5"):
        a(text=["x"], device="meta")


# ----------------------------------------------------------------------------- video


def _ref_video(m: CLIPWithSyncWithEmptyFeatureConditioner, frames, sync):
    """The release's CLIPWithSyncWithEmptyFeatureConditioner.forward, restated with loops."""
    c = m.config
    b, t = frames.shape[:2]
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    x = torch.cat([(frames[i].float() / 255.0 - mean) / std for i in range(b)])  # '(b t) c h w'
    hid = m.visual_encoder_model(pixel_values=x).last_hidden_state  # '(b t) q h'
    q_len = hid.shape[1]
    # '(b t) q h -> (b q) t h': one sequence over frames per (clip, token)
    hid = torch.stack([hid[i * t:(i + 1) * t, q] for i in range(b) for q in range(q_len)]) + m.Temp_pos_embedding
    heads, dh = c.temporal_heads, c.temporal_dim_head
    for attn, ff in m.Temp_transformer.layers:
        qkv = attn.fn.to_qkv(attn.norm(hid))
        outs = []
        for h in range(heads):  # 'b n (h d)': head h holds channels [h*d, (h+1)*d) of each third
            q_, k_, v_ = (qkv[..., j * heads * dh + h * dh: j * heads * dh + (h + 1) * dh] for j in range(3))
            w = torch.einsum("bid,bjd->bij", q_, k_) * dh ** -0.5
            outs.append(torch.einsum("bij,bjd->bid", w.softmax(-1), v_))
        hid = hid + attn.fn.to_out[0](torch.cat(outs, dim=-1))
        hid = hid + ff.fn.net[3](F.gelu(ff.fn.net[0](ff.norm(hid))))
    hid = m.Temp_transformer.norm(hid)
    # '(b q) t h -> b (t q) h'
    hid = torch.stack([torch.cat([hid[i * q_len + q, f][None] for f in range(t) for q in range(q_len)])
                       for i in range(b)])
    tok = m.proj(hid.reshape(-1, c.video_frames * c.tokens_per_frame)).view(b, c.num_tokens, -1)
    s = m.proj_sync(sync.reshape(-1, c.sync_len)).view(b, c.num_tokens, -1)
    out = tok + m.sync_weight * s
    empty = (frames == 0).all(dim=(1, 2, 3, 4))
    return torch.where(empty[:, None, None], m.empty_visual_feat.expand(b, -1, -1), out)


def test_video_matches_release_forward(multi):
    m = multi.conditioners["video_prompt"]
    frames = _frames(3)
    frames[1] = 0  # "no video": learned empty feature
    sync = torch.randn(3, TINY.sync_len, TINY.cond_dim)
    tokens, mask = m(frames, sync, "cpu")
    with torch.no_grad():
        want = _ref_video(m, frames, sync)
    assert tokens.shape == (3, 128, TINY.cond_dim) and mask.shape == (3, 128) and mask.all()
    torch.testing.assert_close(tokens, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(tokens[1], m.empty_visual_feat[0])
    assert not torch.equal(tokens[0], tokens[2])


def test_video_sync_none_is_zero_features_and_sync_is_added(multi):
    m = multi.conditioners["video_prompt"]
    frames = _frames(2, seed=3)
    zero_sync, _ = m(frames, torch.zeros(2, TINY.sync_len, TINY.cond_dim))
    no_sync, _ = m(frames, None)
    assert torch.equal(zero_sync, no_sync)
    sync = torch.randn(2, TINY.sync_len, TINY.cond_dim)
    with_sync, _ = m(frames, sync)
    expected_delta = m.sync_weight * (m.proj_sync(sync.reshape(-1, TINY.sync_len))
                                      - m.proj_sync.bias).view(2, 128, -1)
    torch.testing.assert_close(with_sync - no_sync, expected_delta.detach(), rtol=1e-4, atol=1e-5)


def test_video_all_empty_skips_clip(multi):
    m = multi.conditioners["video_prompt"]
    tokens, _ = m(torch.zeros(2, TINY.video_frames, 3, TINY.clip_image_size, TINY.clip_image_size))
    assert torch.equal(tokens, m.empty_visual_feat.expand(2, -1, -1))


def test_video_uint8_frames_equal_float_frames(multi):
    m = multi.conditioners["video_prompt"]
    frames = _frames(1, seed=4)
    a, _ = m(frames)
    b, _ = m(frames.to(torch.uint8))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape, what", [
    ((1, 3, 3, 64, 64), "video frames"),            # wrong frame count
    ((1, 4, 3, 32, 32), "video frames"),            # wrong size
    ((4, 3, 64, 64), "video frames"),               # no batch axis
])
def test_video_bad_shapes(multi, shape, what):
    with pytest.raises(ValueError, match=what):
        multi.conditioners["video_prompt"](torch.ones(shape))


def test_video_bad_sync_shape(multi):
    with pytest.raises(ValueError, match="sync features"):
        multi.conditioners["video_prompt"](_frames(1), torch.ones(1, 7, TINY.cond_dim))


# ----------------------------------------------------------------------------- text


def test_byte_tokenizer_truncates_keeping_eos():
    ids, mask = ByteTokenizer()(["ab", "x" * 300, ""], max_length=8)
    assert ids.shape == (3, 8) and mask.dtype == torch.bool
    assert ids[0, :3].tolist() == [ord("a") + 3, ord("b") + 3, 1] and mask[0].sum() == 3
    assert ids[1, -1] == 1 and mask[1].all()
    assert ids[2, 0] == 1 and mask[2].sum() == 1


def test_text_matches_direct_t5_and_zeroes_padding(multi):
    text = multi.conditioners["text_prompt"]
    prompts = ["a dog barks in the rain", ""]
    tokens, mask = text(prompts, "cpu")
    assert tokens.shape == (2, 128, TINY.cond_dim) and tokens.dtype == torch.float32
    assert mask.tolist()[0] == [True] * 24 + [False] * 104 and mask[1].sum() == 1
    ids, m = ByteTokenizer()(prompts, 128)
    with torch.no_grad():
        want = text.model(input_ids=ids, attention_mask=m).last_hidden_state * m[..., None]
    torch.testing.assert_close(tokens, want)
    assert (tokens[~mask] == 0).all() and (tokens[mask].abs().sum(-1) > 0).all()


def test_text_rejects_a_bare_string(multi):
    with pytest.raises(TypeError, match="list of str"):
        multi.conditioners["text_prompt"]("a dog", "cpu")


def test_t5_from_local_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "dog": 4, "barks": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(tmp_path)
    t5 = T5EncoderModel(T5Config(vocab_size=6, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)).eval()
    t5.save_pretrained(tmp_path)
    cond = T5Conditioner.from_pretrained(str(tmp_path), max_length=8, output_dim=16)
    tokens, mask = cond(["a dog barks", "dog"], "cpu")
    assert mask.tolist() == [[True] * 4 + [False] * 4, [True] * 2 + [False] * 6]
    ids = torch.tensor([[3, 4, 5, 1, 0, 0, 0, 0], [4, 1, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        want = t5(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(tokens, want)
    with pytest.raises(FileNotFoundError, match="T5 directory"):
        T5Conditioner.from_pretrained(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- audio prompt


def _release_mask_audio(audio, lo, hi):
    """The release's AudioAutoencoderConditioner.mask_audio, on the global RNG."""
    b, _, n = audio.shape
    ratios = torch.rand(b) * (hi - lo) + lo
    out = audio.clone()
    for i in range(b):
        span = int(n * ratios[i])
        start = torch.randint(0, n - span + 1, (1,))
        out[i, :, start:start + span] = 0
    return out


def test_mask_audio_draws_like_the_release(multi):
    m = multi.conditioners["audio_prompt"]
    audio = torch.rand(3, 2, 5000) + 0.1  # no zeros of its own
    torch.manual_seed(123)
    want = _release_mask_audio(audio, 0.25, 0.75)
    got = m.mask_audio(audio, torch.Generator().manual_seed(123))
    assert torch.equal(got, want)
    for i in range(3):
        zero = (got[i] == 0).all(0)
        idx = zero.nonzero().squeeze(1)
        assert 0.25 * 5000 - 1 <= len(idx) <= 0.75 * 5000
        assert (idx[-1] - idx[0] + 1).item() == len(idx)  # one contiguous span
        assert torch.equal(got[i][:, ~zero], audio[i][:, ~zero])


def test_audio_prompt_matches_composition_and_is_seeded(multi):
    m = multi.conditioners["audio_prompt"]
    audio = torch.randn(2, 2, TINY.audio_prompt_samples) * 0.3
    tokens, mask = m(audio, "cpu", generator=torch.Generator().manual_seed(9))
    assert tokens.shape == (2, 128, TINY.cond_dim) and mask.shape == (2, 128)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        masked = m.mask_audio(audio, g)
        lat = m.pretransform.encode(masked, generator=g)
        want = m.proj_out(m.proj_features_128(lat).transpose(1, 2))
    torch.testing.assert_close(tokens, want)
    again, _ = m(audio, "cpu", generator=torch.Generator().manual_seed(9))
    other, _ = m(audio, "cpu", generator=torch.Generator().manual_seed(10))
    assert torch.equal(tokens, again) and not torch.equal(tokens, other)


def test_audio_prompt_mask_switch(multi):
    m = multi.conditioners["audio_prompt"]
    audio = torch.randn(1, 2, TINY.audio_prompt_samples) * 0.3
    off, _ = m(audio, "cpu", generator=torch.Generator().manual_seed(1), mask=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lat = m.pretransform.encode(audio, generator=g)  # no mask draws before the VAE noise
        want = m.proj_out(m.proj_features_128(lat).transpose(1, 2))
    torch.testing.assert_close(off, want)
    on, _ = m(audio, "cpu", generator=torch.Generator().manual_seed(1), mask=True)
    assert not torch.allclose(on, off)


def test_audio_prompt_list_input_mono_and_padding(multi):
    m = multi.conditioners["audio_prompt"]
    n = TINY.audio_prompt_samples
    mono = torch.randn(1, n) * 0.3
    short = torch.randn(2, n - 1000) * 0.3
    got, _ = m([mono, short], "cpu", generator=torch.Generator().manual_seed(2), mask=False)
    batch = torch.stack([mono.repeat(2, 1), F.pad(short, (0, 1000))])
    want, _ = m(batch, "cpu", generator=torch.Generator().manual_seed(2), mask=False)
    torch.testing.assert_close(got, want)


def test_audio_prompt_wrong_length_or_shape(multi):
    m = multi.conditioners["audio_prompt"]
    with pytest.raises(ValueError, match="latent frames"):
        m(torch.randn(1, 2, 2048 * 3), "cpu", mask=False)
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        m(torch.randn(2, TINY.audio_prompt_samples), "cpu")


# ----------------------------------------------------------------------------- all three


def test_multi_any_subset_and_absent_modalities(multi):
    frames = _frames(2, seed=5)
    out = multi(text=["rain", "thunder"], video=frames, device="cpu", generator=torch.Generator().manual_seed(0))
    assert list(out) == ["video_prompt", "text_prompt", "audio_prompt"]
    for tokens, mask in out.values():
        assert tokens.shape == (2, 128, TINY.cond_dim) and mask.shape == (2, 128)
    # absent audio = silence of the prompt length, masked and encoded like any prompt
    silence = multi.empty_audio(2)
    explicit = multi.conditioners["audio_prompt"](silence, "cpu", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["audio_prompt"][0], explicit[0])
    # absent video = the learned empty feature; absent text = ""
    only_audio = multi(audio=torch.randn(1, 2, TINY.audio_prompt_samples), device="cpu")
    assert torch.equal(only_audio["video_prompt"][0][0], multi.conditioners["video_prompt"].empty_visual_feat[0])
    empty_text, _ = multi.conditioners["text_prompt"]([""], "cpu")
    torch.testing.assert_close(only_audio["text_prompt"][0], empty_text)
    one = multi(text="rain", device="cpu", generator=torch.Generator().manual_seed(0))
    assert one["text_prompt"][0].shape[0] == 1
    torch.testing.assert_close(one["text_prompt"][0], out["text_prompt"][0][:1])
    just_b = multi(batch_size=3, device="cpu")
    assert all(t.shape[0] == 3 for t, _ in just_b.values())


def test_multi_batch_errors(multi):
    with pytest.raises(ValueError, match="batch sizes differ"):
        multi(text=["a", "b"], video=_frames(1), device="cpu")
    with pytest.raises(ValueError, match="at least one modality"):
        multi(device="cpu")


# ----------------------------------------------------------------------------- media: resampling


@pytest.mark.parametrize("src, dst, freq", [(48000, 44100, 1000.0), (22050, 44100, 3000.0), (16000, 44100, 440.0)])
def test_resample_sine(src, dst, freq):
    t = torch.arange(src, dtype=torch.float64) / src
    x = torch.sin(2 * math.pi * freq * t)
    y = resample(x, src, dst)
    assert y.shape == (dst,)
    want = torch.sin(2 * math.pi * freq * torch.arange(dst, dtype=torch.float64) / dst)
    edge = dst // 50  # the signal starts and stops abruptly: skip the filter's reach
    assert (y - want)[edge:-edge].abs().max() < 3e-3


def test_resample_removes_what_the_new_rate_cannot_hold():
    src, dst = 48000, 22050
    t = torch.arange(src, dtype=torch.float64) / src
    y = resample(torch.sin(2 * math.pi * 15000 * t), src, dst)  # above the new Nyquist (11025)
    assert y[1000:-1000].abs().max() < 0.02


def test_resample_shapes_identity_and_errors():
    x = torch.randn(2, 3, 1001)
    assert resample(x, 44100, 44100) is x
    assert resample(x, 44100, 22050).shape == (2, 3, 501)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 44100)
    with pytest.raises(TypeError, match="floating"):
        resample(torch.ones(10, dtype=torch.int64), 8000, 16000)


# ----------------------------------------------------------------------------- media: files


def test_read_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio file not found"):
        read_audio(tmp_path / "nope.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(MediaError, match="cannot decode audio"):
        read_audio(bad)
    with pytest.raises(MediaError, match="not a file"):
        read_audio(tmp_path)


def test_load_audio_prompt_resamples_and_left_pads(tmp_path):
    path = tmp_path / "tone.wav"
    write_test_wav(path, seconds=0.5, sr=22050, channels=1)
    raw, sr = read_audio(path)
    assert raw.shape == (1, 11025) and sr == 22050
    prompt = load_audio_prompt(path, seconds_total=1.0)
    assert prompt.shape == (2, 44100) and prompt.dtype == torch.float32
    up = resample(raw, 22050, 44100)
    assert (prompt[:, : 44100 - up.shape[1]] == 0).all()
    torch.testing.assert_close(prompt[:, 44100 - up.shape[1]:], up.repeat(2, 1))


def test_load_audio_prompt_window_and_channels(tmp_path):
    import soundfile as sf

    path = tmp_path / "three.wav"
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (44100, 3)).astype("float32")
    sf.write(str(path), data, 44100, subtype="FLOAT")
    prompt = load_audio_prompt(path, seconds_start=0.25, seconds_total=0.5)
    torch.testing.assert_close(prompt, torch.from_numpy(data[11025:11025 + 22050, :2].T.copy()))


def _levels_of(video):
    return [round(v / 10) for v in video.float().mean(dim=(1, 2, 3)).tolist()]


def test_video_frame_pick_like_the_release(tmp_path):
    path = tmp_path / "gray.mkv"
    write_gray_video(path, [10 * i for i in range(12)], fps=10)
    video = load_video_frames(path, seconds_total=2, fps=5, size=32)
    assert video.shape == (10, 3, 32, 32) and video.dtype == torch.uint8
    # every ceil(10 / 5) = 2nd frame, then the last one repeated up to 5 fps x 2 s
    assert _levels_of(video) == [0, 2, 4, 6, 8, 10, 10, 10, 10, 10]
    late = load_video_frames(path, seconds_start=0.5, seconds_total=1, fps=5, size=32)
    assert _levels_of(late) == [5, 7, 9, 11, 11]
    full = load_video_frames(path, seconds_total=10)
    assert full.shape == (50, 3, 224, 224)


def test_resize_frames_is_antialiased_bilinear():
    frames = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    out = resize_frames(frames, 32)
    want = F.interpolate(frames.float(), size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 32, 32)
    assert (out.float() - want).abs().max() <= 0.5 + 1e-4
    assert resize_frames(out, 32) is out


def test_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="video file not found"):
        load_video_frames(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(MediaError, match="video file"):
        load_video_frames(bad)
    wav = tmp_path / "sound.wav"
    write_test_wav(wav)
    with pytest.raises(MediaError, match="no video stream"):
        load_video_frames(wav)
    short = tmp_path / "short.mkv"
    write_gray_video(short, [50, 60], fps=10)
    with pytest.raises(MediaError, match="no frames"):
        load_video_frames(short, seconds_start=5)
