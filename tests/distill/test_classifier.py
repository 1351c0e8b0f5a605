"""The classifier and metrics of audiox.distill.classifier on cases with known answers: FD,
frequency estimates, the log spectrogram, labels, and a classifier fitted to procedural data."""
import math

import numpy as np
import pytest
import torch

from audiox_engine.audiox.distill.classifier import (NUM_SEMITONES, ProceduralAudioClassifier, classifier_loss,
                                                     classify, estimate_frequency, frechet_distance, labels_of,
                                                     log_frequency_filterbank, log_spectrogram, semitone_error)
from audiox_engine.audiox.distill.evaluate import audio_metrics, procedural_dataset, render, spectrograms
from audiox_engine.audiox.distill.procedural import NOTE_FREQUENCIES
from audiox_engine.audiox.distill.toy import torch_threads

SR = 44100


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.randn(6, generator=g)
    # Same covariance: only the means differ.
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)
    # b = 2 (a - mean): S_b = 4 S_a, so tr(S + 4S - 2 (4 S^2)^1/2) = tr(S); plus |mu_a|^2.
    b = 2 * (a - a.mean(0))
    want = float(torch.trace(torch.cov(a.T.double())) + a.double().mean(0).square().sum())
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        frechet_distance(a, a[:, :3])


@pytest.mark.parametrize("freq", [110.0, 440.0, 523.251, 1234.5])
def test_frequency_estimate_of_a_pure_tone(freq):
    t = torch.arange(int(0.5 * SR), dtype=torch.float64) / SR
    tone = torch.sin(2 * math.pi * freq * t + 0.3)
    est = estimate_frequency(torch.stack([tone, 0.5 * tone]), SR)
    assert semitone_error(est, freq) < 0.02


def test_frequency_estimate_of_procedural_tones_and_semitone_error():
    assert semitone_error(880.0, 440.0) == pytest.approx(12.0)
    assert semitone_error(440.0, 880.0) == pytest.approx(12.0)
    assert semitone_error(440.0 * 2 ** (1 / 12), 440.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        semitone_error(0.0, 440.0)
    ds = procedural_dataset("heldout", 24576, SR, seed=3, num_items=200)
    tones = [i for i in range(200) if ds.sample_params(i)["kind"] == "tone"][:6]
    assert {ds.sample_params(i)["waveform"] for i in tones} - {"sine"}, "want square / saw among the tones"
    for i in tones:
        item = ds[i]
        assert semitone_error(estimate_frequency(item["audio"], SR), item["params"]["freq_hz"]) < 0.1


def test_spectrogram_puts_a_tone_in_its_band():
    fb = log_frequency_filterbank(SR)
    assert torch.isfinite(fb).all() and (fb >= 0).all()
    torch.testing.assert_close(fb.sum(1), torch.ones(fb.shape[0]))
    t = torch.arange(SR // 2) / SR
    for k in (0, 17, 40):  # notes: A2, D4, C#6; the bands are half-semitones from 55 Hz
        f = NOTE_FREQUENCIES[k]
        spec = log_spectrogram((0.1 * torch.sin(2 * math.pi * f * t))[None, None].expand(1, 2, -1), SR)
        band = int(spec[0].mean(-1).argmax())
        assert abs(band - (24 + 2 * k)) <= 1, (f, band)
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        log_spectrogram(torch.zeros(2), SR)


def test_classifier_learns_kind_and_note_and_metrics_on_data():
    with torch_threads(1):
        length = 24576
        ds = procedural_dataset("train", length, SR, seed=11)
        audio, _, params = render(ds, range(48), length)
        spec = spectrograms(audio, SR)
        kind = torch.tensor([labels_of(p)[0] for p in params])
        semi = torch.tensor([labels_of(p)[1] for p in params])
        torch.manual_seed(0)
        clf = ProceduralAudioClassifier()
        clf.feat_mean.fill_(float(spec.mean()))
        clf.feat_std.fill_(float(spec.std()))
        opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
        for _ in range(60):
            loss, _, _ = classifier_loss(clf, spec, kind, semi)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out = classify(clf, spec)
        assert out["embedding"].shape == (48, 64) and out["semitone"].max() < NUM_SEMITONES
        assert (out["kind"] == kind).float().mean() >= 0.9  # fits its training set
        tonal = semi >= 0
        assert (out["semitone"][tonal] == semi[tonal]).float().mean() >= 0.8

        # The data scored against itself: no frequency error, FD 0, the kinds it was fitted on.
        m = audio_metrics(clf, audio, params, SR, out["embedding"])
        assert m["fd"] == pytest.approx(0.0, abs=1e-6)
        assert m["median_semitone_error"] < 0.1 and m["num_tones"] == int(tonal.sum())
        assert m["kind_accuracy"] == pytest.approx(float((out["kind"] == kind).float().mean()))
        # Every tone an octave up: the median error is 12 semitones.
        up = []
        for p, a in zip(params, audio):
            if p["kind"] == "tone":
                t = torch.arange(length) / SR
                a = torch.sin(2 * math.pi * 2 * p["freq_hz"] * t).expand(2, -1)
            up.append(a)
        m_up = audio_metrics(clf, torch.stack(up), params, SR, out["embedding"])
        assert m_up["median_semitone_error"] == pytest.approx(12.0, abs=0.1)
        with pytest.raises(ValueError, match="prompts"):
            audio_metrics(clf, audio[:3], params, SR, out["embedding"])
        bad = audio.clone()
        bad[0, 0, 0] = float("nan")
        with pytest.raises(FloatingPointError):
            audio_metrics(clf, bad, params, SR, out["embedding"])


def test_labels_of_procedural_items():
    assert labels_of({"kind": "tone", "freq_hz": NOTE_FREQUENCIES[7]}) == (0, 7)
    assert labels_of({"kind": "noise", "count": 3}) == (2, -1)
    assert [labels_of({"kind": "tone", "freq_hz": f})[1] for f in NOTE_FREQUENCIES] == list(range(len(NOTE_FREQUENCIES)))
    assert labels_of({"kind": "tone", "freq_hz": 451})[1] == 24 and labels_of({"kind": "tone", "freq_hz": 425})[1] == 23
    assert np.all(np.diff(NOTE_FREQUENCIES) > 0)
