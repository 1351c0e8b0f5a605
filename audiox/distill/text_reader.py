"""Teach the tiny text encoder to read the procedural captions (the recipe's "text" stage).

The release conditions on T5-base, which arrives knowing language and numbers. The tiny
preset's stand-in is a random 2-layer byte-level T5: its outputs carry each byte and little
else. The MMDiT reads the conditioning only through a *linear* map over token positions
(``proj_mm_seq_len``) into its adaLN modulation, never by attention, so a digit string at a
caption-dependent position is very hard for it to turn into a pitch. Measured: a teacher
trained 3200 steps (27 min on 2 cores) on the random stand-in still put every tone at
140-350 Hz whatever the caption said (median error 15 semitones), and 400 more steps with the
pitch channel's loss weighted 16x, or with the T5 trained jointly, did not change that.

This stage gives the stand-in what pretraining gives T5: every token's output is trained to
carry what the whole caption says (kind, level, waveform, frequencies, direction, count)
through a linear read-out that is dropped afterwards; the encoder is then frozen again. The
frequencies it reads are random whole numbers of Hz with the held-out notes (and the held-out
hit count) left out, so held-out captions still test generalisation to unseen numbers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from .procedural import (HELDOUT_FREQUENCIES, HIT_COUNTS, HELDOUT_HIT_COUNTS, KINDS, WAVEFORMS,
                         ProceduralAudioDataset)

__all__ = ["TARGET_DIM", "caption_targets", "random_caption_params", "TextReadout", "text_loss",
           "read_frequency", "check_text"]

# Layout of the per-caption target: kind one-hot (4), level (1), waveform one-hot (3),
# first and last frequency in octaves from 440 Hz (2), direction (1), hit count (1).
_KIND, _LEVEL, _WAVE, _FREQ, _DIR, _COUNT = 0, 4, 5, 8, 10, 11
TARGET_DIM = 12
FREQ_RANGE_HZ = (100, 2000)
_TRAIN_COUNTS = tuple(n for n in HIT_COUNTS if n not in HELDOUT_HIT_COUNTS)


def _octaves(hz: float) -> float:
    return math.log2(hz / 440.0)


def caption_targets(p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameters of a procedural item -> (target (TARGET_DIM,), mask (TARGET_DIM,)): what the
    caption says, with the mask on the entries the caption states."""
    target, mask = torch.zeros(TARGET_DIM), torch.zeros(TARGET_DIM)
    target[_KIND + KINDS.index(p["kind"])] = 1.0
    mask[_KIND:_KIND + len(KINDS)] = 1.0
    target[_LEVEL], mask[_LEVEL] = (1.0 if p["level"] == "loud" else -1.0), 1.0
    if p["kind"] == "tone":
        target[_WAVE + WAVEFORMS.index(p["waveform"])] = 1.0
        mask[_WAVE:_WAVE + len(WAVEFORMS)] = 1.0
        target[_FREQ] = target[_FREQ + 1] = _octaves(p["freq_hz"])
        mask[_FREQ:_FREQ + 2] = 1.0
    elif p["kind"] == "chirp":
        target[_FREQ], target[_FREQ + 1] = _octaves(p["start_hz"]), _octaves(p["end_hz"])
        target[_DIR] = 1.0 if p["direction"] == "rising" else -1.0
        mask[_FREQ:_DIR + 1] = 1.0
    else:
        target[_COUNT], mask[_COUNT] = (p["count"] - 3.5) / 2.5, 1.0
    return target, mask


def _random_hz(rng: np.random.Generator) -> int:
    while True:
        hz = int(rng.integers(*FREQ_RANGE_HZ))
        if hz not in HELDOUT_FREQUENCIES:
            return hz


def random_caption_params(rng: np.random.Generator) -> dict:
    """Parameters as :meth:`ProceduralAudioDataset.sample_params` makes them, but with any
    whole frequency in 100-1999 Hz except the held-out notes, and train hit counts only."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    p = {"kind": kind, "level": ("soft", "loud")[int(rng.integers(2))], "template": int(rng.integers(2))}
    if kind == "tone":
        p["waveform"] = WAVEFORMS[int(rng.integers(len(WAVEFORMS)))]
        p["freq_hz"] = _random_hz(rng)
    elif kind in ("drums", "noise"):
        p["count"] = int(_TRAIN_COUNTS[int(rng.integers(len(_TRAIN_COUNTS)))])
    else:
        lo, hi = sorted((_random_hz(rng), _random_hz(rng)))
        p["direction"] = ("rising", "falling")[int(rng.integers(2))]
        p["start_hz"], p["end_hz"] = (lo, hi) if p["direction"] == "rising" else (hi, lo)
    return p


class TextReadout(nn.Module):
    """Linear read-out of the caption's target from every token of the text conditioner."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, TARGET_DIM)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(tokens)


def encode_with_grad(text_conditioner, captions) -> tuple[torch.Tensor, torch.Tensor]:
    """The T5 conditioner's forward (tokens with padding zeroed, mask) with autograd on."""
    ids, mask = text_conditioner.tokenizer(list(captions), text_conditioner.max_length)
    keep = int(mask.sum(1).max())  # padding is masked out of attention: trimming it changes nothing
    ids, mask = ids[:, :keep], mask[:, :keep]
    hidden = text_conditioner.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return text_conditioner.proj_out(hidden) * mask.unsqueeze(-1).float(), mask


def text_loss(text_conditioner, head: TextReadout, params: list) -> torch.Tensor:
    """Masked mean squared error of every real token's read-out against its caption's target."""
    captions = [ProceduralAudioDataset.caption(p) for p in params]
    target, tmask = (torch.stack(x) for x in zip(*(caption_targets(p) for p in params)))
    tokens, mask = encode_with_grad(text_conditioner, captions)
    weight = mask.float()[..., None] * tmask[:, None]  # (B, L, TARGET_DIM): real token x stated entry
    return ((head(tokens) - target[:, None]).pow(2) * weight).sum() / weight.sum().clamp_min(1.0)


@torch.no_grad()
def read_frequency(text_conditioner, head: TextReadout, captions) -> torch.Tensor:
    """Frequency (Hz) the read-out finds in each caption: mean over its real tokens."""
    tokens, mask = text_conditioner(list(captions), device="cpu")
    pred = (head(tokens) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return 440.0 * torch.pow(2.0, pred[:, _FREQ])


def check_text(text_conditioner, head: TextReadout) -> dict:
    """Held-out tone captions (every held-out note, both templates, each waveform and level):
    median and worst semitone error of the frequency read from the caption."""
    params = [{"kind": "tone", "waveform": w, "freq_hz": f, "level": lv, "template": tpl}
              for f in HELDOUT_FREQUENCIES for w in WAVEFORMS for lv in ("soft", "loud") for tpl in (0, 1)]
    hz = read_frequency(text_conditioner, head, [ProceduralAudioDataset.caption(p) for p in params])
    truth = torch.tensor([float(p["freq_hz"]) for p in params])
    err = (12 * torch.log2(hz / truth)).abs()
    return {"heldout_median_semitones": float(err.median()), "heldout_max_semitones": float(err.max()),
            "captions": len(params)}
