"""Find AudioX-Turbo modules in any module tree by their official attribute names.

Duck typing, not ``isinstance``: the engine must accept the DiT built by ``audiox/``, the
official ``audiox_turbo`` model object, or any tree that mirrors the release's names.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "DIT_ATTRS",
    "TRANSFORMER_ATTRS",
    "BLOCK_PATHS",
    "looks_like_dit",
    "looks_like_dit_block",
    "find_dits",
    "find_snake_betas",
    "snake_owner",
    "block_layout_problem",
    "replace_module",
    "MOTIONFORMER_ATTRS",
    "SYNC_BLOCK_PATHS",
    "looks_like_motionformer",
    "find_motionformers",
]

# What makes a module the release's `MMDiffusionTransformer`.
DIT_ATTRS = ("transformer", "timestep_features", "to_timestep_embed", "preprocess_conv", "postprocess_conv")
# ... and its `ContinuousMMDiTTransformer` at `.transformer`.
TRANSFORMER_ATTRS = ("layers", "project_in", "project_out", "proj_mm_tokens", "proj_mm_seq_len")
# Every submodule of an `MMDitSingleBlock` the fused block reads.
BLOCK_PATHS = (
    "norm1", "attn.qkv", "attn.q_norm", "attn.k_norm", "cross_attn.to_q", "cross_attn.to_kv",
    "linear1", "norm2", "ffn.w1", "ffn.w2", "ffn.w3", "adaLN_modulation.1",
)


def _has_path(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def looks_like_dit_block(module: nn.Module) -> bool:
    """True for a module with every official `MMDitSingleBlock` submodule name."""
    return isinstance(module, nn.Module) and all(_has_path(module, p) for p in BLOCK_PATHS)


def looks_like_dit(module: nn.Module) -> bool:
    """True for an `MMDiffusionTransformer` by name: the DiT attrs, a transformer, blocks."""
    if getattr(module, "_audiox_engine_accelerated", False):
        return False
    if not all(hasattr(module, a) for a in DIT_ATTRS):
        return False
    tr = module.transformer
    if not all(hasattr(tr, a) for a in TRANSFORMER_ATTRS):
        return False
    layers = tr.layers
    return len(layers) > 0 and all(looks_like_dit_block(b) for b in layers)


def find_dits(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every DiT in ``root`` (outermost first, none nested)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in root.named_modules():
        if any(f == "" or name == f or name.startswith(f + ".") for f, _ in found):
            continue
        if looks_like_dit(module):
            found.append((name, module))
    return found


# What makes a module the release's Synchformer video encoder (a MotionFormer `vfeat_extractor`) ...
MOTIONFORMER_ATTRS = ("cls_token", "pos_embed", "temp_embed", "patch_embed_3d", "blocks", "norm", "spatial_attn_agg")
# ... every submodule of its `DividedSpaceTimeBlock`s and of its per-frame aggregation layer the engine reads.
SYNC_BLOCK_PATHS = ("norm1", "attn.qkv", "attn.proj", "timeattn.qkv", "timeattn.proj", "norm2", "mlp.fc1",
                    "mlp.fc2", "norm3")
SYNC_AGGREGATION_PATHS = ("self_attn", "linear1", "linear2", "norm1", "norm2")


def looks_like_motionformer(module: nn.Module) -> bool:
    """True for a Synchformer video encoder by name (not one ``engine.accelerate`` already swapped)."""
    if getattr(module, "_audiox_engine_accelerated", False) or not all(hasattr(module, a) for a in MOTIONFORMER_ATTRS):
        return False
    blocks = module.blocks
    return (len(blocks) > 0 and all(_has_path(b, p) for b in blocks for p in SYNC_BLOCK_PATHS)
            and all(_has_path(module.spatial_attn_agg, p) for p in SYNC_AGGREGATION_PATHS))


def find_motionformers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every Synchformer video encoder in ``root``."""
    return [(name, m) for name, m in root.named_modules() if looks_like_motionformer(m)]


def find_snake_betas(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every SnakeBeta activation: class named ``SnakeBeta`` with ``alpha`` and ``beta`` params."""
    out = []
    for name, module in root.named_modules():
        if type(module).__name__ != "SnakeBeta":
            continue
        params = dict(module.named_parameters(recurse=False))
        if "alpha" in params and "beta" in params and params["alpha"].dim() == 1:
            out.append((name, module))
    return out


def snake_owner(root: nn.Module) -> tuple[str, nn.Module]:
    """(path, module): the smallest module under ``root`` holding every SnakeBeta (the VAE)."""
    paths = [n.split(".") for n, _ in find_snake_betas(root)]
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    # A SnakeBeta's own path is not its owner: stop at its parent when only one was found.
    if len(paths) == 1:
        common = common[:-1]
    path = ".".join(common)
    return path, (root.get_submodule(path) if path else root)


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``root.get_submodule(name)`` is (``name`` dotted, non-empty)."""
    if not name:
        raise ValueError("cannot replace the root module itself; replace it where its owner holds it")
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def block_layout_problem(block: nn.Module) -> str | None:
    """Why the fused block cannot run this block (kernel/padding/shape), or None if it can."""
    for path in ("attn.qkv", "cross_attn.to_kv", "adaLN_modulation.1", "linear1", "ffn.w1", "ffn.w2", "ffn.w3"):
        layer = block.get_submodule(path)
        w = getattr(layer, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            return (f"{path} ({type(layer).__name__}) has no floating-point weight; if it was quantized with "
                    f"engine.quantize, call engine.accelerate first and quantize the accelerated model")
    for path in ("linear1", "ffn.w1", "ffn.w2", "ffn.w3"):
        conv = block.get_submodule(path)
        w = getattr(conv, "weight", None)
        if w is None or w.dim() != 3 or w.shape[2] != 3:
            return f"{path} must be a kernel-3 Conv1d (got weight {None if w is None else tuple(w.shape)})"
        if tuple(getattr(conv, "padding", (1,))) != (1,) or tuple(getattr(conv, "stride", (1,))) != (1,) \
                or tuple(getattr(conv, "dilation", (1,))) != (1,) or getattr(conv, "groups", 1) != 1:
            return f"{path} must have padding 1, stride 1, dilation 1, groups 1"
    heads = getattr(block.attn, "nheads", None)
    dim = block.attn.qkv.in_features
    if not isinstance(heads, int) or heads <= 0 or dim % heads:
        return f"attn.nheads must be a positive divisor of the width {dim}, got {heads!r}"
    if (dim // heads) % 2:
        return f"head dim {dim // heads} must be even for RoPE"
    if block.attn.qkv.out_features != 3 * dim or block.cross_attn.to_kv.out_features != 2 * dim:
        return "attn.qkv must be dim -> 3*dim and cross_attn.to_kv dim -> 2*dim"
    if block.adaLN_modulation[1].out_features != 6 * dim:
        return "adaLN_modulation.1 must be dim -> 6*dim (a pre_only block is not supported)"
    for norm in ("norm1", "norm2"):
        n = block.get_submodule(norm)
        if getattr(n, "weight", None) is not None or getattr(n, "bias", None) is not None:
            return f"{norm} must be a LayerNorm without affine parameters"
    return None
