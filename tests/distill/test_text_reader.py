"""The text stage: caption targets, the held-out numbers it never reads, the read-out path,
and that training it makes the frequency readable."""
import math

import numpy as np
import pytest
import torch

from audiox_engine.audiox.distill.procedural import (HELDOUT_FREQUENCIES, HELDOUT_HIT_COUNTS, KINDS, ProceduralAudioConfig,
                                       ProceduralAudioDataset)
from audiox_engine.audiox.distill.recipe import RecipeConfig, build_model, text_conditioner
from audiox_engine.audiox.distill.text_reader import (TARGET_DIM, TextReadout, caption_targets, check_text, encode_with_grad,
                                        random_caption_params, read_frequency, text_loss)
from audiox_engine.audiox.distill.toy import torch_threads


@pytest.fixture(scope="module")
def text():
    return text_conditioner(build_model(RecipeConfig()))


def test_caption_targets_state_what_the_caption_says():
    t, m = caption_targets({"kind": "tone", "waveform": "square", "freq_hz": 880, "level": "loud"})
    assert t.shape == m.shape == (TARGET_DIM,)
    assert t[:4].tolist() == [1, 0, 0, 0] and t[4] == 1 and t[5:8].tolist() == [0, 1, 0]
    assert t[8] == pytest.approx(1.0) and t[9] == pytest.approx(1.0)  # an octave above 440 Hz
    assert m[:10].all() and not m[10:].any()
    t, m = caption_targets({"kind": "chirp", "direction": "falling", "start_hz": 1760, "end_hz": 220,
                            "level": "soft"})
    assert (t[8].item(), t[9].item(), t[10].item(), t[4].item()) == pytest.approx((2.0, -1.0, -1.0, -1.0))
    assert not m[5:8].any() and m[8:11].all() and not m[11]
    t, m = caption_targets({"kind": "drums", "count": 6, "level": "loud"})
    assert t[11] == pytest.approx(1.0) and m[11] and not m[5:11].any()


def test_random_captions_never_state_held_out_values_and_are_seeded():
    rng = np.random.default_rng(1)
    params = [random_caption_params(rng) for _ in range(3000)]
    freqs = [p[k] for p in params for k in ("freq_hz", "start_hz", "end_hz") if k in p]
    assert len(freqs) > 1000 and not set(freqs) & set(HELDOUT_FREQUENCIES)
    assert len(set(freqs)) > 500  # any whole number of Hz, not only the notes
    assert not {p.get("count") for p in params} & set(HELDOUT_HIT_COUNTS)
    assert {p["kind"] for p in params} == set(KINDS)
    again = [random_caption_params(np.random.default_rng(1)) for _ in range(1)]
    assert again[0] == params[0]


def test_encode_with_grad_matches_the_conditioner(text):
    captions = ["a loud sine tone at 440 Hz", "three kick drum hits"]
    want, want_mask = text(captions, device="cpu")
    got, mask = encode_with_grad(text, captions)
    n = mask.shape[1]
    assert n < want.shape[1]  # padding trimmed
    assert torch.equal(mask, want_mask[:, :n]) and not want_mask[:, n:].any()
    torch.testing.assert_close(got, want[:, :n], rtol=1e-5, atol=1e-5)


def test_read_frequency_known_answer(text):
    head = TextReadout(64)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.zero_()
        head.proj.bias[8] = math.log2(523 / 440)
    hz = read_frequency(text, head, ["a loud sine tone at 110 Hz", "saw wave, 1661 Hz, soft"])
    torch.testing.assert_close(hz, torch.full((2,), 523.0), rtol=1e-5, atol=0)
    check = check_text(text, head)
    assert check["captions"] == len(HELDOUT_FREQUENCIES) * 12
    assert check["heldout_median_semitones"] > 1.0  # a constant cannot read held-out notes


def test_training_makes_the_caption_readable():
    text = text_conditioner(build_model(RecipeConfig()))
    torch.manual_seed(0)
    head = TextReadout(64)
    params = list(text.model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-3)
    text.model.train().requires_grad_(True)
    rng = np.random.default_rng(0)
    fixed = [random_caption_params(np.random.default_rng(99)) for _ in range(32)]
    with torch_threads(2):
        with torch.no_grad():
            before = text_loss(text, head, fixed).item()
        for _ in range(60):
            loss = text_loss(text, head, [random_caption_params(rng) for _ in range(16)])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after = text_loss(text, head, fixed).item()
    assert after < 0.6 * before, (before, after)
    # The real held-out captions are captions this stage can parse.
    ds = ProceduralAudioDataset(ProceduralAudioConfig(split="heldout", num_items=8))
    for i in range(8):
        p = ds.sample_params(i)
        assert caption_targets(p)[1].sum() >= 5
