"""AudioX-Turbo in plain PyTorch: the eager reference every fast path is checked against.

Submodules: ``config`` (presets, official JSON), ``dit`` (MMDiT), ``maf`` (MAF block),
``sampling`` (Turbo and teacher samplers), ``vae`` (Oobleck), ``conditioners`` (T5, CLIP
video, audio prompt), ``model`` (everything under the official key names), ``pipeline``
(``AudioXPipeline``), ``checkpoint`` (safe loading), ``distill`` (DMD training).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "AudioXPipeline": "audiox_engine.audiox.pipeline",
    "AudioXModel": "audiox_engine.audiox.model",
    "AudioXConfig": "audiox_engine.audiox.config",
    "get_preset": "audiox_engine.audiox.config",
    "load_model_config": "audiox_engine.audiox.config",
    "MMDiffusionTransformer": "audiox_engine.audiox.dit",
    "MAF_Block": "audiox_engine.audiox.maf",
    "sample_turbo": "audiox_engine.audiox.sampling",
    "sample_teacher": "audiox_engine.audiox.sampling",
    "load_into": "audiox_engine.audiox.checkpoint",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    # Lazy so that `import audiox` stays cheap (transformers is only needed for the conditioners).
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audiox' has no attribute {name!r}")
