"""Stage 3, ``text``: the ``tiny`` preset's small byte-level T5 stand-in learns to read the captions.

Every token's output has to carry kind, level, waveform, frequencies and count through a
linear read-out (:mod:`audiox.distill.text_reader`): what a pretrained T5 brings to the
release. A random stand-in leaves the teacher deaf to the stated frequency, because the
MMDiT reads its condition only through a linear map into adaLN. The encoder is frozen
afterwards and shipped in the export's ``t5-base/``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ...model import AudioXModel
from ..text_reader import TextReadout, check_text, random_caption_params, text_loss
from .checkpoint import RNG_STREAMS, StepHook, optimizer_step, train_stage
from .config import RecipeConfig
from .model_helpers import text_conditioner

__all__ = ["run_text"]


def run_text(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
             on_step: Optional[StepHook]) -> dict:
    """Train the T5 stand-in to read the captions (:mod:`.text_reader`), then freeze it."""
    text = text_conditioner(model)
    with torch.random.fork_rng(devices=[]):  # the read-out's init must not depend on what ran before
        torch.manual_seed(cfg.seed)
        head = TextReadout(model.cfg.dit.cond_token_dim)
    params = list(text.model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.0)
    text.model.train().requires_grad_(True)

    def step(k: int) -> dict:
        rng = np.random.default_rng([cfg.seed, RNG_STREAMS.index("text"), k])
        loss = text_loss(text, head, [random_caption_params(rng) for _ in range(cfg.text_batch)])
        # linear decay to a tenth, a function of the step
        return optimizer_step(opt, params, loss, cfg.text_lr * (1.0 - 0.9 * k / max(1, cfg.text_steps)))

    state = train_stage("text", out, cfg, {"t5": text.model, "head": head}, opt, step, cfg.text_steps, progress,
                        on_step)
    text.model.eval().requires_grad_(False)
    state["check"] = check_text(text, head)
    return state
