"""Stage 4, ``teacher``: DiT + MAF as a rectified-flow model on the latents, with caption
conditioning and CFG dropout.

The null condition is zeros in place of the MAF output, as in the release's CFG. The
conditioners run under ``no_grad`` as released; the (absent) video / audio-prompt
conditioners stay frozen: with no such prompt they emit constants the MAF absorbs. The later
stages use an EMA of the weights (``cfg.teacher_ema_decay``), loaded into the model at the end.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F

from ...model import AudioXModel
from ..dmd import ema_update
from .checkpoint import StepHook, optimizer_step, stage_rng, train_stage
from .config import RecipeConfig
from .latents import load_latents
from .model_helpers import caption_condition

__all__ = ["run_teacher"]


def run_teacher(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
                on_step: Optional[StepHook]) -> dict:
    """Train ``model.dit`` and ``model.maf_block`` (``DIR/teacher/``), then load their EMAs into them."""
    latents, captions = load_latents(out)
    dit, maf = model.dit, model.maf_block
    params = list(dit.parameters()) + list(maf.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=0.01)
    dit.train().requires_grad_(True)
    maf.train().requires_grad_(True)

    def step(k: int) -> dict:
        g = stage_rng(cfg.seed, "teacher", k)
        idx = torch.randint(0, latents.shape[0], (cfg.teacher_batch,), generator=g)
        x0 = latents[idx]
        cond = caption_condition(model, [captions[i] for i in idx.tolist()], g)
        keep = (torch.rand(x0.shape[0], generator=g) >= cfg.cfg_dropout).to(cond.dtype)
        cond = cond * keep[:, None, None]  # CFG dropout: the null condition is all zeros
        t = torch.sigmoid(torch.randn(x0.shape[0], generator=g))  # logit-normal: most weight mid-path
        eps = torch.randn(x0.shape, generator=g)
        z = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
        loss = F.mse_loss(dit(z, t, cond), eps - x0)
        # linear warm-up, a function of the step so resume repeats it
        return optimizer_step(opt, params, loss, cfg.teacher_lr * min(1.0, (k + 1) / max(1, cfg.teacher_warmup)))

    dit_ema = copy.deepcopy(dit).requires_grad_(False)
    maf_ema = copy.deepcopy(maf).requires_grad_(False)

    def step_with_ema(k: int) -> dict:
        logs = step(k)
        ema_update(dit_ema, dit, cfg.teacher_ema_decay)
        ema_update(maf_ema, maf, cfg.teacher_ema_decay)
        return logs

    state = train_stage("teacher", out, cfg, {"dit": dit, "maf": maf, "dit_ema": dit_ema, "maf_ema": maf_ema}, opt,
                        step_with_ema, cfg.teacher_steps, progress, on_step)
    dit.load_state_dict(dit_ema.state_dict())
    maf.load_state_dict(maf_ema.state_dict())
    dit.eval().requires_grad_(False)
    maf.eval().requires_grad_(False)
    return state
