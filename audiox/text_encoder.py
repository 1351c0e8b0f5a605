"""A local T5 folder as the text conditioner: checked, its tokenizer, its weights read safely.

T5 is not in the release's checkpoint: it comes from a local ``t5-base`` folder (never a
hub). Its weights are read by :func:`~audiox.checkpoint.read_state_dict` (safetensors, or a
weights-only pickle: a ``pytorch_model.bin`` that would run code is refused before
transformers sees it) and checked against the folder's ``config.json`` before loading.
"""

from __future__ import annotations

import json
import os

import torch

from .checkpoint import match_state_dict, read_state_dict
from .errors import CheckpointError, as_int

__all__ = ["BYTE_TOKENIZER_MARK", "check_text_encoder_dir", "load_tokenizer", "load_text_encoder"]

BYTE_TOKENIZER_MARK = "audiox_byte_tokenizer.json"
T5_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # preferred first: safetensors runs no code
T5_TOKENIZER_FILES = (BYTE_TOKENIZER_MARK, "tokenizer.json", "spiece.model")
TEXT_MAX_LENGTH = 128  # the release's T5 token budget


def check_text_encoder_dir(t5_dir: str | os.PathLike) -> str:
    """Check that a local T5 folder holds a config, weights and a tokenizer, before anything is
    loaded; returns its weights file (``model.safetensors`` when present)."""
    t5_dir = os.fspath(t5_dir)
    want = "a local copy of t5-base: config.json, model.safetensors, tokenizer files"
    if not os.path.isdir(t5_dir):
        raise CheckpointError(f"T5 folder not found: {t5_dir} (give {want})")
    if not os.path.isfile(os.path.join(t5_dir, "config.json")):
        raise CheckpointError(f"{t5_dir} has no config.json: not a T5 folder (give {want})")
    weights = [os.path.join(t5_dir, w) for w in T5_WEIGHTS if os.path.isfile(os.path.join(t5_dir, w))]
    if not weights:
        raise CheckpointError(f"{t5_dir} holds no T5 weights ({' or '.join(T5_WEIGHTS)})")
    if not any(os.path.isfile(os.path.join(t5_dir, t)) for t in T5_TOKENIZER_FILES):
        raise CheckpointError(f"{t5_dir} holds no tokenizer (one of {', '.join(T5_TOKENIZER_FILES)})")
    return weights[0]


def load_tokenizer(t5_dir: str | os.PathLike):
    """A T5 folder's tokenizer and token budget: ``(tokenizer, max_length)``. Folders written
    by :meth:`AudioXPipeline.save_pretrained` for a byte-level stand-in carry
    ``audiox_byte_tokenizer.json`` (its length and text normalisation) instead of a vocabulary."""
    from .conditioners import ByteTokenizer, _HFTokenizer

    t5_dir = os.fspath(t5_dir)
    mark = os.path.join(t5_dir, BYTE_TOKENIZER_MARK)
    if os.path.isfile(mark):
        try:
            with open(mark, encoding="utf-8") as f:
                spec = json.load(f)
            max_length = as_int("max_length", spec["max_length"], minimum=2)
            tokenizer = ByteTokenizer(lowercase=spec.get("lowercase", False), keep_case=spec.get("keep_case", ()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{mark}: not a valid tokenizer marker ({e})") from None
        return tokenizer, max_length
    from transformers import AutoTokenizer

    try:
        return _HFTokenizer(AutoTokenizer.from_pretrained(t5_dir, local_files_only=True)), TEXT_MAX_LENGTH
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{t5_dir}: cannot read its tokenizer ({first})") from None


def load_text_encoder(t5_dir: str, output_dim: int):
    """A local T5 folder as a text conditioner of width ``output_dim``."""
    from transformers import T5Config, T5EncoderModel
    from transformers.utils import logging as hf_logging

    from .conditioners import T5Conditioner

    weights = check_text_encoder_dir(t5_dir)
    tokenizer, max_length = load_tokenizer(t5_dir)
    try:
        config = T5Config.from_pretrained(t5_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{t5_dir}/config.json: not a readable T5 config ({e})") from None
    sd = read_state_dict(weights)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in T5EncoderModel(config).state_dict().items()}
    report, fitting = match_state_dict(sd, shapes, prefix="")
    if "shared.weight" in fitting:  # the encoder's embedding is tied to `shared`
        report.missing = [k for k in report.missing if k != "encoder.embed_tokens.weight"]
    if report.missing or report.mismatched:
        report.unexpected = []  # a full T5 file also holds the decoder: not our concern
        raise CheckpointError(f"{weights} does not fit {t5_dir}/config.json: {report.summary()}")
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar or load report on stderr
    try:
        t5 = T5EncoderModel.from_pretrained(None, config=config, state_dict=fitting)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return T5Conditioner(t5, tokenizer, max_length=max_length, output_dim=output_dim)
