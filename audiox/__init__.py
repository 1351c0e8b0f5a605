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
    "AudioXPipeline": "audiox.pipeline",
    "AudioXModel": "audiox.model",
    "AudioXConfig": "audiox.config",
    "get_preset": "audiox.config",
    "load_model_config": "audiox.config",
    "MMDiffusionTransformer": "audiox.dit",
    "MAF_Block": "audiox.maf",
    "sample_turbo": "audiox.sampling",
    "sample_teacher": "audiox.sampling",
    "load_into": "audiox.checkpoint",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    # Lazy so that `import audiox` stays cheap (transformers is only needed for the conditioners).
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'audiox' has no attribute {name!r}")
