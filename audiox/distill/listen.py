"""A listening sheet for a trained pipeline: ``python -m audiox_engine.audiox.distill.listen PIPELINE_DIR OUT_DIR``.

Generates a fixed list of prompts (train-split and held-out numbers, every kind), writes
one WAV per prompt, and a PNG of their spectrograms titled with the prompt, the pitch
heard by :func:`~audiox.distill.classifier.estimate_frequency` (tones) and, when a trained
classifier is given, the kind it hears. It is what a person checks by ear, put where a
reviewer can also check it by eye; ``listen.json`` keeps the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Optional, Sequence

import torch

from .classifier import KINDS, ProceduralAudioClassifier, classify, estimate_frequency, semitone_error
from .evaluate import spectrograms

DEFAULT_PROMPTS = (
    "a loud square tone at 523 Hz",       # held-out note (the README's prompt)
    "a loud sine tone at 440 Hz",         # train note
    "a soft saw tone at 220 Hz",          # held-out note
    "a loud sine tone at 1047 Hz",        # train note
    "three kick drum hits",
    "five kick drum hits",                # held-out count
    "two loud bursts of white noise",
    "a loud rising chirp from 220 Hz to 880 Hz",
)


def stated_frequency(prompt: str) -> Optional[float]:
    """The frequency a tone prompt asks for ("... tone at 523 Hz"), else None."""
    m = re.search(r"tone at (\d+) Hz", prompt)
    return float(m.group(1)) if m else None


def listen(pipe, out_dir: str, prompts: Sequence[str] = DEFAULT_PROMPTS, seed: int = 0,
           classifier: Optional[ProceduralAudioClassifier] = None, mode: str = "turbo",
           steps: Optional[int] = None, cfg_scale: Optional[float] = None) -> list:
    """Generate every prompt with ``pipe`` and write ``out_dir/{NN}.wav``, ``listen.png`` and
    ``listen.json``. Returns the per-prompt records."""
    from ..media import write_wav

    os.makedirs(out_dir, exist_ok=True)
    records, waves = [], []
    for i, prompt in enumerate(prompts):
        wave, sr = pipe(prompt, mode=mode, steps=steps, cfg_scale=cfg_scale, generator=seed + i)
        wave = wave[0]
        path = os.path.join(out_dir, f"{i:02d}.wav")
        write_wav(path, wave, sr)
        rec = {"prompt": prompt, "wav": os.path.basename(path), "peak_hz": estimate_frequency(wave, sr)}
        asked = stated_frequency(prompt)
        if asked is not None:
            rec["semitone_error"] = semitone_error(rec["peak_hz"], asked)
        if classifier is not None:
            out = classify(classifier, spectrograms(wave[None], sr))
            rec["heard_kind"] = KINDS[int(out["kind"][0])]
        records.append(rec)
        waves.append((wave, sr))
    with open(os.path.join(out_dir, "listen.json"), "w") as f:
        json.dump(records, f, indent=2)
    plot_listen(waves, records, os.path.join(out_dir, "listen.png"))
    return records


def plot_listen(waves: list, records: list, path: str, max_hz: float = 4000.0) -> None:
    """One log-magnitude spectrogram (mono mix, 0..``max_hz``) per prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    rows = (len(waves) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    for ax, (wave, sr), rec in zip(axes.flat, waves, records):
        x = wave.mean(0)
        n_fft = 4096
        spec = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
        db = 20 * torch.log10(spec.clamp_min(1e-6))
        top = int(max_hz * n_fft / sr)
        ax.imshow(db[:top].numpy(), origin="lower", aspect="auto", cmap="magma",
                  extent=(0, x.numel() / sr, 0, top * sr / n_fft), vmin=float(db.max()) - 80, vmax=float(db.max()))
        title = rec["prompt"]
        extra = [f"peak {rec['peak_hz']:.0f} Hz"]
        if "semitone_error" in rec:
            extra.append(f"{rec['semitone_error']:.2f} st off")
        if "heard_kind" in rec:
            extra.append(f"heard: {rec['heard_kind']}")
        ax.set_title(f"{title}\n({', '.join(extra)})", fontsize=9)
        ax.set_ylabel("Hz")
    for ax in list(axes.flat)[len(waves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m audiox_engine.audiox.distill.listen", description=__doc__.splitlines()[0])
    p.add_argument("pipeline", help="a pipeline directory (save_pretrained layout), or a preset name")
    p.add_argument("out", help="folder for the WAVs, listen.png and listen.json")
    p.add_argument("--classifier", help="a recipe's classifier/classifier.safetensors, to name the kind heard")
    p.add_argument("--mode", choices=("turbo", "teacher"), default="turbo")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from safetensors.torch import load_model

    from ..pipeline import AudioXPipeline

    pipe = (AudioXPipeline.from_pretrained(args.pipeline) if os.path.isdir(args.pipeline)
            else AudioXPipeline.from_preset(args.pipeline))
    clf = None
    if args.classifier:
        clf = ProceduralAudioClassifier()
        load_model(clf, args.classifier)
        clf.eval()
    with torch.no_grad():
        records = listen(pipe, args.out, seed=args.seed, classifier=clf, mode=args.mode, steps=args.steps,
                         cfg_scale=args.cfg_scale)
    for r in records:
        err = f"{r['semitone_error']:5.2f} st" if "semitone_error" in r else "        "
        print(f"{r['prompt']:<40} peak {r['peak_hz']:7.1f} Hz {err} {r.get('heard_kind', '')}")
    print(f"-> {args.out}/listen.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
