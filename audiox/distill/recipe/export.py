"""Stage 8, ``export``: the shipped pipeline, ``AudioXPipeline.save_pretrained(DIR/export)``,
refused over :data:`EXPORT_LIMIT_BYTES`; and the rounding of the shipped parameters to the
export's storage dtype, which runs before the evaluation."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..._io import atomic_directory
from ...model import AudioXModel
from ...pipeline import WEIGHT_DTYPES, AudioXPipeline, _Source
from .config import RecipeConfig
from .model_helpers import build_model, text_conditioner

__all__ = ["EXPORT_LIMIT_BYTES", "round_shipped", "export_pipeline"]

EXPORT_LIMIT_BYTES = 20_000_000  # the 20 MB, decimal


@torch.no_grad()
def round_shipped(cfg: RecipeConfig, model: AudioXModel, student_dit: nn.Module) -> None:
    """Round, in place, every parameter that :func:`export_pipeline` stores in
    ``model.safetensors`` to ``cfg.export_dtype`` (kept as float32; buffers are stored as
    float32): what is evaluated is then exactly what loads from the export. Idempotent (a
    resumed run rounds again). The T5 is not a registered submodule, so it is left as is."""
    dtype = WEIGHT_DTYPES[cfg.export_dtype]
    for module in (model.conditioner, model.pretransform, model.maf_block, student_dit):
        for p in module.parameters():
            p.copy_(p.to(dtype).to(p.dtype))


def export_pipeline(cfg: RecipeConfig, out: str, model: AudioXModel, student_dit: nn.Module, summary: str):
    """Student DiT + trained MAF + VAE + trained T5 + the frozen conditioners -> ``DIR/export``
    via ``AudioXPipeline.save_pretrained``; returns (path, bytes), raises if it is over 20 MB."""
    export = build_model(cfg)  # same seed: the same frozen conditioners
    text_conditioner(export).model.load_state_dict(text_conditioner(model).model.state_dict())
    export.pretransform.load_state_dict(model.pretransform.state_dict())
    export.maf_block.load_state_dict(model.maf_block.state_dict())
    export.dit.load_state_dict(student_dit.state_dict())
    pipe = AudioXPipeline(export, source=_Source(export.cfg.name, True, summary))
    path = os.path.join(out, "export")
    with atomic_directory(path) as tmp:
        pipe.save_pretrained(tmp, description=summary, weights_dtype=WEIGHT_DTYPES[cfg.export_dtype])
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp) for f in fs)
        if size > EXPORT_LIMIT_BYTES:
            raise RuntimeError(f"export is {size / 1e6:.1f} MB, over the {EXPORT_LIMIT_BYTES / 1e6:.0f} MB limit")
    return path, size
