"""Procedural captioned audio: determinism, captions that match the audio, held-out split."""
import re

import numpy as np
import pytest
import torch

from audiox_engine.audiox.distill.procedural import (HELDOUT_BANDS, HELDOUT_FREQUENCIES, HELDOUT_HIT_COUNTS, LEVELS,
                                       NOTE_FREQUENCIES, NUMBER_WORDS, TRAIN_FREQUENCIES, ProceduralAudioConfig,
                                       ProceduralAudioDataset)


def make(split="train", seed=0, kinds=("tone", "drums", "noise", "chirp"), duration_s=1.0, num_items=64,
         frequencies="notes"):
    return ProceduralAudioDataset(ProceduralAudioConfig(duration_s=duration_s, num_items=num_items, seed=seed,
                                                        split=split, kinds=kinds, frequencies=frequencies))


def first_of_kind(ds, kind, count=1):
    out = [i for i in range(len(ds)) if ds.sample_params(i)["kind"] == kind][:count]
    assert len(out) == count, f"fewer than {count} items of kind {kind}"
    return out


def test_deterministic_and_random_access():
    a, b = make(seed=3), make(seed=3)
    for i in (5, 0, 17, 5):
        x, y = a[i], b[i]
        assert x["caption"] == y["caption"]
        assert torch.equal(x["audio"], y["audio"])
    # Different index or seed gives different content.
    assert not torch.equal(a[1]["audio"], a[2]["audio"]) or a[1]["caption"] != a[2]["caption"]
    c = make(seed=4)
    assert any(c[i]["caption"] != a[i]["caption"] for i in range(8))


def test_format_and_levels():
    ds = make(duration_s=0.75)
    for i in range(12):
        item = ds[i]
        audio = item["audio"]
        assert audio.shape == (2, int(round(0.75 * 44100)))
        assert audio.dtype == torch.float32
        assert torch.isfinite(audio).all()
        assert item["sample_rate"] == 44100
        level = item["params"]["level"]
        assert level in item["caption"] or item["params"]["kind"] == "drums"
        assert float(audio.abs().max()) == pytest.approx(LEVELS[level], rel=1e-5)
        assert (audio.abs().amax(dim=1) > 0).all(), "both channels carry signal"


@pytest.mark.parametrize("waveform,frequencies", [("sine", "notes"), ("square", "notes"), ("saw", "notes"),
                                                   ("square", "continuous")])
def test_tone_dominant_frequency_matches_caption(waveform, frequencies):
    ds = make(kinds=("tone",), num_items=200, frequencies=frequencies)
    idx = [i for i in range(len(ds)) if ds.sample_params(i)["waveform"] == waveform][:4]
    assert len(idx) == 4
    for i in idx:
        item = ds[i]
        m = re.search(r"(\d+) Hz", item["caption"])
        assert m, item["caption"]
        stated = int(m.group(1))
        mono = item["audio"].double().sum(0).numpy()
        spec = np.abs(np.fft.rfft(mono * np.hanning(mono.size)))
        freqs = np.fft.rfftfreq(mono.size, 1 / 44100)
        peak = freqs[spec.argmax()]
        assert abs(peak - stated) <= 1.5, f"{item['caption']}: FFT peak at {peak:.1f} Hz"


def test_chirp_direction_matches_caption():
    ds = make(kinds=("chirp",), num_items=16)
    for i in range(6):
        item = ds[i]
        lo_hz, hi_hz = [int(x) for x in re.findall(r"(\d+) ?(?:Hz)?", item["caption"].split("from")[1])[:2]]
        mono = item["audio"].double().sum(0).numpy()
        q = mono.size // 8
        def peak(seg):
            spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
            return np.fft.rfftfreq(seg.size, 1 / 44100)[spec.argmax()]
        first, last = peak(mono[q:2 * q]), peak(mono[-2 * q:-q])
        if "rising" in item["caption"]:
            assert first < last and lo_hz < hi_hz
        else:
            assert "falling" in item["caption"]
            assert first > last and lo_hz > hi_hz


@pytest.mark.parametrize("kind", ["drums", "noise"])
def test_event_count_matches_caption(kind):
    ds = make(kinds=(kind,), duration_s=2.0, num_items=16)
    for i in range(5):
        item = ds[i]
        words = item["caption"].split()
        n = 1 if ("single" in words or words[0] == "one") else NUMBER_WORDS.index(words[0])
        env = item["audio"].abs().sum(0).numpy()
        frame = 441  # 10 ms
        e = env[: env.size // frame * frame].reshape(-1, frame).max(1)
        active = e > 0.05 * e.max()
        onsets = int(np.sum(active[1:] & ~active[:-1]) + active[0])
        assert onsets == n, f"{item['caption']}: {onsets} onsets"


def test_heldout_split_is_disjoint():
    assert not set(HELDOUT_FREQUENCIES) & set(TRAIN_FREQUENCIES)
    train, held = make("train", num_items=300), make("heldout", num_items=300)
    for ds, freqs, counts_ok in ((train, set(TRAIN_FREQUENCIES), lambda n: n not in HELDOUT_HIT_COUNTS),
                                 (held, set(HELDOUT_FREQUENCIES), lambda n: n in HELDOUT_HIT_COUNTS)):
        for i in range(len(ds)):
            p = ds.sample_params(i)
            if p["kind"] == "tone":
                assert p["freq_hz"] in freqs
            elif p["kind"] == "chirp":
                assert p["start_hz"] in freqs and p["end_hz"] in freqs
            else:
                assert counts_ok(p["count"])


def test_continuous_train_frequencies_stay_outside_the_heldout_bands():
    """"continuous" train tones: many distinct whole frequencies over the note range, none
    nearer a held-out note than its neighbouring notes, reproducible; the held-out split and
    the chirps are unchanged by the mode."""
    cont = make(seed=3, kinds=("tone", "chirp"), num_items=400, frequencies="continuous")
    params = [cont.sample_params(i) for i in range(len(cont))]
    tones = [p["freq_hz"] for p in params if p["kind"] == "tone"]
    assert len(tones) > 150 and len(set(tones)) > 100  # a continuum, not 39 notes
    assert all(isinstance(f, int) and NOTE_FREQUENCIES[0] <= f <= NOTE_FREQUENCIES[-1] for f in tones)
    assert not [f for f in tones for lo, hi in HELDOUT_BANDS if lo < f < hi]
    assert [f for f in tones if f not in TRAIN_FREQUENCIES]  # off-note values do occur
    for lo, hi in HELDOUT_BANDS:  # each band is the open interval around one held-out note
        assert sum(lo < h < hi for h in HELDOUT_FREQUENCIES) == 1
    assert [cont.sample_params(i) for i in range(len(cont))] == params
    notes = make(seed=3, kinds=("tone", "chirp"), num_items=400)
    for i, p in enumerate(params):
        if p["kind"] == "chirp":
            assert p["start_hz"] in TRAIN_FREQUENCIES and p == notes.sample_params(i)
    held = [make("heldout", seed=3, kinds=("tone", "chirp"), num_items=400, frequencies=m)
            for m in ("notes", "continuous")]
    assert [held[0].sample_params(i) for i in range(50)] == [held[1].sample_params(i) for i in range(50)]


def test_bad_config_and_index():
    with pytest.raises(ValueError, match="split"):
        ProceduralAudioConfig(split="test")
    with pytest.raises(ValueError, match="kinds"):
        ProceduralAudioConfig(kinds=("piano",))
    with pytest.raises(ValueError, match="frequencies"):
        ProceduralAudioConfig(frequencies="random")
    with pytest.raises(IndexError):
        make(num_items=4).sample_params(4)
