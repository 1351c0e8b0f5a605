"""Stage 5, ``classifier``: the classifier of :mod:`audiox.distill.classifier` on procedural
labels. Its embedding is the FD's feature space; it scores the student selection and the
evaluation."""
from __future__ import annotations

import os
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ...model import AudioXModel
from ..classifier import ProceduralAudioClassifier, classifier_loss, labels_of
from ..evaluate import procedural_dataset, render, spectrograms
from .checkpoint import StepHook, stage_rng, train_stage
from .config import RecipeConfig
from .model_helpers import clip_samples

__all__ = ["run_classifier", "new_classifier"]


def new_classifier(seed: int) -> ProceduralAudioClassifier:
    """A fresh classifier whose initial weights depend on ``seed`` only, not on what ran
    before it in the process (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ProceduralAudioClassifier()


def run_classifier(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
                   on_step: Optional[StepHook]) -> tuple:
    """Classifier on clips of the model's length from both splits (a seed disjoint from the
    training and evaluation items) so that every note is a class it has heard. The clips'
    spectrograms are rendered once into ``DIR/classifier_data.safetensors``. Returns
    (state, classifier in eval mode, frozen)."""
    mc = model.cfg
    length = clip_samples(model)
    feats_path = os.path.join(out, "classifier_data.safetensors")
    if os.path.isfile(feats_path):
        data = load_file(feats_path)
    else:
        half = cfg.classifier_items // 2
        specs, kinds, semis = [], [], []
        for split, n in (("train", cfg.classifier_items - half), ("heldout", half)):
            ds = procedural_dataset(split, length, mc.sample_rate, cfg.seed + 7_777)
            audio, _, params = render(ds, range(n), length, progress, desc=f"classifier data ({split})")
            specs.append(spectrograms(audio, mc.sample_rate))
            kinds += [labels_of(p)[0] for p in params]
            semis += [labels_of(p)[1] for p in params]
        data = {"spec": torch.cat(specs), "kind": torch.tensor(kinds), "semitone": torch.tensor(semis)}
        save_file(data, feats_path)
    clf = new_classifier(cfg.seed)
    with torch.no_grad():
        clf.feat_mean.fill_(float(data["spec"].mean()))
        clf.feat_std.fill_(float(data["spec"].std().clamp_min(1e-3)))
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.classifier_lr, weight_decay=1e-4)
    clf.train()

    def step(k: int) -> dict:
        g = stage_rng(cfg.seed, "classifier", k)
        idx = torch.randint(0, data["spec"].shape[0], (cfg.classifier_batch,), generator=g)
        spec = data["spec"][idx]
        # Small random gain in log power (level invariance) and noise (generated audio is imperfect).
        spec = spec + 0.5 * torch.randn(spec.shape[0], 1, 1, generator=g) + 0.3 * torch.randn(spec.shape, generator=g)
        loss, kl, _ = classifier_loss(clf, spec, data["kind"][idx], data["semitone"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "kind_acc": float((kl.argmax(-1) == data["kind"][idx]).float().mean())}

    state = train_stage("classifier", out, cfg, {"classifier": clf}, opt, step, cfg.classifier_steps, progress,
                        on_step)
    return state, clf.eval().requires_grad_(False)
