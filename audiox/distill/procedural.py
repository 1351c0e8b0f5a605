"""Procedural captioned audio, generated on the fly and reproducible from a seed.

Each item is a stereo clip at 44.1 kHz (configurable duration) with a caption built from a
template that states what is in it:

* tones: sine / square / saw at a stated frequency ("a loud square tone at 523 Hz");
* kick drums: a stated number of hits ("three kick drum hits");
* noise bursts: a stated number of white-noise bursts;
* chirps: rising or falling sweeps between two stated frequencies;

each at a soft (peak 0.1) or loud (peak 0.8) level. Item ``i`` depends only on
``(seed, split, i)``, so the set can be indexed in any order, by several workers, and
regenerated bit-for-bit. A held-out split uses parameter values never seen in training
(every fifth semitone for frequencies, and a held-out drum-hit count), to test whether a
model generalises to captions with unseen numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("tone", "drums", "noise", "chirp")
WAVEFORMS = ("sine", "square", "saw")
LEVELS = {"soft": 0.1, "loud": 0.8}
SPLITS = ("train", "heldout")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

# Semitones from A2 (110 Hz) to A6 (1760 Hz), rounded to whole Hz so captions state them exactly.
NOTE_FREQUENCIES = tuple(int(round(110.0 * 2 ** (k / 12))) for k in range(49))
HELDOUT_FREQUENCIES = tuple(f for k, f in enumerate(NOTE_FREQUENCIES) if k % 5 == 2)
TRAIN_FREQUENCIES = tuple(f for f in NOTE_FREQUENCIES if f not in HELDOUT_FREQUENCIES)
HIT_COUNTS = (1, 2, 3, 4, 5, 6)
HELDOUT_HIT_COUNTS = (5,)
TRAIN_HIT_COUNTS = tuple(n for n in HIT_COUNTS if n not in HELDOUT_HIT_COUNTS)
# Around each held-out note, the open interval between its two neighbouring notes: a
# "continuous" train set draws any whole frequency in the note range outside these, so no
# training tone is closer to a held-out note than the neighbouring notes (the nearest train
# values of the "notes" set) are.
HELDOUT_BANDS = tuple((NOTE_FREQUENCIES[k - 1], NOTE_FREQUENCIES[k + 1])
                      for k, f in enumerate(NOTE_FREQUENCIES) if f in HELDOUT_FREQUENCIES)
FREQUENCY_MODES = ("notes", "continuous")


def continuous_train_frequency(rng: np.random.Generator) -> int:
    """A whole frequency, log-uniform over the note range, outside every :data:`HELDOUT_BANDS`."""
    top = len(NOTE_FREQUENCIES) - 1
    while True:
        hz = int(round(NOTE_FREQUENCIES[0] * 2 ** (rng.uniform(0.0, top) / 12)))
        if not any(lo < hz < hi for lo, hi in HELDOUT_BANDS):
            return hz


@dataclass(frozen=True)
class ProceduralAudioConfig:
    sample_rate: int = 44100
    duration_s: float = 2.0
    num_items: int = 10_000
    seed: int = 0
    split: str = "train"
    kinds: tuple = KINDS
    frequencies: str = "notes"
    """Tone frequencies of the train split: "notes" (the 39 train notes) or "continuous"
    (:func:`continuous_train_frequency`, so a model learns pitch as a function of the stated
    number rather than 39 classes). The held-out split always uses the held-out notes;
    chirps always use notes."""

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.frequencies not in FREQUENCY_MODES:
            raise ValueError(f"frequencies must be one of {FREQUENCY_MODES}, got {self.frequencies!r}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate}")
        if not (0.5 <= self.duration_s <= 60.0):
            raise ValueError(f"duration_s must be in [0.5, 60] s, got {self.duration_s}")
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")


def _fade(n: int, sr: int, fade_s: float = 0.01) -> np.ndarray:
    """Raised-cosine fade in/out so clips start and end without clicks. (n,)"""
    env = np.ones(n)
    k = min(int(fade_s * sr), n // 2)
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k))
        env[:k] = ramp
        env[n - k:] = ramp[::-1]
    return env


def _periodic_wave(waveform: str, phase: np.ndarray, freq: float, sr: int) -> np.ndarray:
    """Band-limited (additive) waveform; phase in radians of the fundamental. (n,)"""
    if waveform == "sine":
        return np.sin(phase)
    max_harm = max(1, min(40, int(0.45 * sr / freq)))
    out = np.zeros_like(phase)
    for h in range(1, max_harm + 1):
        if waveform == "square" and h % 2 == 0:
            continue
        out += np.sin(h * phase) / h
    return out


def _kick(sr: int, length: int) -> np.ndarray:
    """One kick drum: a sine whose pitch falls from 150 to 45 Hz with a fast decay,
    at most 0.35 s, cut to ``length`` samples with a short fade-out. (length,)"""
    t = np.arange(min(int(0.35 * sr), length)) / sr
    f = 45.0 + 105.0 * np.exp(-t / 0.04)
    phase = 2 * np.pi * np.cumsum(f) / sr
    return np.sin(phase) * np.exp(-t / 0.09) * _fade(t.size, sr, 0.002)


def _event_slots(rng: np.random.Generator, count: int, n: int, event_len: int) -> tuple:
    """Start samples of ``count`` events in equal slots, with jitter, and the event length
    (at most 60% of a slot) so that events never overlap and are separated by silence
    of at least 15% of a slot (which keeps them countable)."""
    slot = n // count
    length = min(event_len, int(0.6 * slot))
    spare = slot - length - int(0.15 * slot)
    return [i * slot + int(rng.integers(0, spare + 1)) for i in range(count)], length


class ProceduralAudioDataset:
    """Indexable procedural set: ``ds[i] -> {"audio": (2, N) float32 tensor, "caption": str,
    "params": dict, "sample_rate": int}``."""

    def __init__(self, config: ProceduralAudioConfig = ProceduralAudioConfig()):
        self.config = config
        self.num_samples = int(round(config.duration_s * config.sample_rate))

    def __len__(self) -> int:
        return self.config.num_items

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, SPLITS.index(self.config.split), index])

    def _frequencies(self) -> tuple:
        return HELDOUT_FREQUENCIES if self.config.split == "heldout" else TRAIN_FREQUENCIES

    def sample_params(self, index: int) -> dict:
        """The parameters of item ``index`` (deterministic)."""
        if not (0 <= index < len(self)):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = self._rng(index)
        kind = self.config.kinds[int(rng.integers(len(self.config.kinds)))]
        level = ("soft", "loud")[int(rng.integers(2))]
        pan = float(rng.uniform(-0.6, 0.6))
        p = {"kind": kind, "level": level, "pan": pan, "template": int(rng.integers(2))}
        freqs = self._frequencies()
        if kind == "tone":
            p["waveform"] = WAVEFORMS[int(rng.integers(len(WAVEFORMS)))]
            if self.config.split == "train" and self.config.frequencies == "continuous":
                p["freq_hz"] = continuous_train_frequency(rng)
            else:
                p["freq_hz"] = int(freqs[int(rng.integers(len(freqs)))])
        elif kind in ("drums", "noise"):
            counts = HELDOUT_HIT_COUNTS if self.config.split == "heldout" else TRAIN_HIT_COUNTS
            p["count"] = int(counts[int(rng.integers(len(counts)))])
        else:  # chirp: two distinct frequencies at least an octave apart
            a, b = sorted(int(x) for x in rng.choice(len(freqs), 2, replace=False))
            if freqs[b] < 2 * freqs[a]:
                a, b = 0, len(freqs) - 1
            p["direction"] = ("rising", "falling")[int(rng.integers(2))]
            lo, hi = int(freqs[a]), int(freqs[b])
            p["start_hz"], p["end_hz"] = (lo, hi) if p["direction"] == "rising" else (hi, lo)
        return p

    @staticmethod
    def caption(p: dict) -> str:
        """Caption from the parameters by template."""
        level, tpl = p["level"], p["template"]
        if p["kind"] == "tone":
            if tpl == 0:
                return f"a {level} {p['waveform']} tone at {p['freq_hz']} Hz"
            return f"{p['waveform']} wave, {p['freq_hz']} Hz, {level}"
        if p["kind"] == "drums":
            n = p["count"]
            if n == 1:
                return f"a single {level} kick drum hit" if tpl == 0 else "one kick drum hit"
            return f"{NUMBER_WORDS[n]} kick drum hits" if tpl == 0 else f"{NUMBER_WORDS[n]} {level} kick drum hits"
        if p["kind"] == "noise":
            n = p["count"]
            noun = "burst" if n == 1 else "bursts"
            return f"{NUMBER_WORDS[n]} {level} {noun} of white noise"
        if tpl == 0:
            return f"a {level} {p['direction']} chirp from {p['start_hz']} Hz to {p['end_hz']} Hz"
        return f"a {p['direction']} sweep from {p['start_hz']} to {p['end_hz']} Hz, {level}"

    def render(self, p: dict, index: int) -> np.ndarray:
        """Audio for parameters ``p``, (2, N) float64, peak = the level's peak."""
        sr, n = self.config.sample_rate, self.num_samples
        rng = np.random.default_rng([self.config.seed, SPLITS.index(self.config.split), index, 1])
        t = np.arange(n) / sr
        if p["kind"] == "tone":
            phase0 = rng.uniform(0, 2 * np.pi)
            mono = _periodic_wave(p["waveform"], 2 * np.pi * p["freq_hz"] * t + phase0, p["freq_hz"], sr)
            mono *= _fade(n, sr)
        elif p["kind"] == "chirp":
            f = np.linspace(p["start_hz"], p["end_hz"], n)
            mono = np.sin(2 * np.pi * np.cumsum(f) / sr) * _fade(n, sr)
        elif p["kind"] == "drums":
            starts, length = _event_slots(rng, p["count"], n, int(0.35 * sr))
            kick = _kick(sr, length)
            mono = np.zeros(n)
            for s in starts:
                mono[s:s + kick.size] += kick
        else:
            starts, burst_len = _event_slots(rng, p["count"], n, int(0.12 * sr))
            mono = np.zeros(n)
            for s in starts:
                mono[s:s + burst_len] += rng.standard_normal(burst_len) * _fade(burst_len, sr, 0.005)
        mono = mono / max(np.abs(mono).max(), 1e-12)
        # Constant-power pan; then set the louder channel's peak to the level.
        angle = (p["pan"] + 1) * np.pi / 4
        stereo = np.stack([np.cos(angle) * mono, np.sin(angle) * mono])
        return stereo * (LEVELS[p["level"]] / np.abs(stereo).max())

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        index = int(index)
        if index < 0:
            index += len(self)
        p = self.sample_params(index)
        audio = torch.from_numpy(self.render(p, index).astype(np.float32))
        return {"audio": audio, "caption": self.caption(p), "params": p, "sample_rate": self.config.sample_rate}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]
