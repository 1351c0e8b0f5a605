"""Evaluation of generated procedural audio with the classifier of :mod:`.classifier`.

For a set of prompts (captions of held-out items) and the audio a system made for them:

* ``fd``: Frechet distance of classifier embeddings to a reference set of real held-out
  clips (other items than the prompts', so that the data's own row shows the floor);
* ``kind_accuracy``: how often the classifier hears the kind of sound the prompt asks for;
* ``semitone_accuracy``: for tone prompts, how often it hears the asked note exactly;
* ``median_semitone_error``: for tone prompts, the median |12 log2(f_est / f_asked)| of the
  spectral-peak frequency estimate (no classifier involved).
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .classifier import (ProceduralAudioClassifier, classify, estimate_frequency, frechet_distance, labels_of,
                         log_frequency_filterbank, log_spectrogram, semitone_error)
from .procedural import ProceduralAudioConfig, ProceduralAudioDataset

METRIC_KEYS = ("fd", "kind_accuracy", "semitone_accuracy", "median_semitone_error", "num_items", "num_tones")


def fit_length(audio: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``num_samples``."""
    if audio.shape[-1] >= num_samples:
        return audio[..., :num_samples]
    return torch.nn.functional.pad(audio, (0, num_samples - audio.shape[-1]))


def procedural_dataset(split: str, num_samples: int, sample_rate: int, seed: int, num_items: int = 100_000,
                       frequencies: str = "notes"):
    """A procedural set whose clips are at least ``num_samples`` long (crop with :func:`fit_length`)."""
    duration = max(0.5, num_samples / sample_rate + 1e-3)
    return ProceduralAudioDataset(ProceduralAudioConfig(sample_rate=sample_rate, duration_s=duration,
                                                        num_items=num_items, seed=seed, split=split,
                                                        frequencies=frequencies))


def render(ds: ProceduralAudioDataset, indices: Sequence[int], num_samples: int, progress: bool = False,
           desc: str = "render") -> tuple:
    """Clips (N, 2, num_samples), captions and params of items ``indices``."""
    audio, captions, params = [], [], []
    for i in tqdm(indices, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        item = ds[int(i)]
        audio.append(fit_length(item["audio"], num_samples))
        captions.append(item["caption"])
        params.append(item["params"])
    return torch.stack(audio), captions, params


def spectrograms(audio: torch.Tensor, sample_rate: int, batch_size: int = 16) -> torch.Tensor:
    """(N, C, L) -> classifier inputs (N, bands, T), in batches to bound memory."""
    fb = log_frequency_filterbank(sample_rate)
    return torch.cat([log_spectrogram(audio[i:i + batch_size], sample_rate, filterbank=fb)
                      for i in range(0, audio.shape[0], batch_size)])


def audio_metrics(classifier: ProceduralAudioClassifier, audio: torch.Tensor, params: Sequence[dict],
                  sample_rate: int, reference_embedding: torch.Tensor) -> dict:
    """The metrics of one system's clips (N, C, L) made for prompts with ``params``."""
    if audio.shape[0] != len(params):
        raise ValueError(f"{audio.shape[0]} clips for {len(params)} prompts")
    if not torch.isfinite(audio).all():
        raise FloatingPointError("generated audio has non-finite values")
    out = classify(classifier, spectrograms(audio, sample_rate))
    kinds = torch.tensor([labels_of(p)[0] for p in params])
    semis = torch.tensor([labels_of(p)[1] for p in params])
    tonal = semis >= 0
    errors = [semitone_error(estimate_frequency(audio[i], sample_rate), params[i]["freq_hz"])
              for i in torch.nonzero(tonal).flatten().tolist()]
    return {
        "fd": frechet_distance(out["embedding"], reference_embedding),
        "kind_accuracy": float((out["kind"] == kinds).float().mean()),
        "semitone_accuracy": float((out["semitone"][tonal] == semis[tonal]).float().mean()) if tonal.any() else None,
        "median_semitone_error": float(np.median(errors)) if errors else None,
        "num_items": int(audio.shape[0]),
        "num_tones": int(tonal.sum()),
    }


def plot_metrics(metrics: dict, path: str) -> None:
    """Bar charts of FD, kind accuracy and median semitone error per system (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics)
    panels = (("fd", "Frechet distance (classifier emb.)"), ("kind_accuracy", "kind accuracy"),
              ("median_semitone_error", "median |freq error| (semitones), tones"))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (key, title) in zip(axes, panels):
        vals = [metrics[n].get(key) for n in names]
        ax.bar(range(len(names)), [np.nan if v is None else v for v in vals],
               color=["tab:gray" if n.startswith(("data", "vae")) else "tab:blue" if n.startswith("teacher")
                      else "tab:orange" for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def quality_markdown(systems: dict) -> str:
    """The recipe's per-system metrics (``metrics.json``'s ``"systems"``) as a Markdown table,
    with the issue's two FD ratios for the 4-step student when its references are there."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = ["| system | FD (classifier emb.) | kind accuracy | note accuracy (tones) | median tone error (semitones) | items (tones) | seconds |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in systems.items():
        rows.append(f"| {name} | {num(m['fd'], '.3f')} | {num(m['kind_accuracy'], '.2f')} | "
                    f"{num(m['semitone_accuracy'], '.2f')} | {num(m['median_semitone_error'], '.2f')} | "
                    f"{m['num_items']} ({m['num_tones']}) | {num(m.get('seconds'), '.1f')} |")
    s4 = systems.get("student_4")
    notes = []
    for ref, bar in (("teacher_50", 1.3), ("teacher_4", 0.5)):
        if s4 is not None and ref in systems and systems[ref]["fd"] > 0:
            ratio = s4["fd"] / systems[ref]["fd"]
            notes.append(f"student_4 FD / {ref} FD = {ratio:.2f} (bar <= {bar}: {'met' if ratio <= bar else 'NOT met'})")
    if s4 is not None and s4["median_semitone_error"] is not None:
        err = s4["median_semitone_error"]
        notes.append(f"student_4 median tone error {err:.2f} semitones (bar <= 1: {'met' if err <= 1 else 'NOT met'})")
    return "\n".join(rows) + ("\n\n" + "; ".join(notes) + "." if notes else "") + "\n"


def write_metrics(metrics: dict, extra: Optional[dict], path: str) -> None:
    with open(path, "w") as f:
        json.dump({"systems": metrics, **(extra or {})}, f, indent=2)


__all__ = ["METRIC_KEYS", "audio_metrics", "fit_length", "plot_metrics", "procedural_dataset", "quality_markdown",
           "render", "spectrograms", "write_metrics"]
