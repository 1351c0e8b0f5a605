"""bitsandbytes ``Linear8bitLt`` (LLM.int8()) as the INT8 baseline users know.

Optional: bitsandbytes is detected at run time and never required. Only ``nn.Linear``
layers can be swapped (bitsandbytes has no Conv1d), so on the DiT this baseline
quantizes qkv, to_q, to_kv and the adaLN Linear and leaves the k=3 convs (linear1 and
the FFN, ~70% of the weights) in high precision; compare it with
``Int8WeightAndActivationConfig`` restricted to Linear layers for a like-for-like number.
Its quantization happens when the model is moved to CUDA (bitsandbytes' rule).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from audiox_engine.engine.discover import replace_module
from audiox_engine.engine.quantize import default_filter

__all__ = ["bitsandbytes_available", "swap_to_bnb_linear8bit"]


def bitsandbytes_available() -> bool:
    """True when ``import bitsandbytes`` works (it needs a CUDA build to be useful)."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # ImportError, or its own RuntimeError on a machine without CUDA libs
        return False
    return True


def swap_to_bnb_linear8bit(model: nn.Module,
                           filter_fn: Callable[[nn.Module, str], bool] | None = None,
                           threshold: float = 6.0) -> nn.Module:
    """Replace the selected ``nn.Linear`` layers by ``bnb.nn.Linear8bitLt``, in place.

    ``filter_fn(module, fqn)`` defaults to ``engine.quantize.default_filter`` (the DiT
    blocks); non-Linear modules are never swapped. ``threshold`` is LLM.int8()'s outlier
    threshold (6.0, its default; 0.0 disables the fp16 outlier path). Move the model to
    CUDA afterwards: bitsandbytes quantizes on that move.
    """
    if not bitsandbytes_available():
        raise ImportError("the bitsandbytes baseline needs `pip install bitsandbytes` (a CUDA build); "
                          "it is optional and only used for comparison")
    import bitsandbytes as bnb

    filter_fn = filter_fn or default_filter
    chosen = [(fqn, m) for fqn, m in model.named_modules()
              if isinstance(m, nn.Linear) and filter_fn(m, fqn)]
    if not chosen:
        raise ValueError("swap_to_bnb_linear8bit: the filter selected no nn.Linear")
    for fqn, m in chosen:
        new = bnb.nn.Linear8bitLt(m.in_features, m.out_features, bias=m.bias is not None,
                                  has_fp16_weights=False, threshold=threshold)
        new.weight = bnb.nn.Int8Params(m.weight.data.half(), requires_grad=False, has_fp16_weights=False)
        if m.bias is not None:
            new.bias = nn.Parameter(m.bias.data.half(), requires_grad=False)
        replace_module(model, fqn, new)
    return model
