"""``engine.accelerate``: one verb that makes an AudioX-Turbo model fast; ``engine.describe``.

Works on any module tree with the release's names (our ``audiox`` models, the official
``audiox_turbo`` model object, a pipeline object holding such modules as attributes):
every DiT found by ``engine.discover`` is replaced at its attribute by an
``AcceleratedDiT``, every SnakeBeta by a ``FusedSnakeBeta``, and every Synchformer video
encoder (a MotionFormer ``vfeat_extractor``, also found by ``engine.discover``) by an
``AcceleratedMotionFormer``.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from audiox_engine.engine.accelerated_dit import AcceleratedDiT
from audiox_engine.engine.attention import available_attention_backends, resolve_attention
from audiox_engine.engine.discover import find_dits, find_motionformers, find_snake_betas, replace_module
from audiox_engine.engine.sampling import EngineSampler
from audiox_engine.engine.synchformer import (
    AcceleratedMotionFormer,
    motionformer_layout_problem,
    resolve_sync_attention,
)
from audiox_engine.engine.vae import FusedSnakeBeta, swap_snake_betas

__all__ = ["accelerate", "describe", "BACKENDS"]

logger = logging.getLogger("engine")

BACKENDS = ("auto", "triton", "reference")
_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16)


def _interpret_mode() -> bool:
    from audiox_engine.kernels._dispatch import interpret_mode

    return interpret_mode()


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type != "cuda" and not _interpret_mode():
        raise ValueError(
            f"backend='triton' needs the DiT on CUDA, or TRITON_INTERPRET=1 to run the kernels "
            f"on the CPU through Triton's interpreter (the DiT is on {device})")
    return backend


def _module_slots(root) -> list[tuple[object, str | None, nn.Module]]:
    """(owner, attribute, module) roots to search: the module itself, or a pipeline's attributes."""
    if isinstance(root, nn.Module):
        return [(None, None, root)]
    slots = [(root, k, v) for k, v in vars(root).items() if isinstance(v, nn.Module)] \
        if hasattr(root, "__dict__") else []
    if not slots:
        raise TypeError(
            f"accelerate() takes an nn.Module or a pipeline object holding nn.Modules as attributes, "
            f"got {type(root).__name__}")
    return slots


def _replace(owner, attr: str | None, module: nn.Module, name: str, new: nn.Module) -> bool:
    """Put ``new`` where ``module.<name>`` was (or at the owner's attribute when ``name`` is the
    slot itself); False when the slot is the root given to ``accelerate``, which the caller returns."""
    if name:
        replace_module(module, name, new)
    elif owner is not None:
        setattr(owner, attr, new)
    else:
        return False
    return True


def accelerate(model_or_pipeline, *, backend: str = "auto", dtype: torch.dtype | None = torch.bfloat16,
               cuda_graphs: bool = True, inplace: bool = False, attention: str = "auto",
               vae: bool = True, vae_dtype: torch.dtype | None = None, synchformer: bool = True):
    """Swap every AudioX DiT for an ``AcceleratedDiT``, every SnakeBeta for the fused op and
    every Synchformer video encoder for an ``AcceleratedMotionFormer``.

    backend: ``"triton"`` (our kernels; on CPU only under ``TRITON_INTERPRET=1``),
    ``"reference"`` (eager PyTorch, still with the hoisted prepare/step structure), or
    ``"auto"`` (Triton on CUDA; on CPU the reference, with one log line).
    dtype: the DiT's weights are cast to it (None keeps them). attention: ``"auto"``,
    ``"triton"``, ``"flash"``, ``"xformers"`` or ``"sdpa"``. cuda_graphs: allow
    ``engine.sample_turbo``/``sample_teacher`` to capture CUDA graphs (CUDA only).
    vae / vae_dtype: swap SnakeBetas; cast modules that contain them to ``vae_dtype``.
    synchformer: swap Synchformer encoders (matmuls in ``dtype``, residual stream and norms in
    fp32; attention ``"auto"``/``"triton"`` there means the best of flash / xformers / sdpa).

    inplace=False (default) works on a ``copy.deepcopy`` and leaves the argument untouched;
    inplace=True swaps inside the given object (its DiT is cast to ``dtype``, its blocks are
    dropped, the other DiT submodules are reused; the deep copy briefly doubles memory,
    inplace does not). Returns the accelerated model: the same kind of object
    as given, except that a bare DiT comes back as its ``AcceleratedDiT``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if vae_dtype not in _DTYPES:
        raise ValueError(f"vae_dtype must be one of {_DTYPES}, got {vae_dtype!r}")
    _module_slots(model_or_pipeline)  # type check before the (possibly large) copy
    root = model_or_pipeline if inplace else copy.deepcopy(model_or_pipeline)

    result = root
    n_dits = n_snakes = n_sync = 0
    fell_back = False
    for owner, attr, module in _module_slots(root):
        for name, dit in find_dits(module):
            if dtype is not None:
                dit.to(dtype)
            param = next(dit.parameters())
            device = param.device
            chosen = _resolve_backend(backend, device)
            fell_back |= backend == "auto" and chosen == "reference"
            if attention == "auto" and chosen == "reference":
                attn = "sdpa"  # the reference backend stays plain PyTorch unless asked otherwise
            else:
                attn = resolve_attention(attention, device, param.dtype, triton_ok=chosen == "triton")
            accel = AcceleratedDiT(dit, chosen, attn, cuda_graphs=cuda_graphs and device.type == "cuda")
            n_dits += 1
            if not _replace(owner, attr, module, name, accel):
                result = accel
        for name, encoder in find_motionformers(module) if synchformer else ():
            problem = motionformer_layout_problem(encoder)
            if problem:
                logger.info("engine.accelerate: skipped %s: %s", name, problem)
                continue
            sync_attn = resolve_sync_attention(attention, encoder.cls_token.device, dtype or encoder.cls_token.dtype)
            accel = AcceleratedMotionFormer(encoder, dtype, sync_attn)
            n_sync += 1
            if not _replace(owner, attr, module, name, accel):
                result = accel
        if vae:
            snake_device = None
            for _, snake in find_snake_betas(module):
                snake_device = snake.alpha.device
                break
            if snake_device is not None:
                if vae_dtype is not None:
                    _cast_snake_owners(module, vae_dtype)
                chosen = _resolve_backend(backend, snake_device)
                fell_back |= backend == "auto" and chosen == "reference"
                n, skipped = swap_snake_betas(module, chosen)
                n_snakes += n
                for why in skipped:
                    logger.info("engine.accelerate: skipped %s", why)
    if n_dits and not isinstance(root, nn.Module) and hasattr(root, "sampler"):
        root.sampler = EngineSampler()  # the pipeline's sampling slot: prepare once, CUDA graphs on GPU
    if n_dits == 0 and n_snakes == 0 and n_sync == 0:
        raise ValueError(
            "engine.accelerate found no AudioX DiT (a module with transformer.layers[i] blocks having "
            "norm1, attn.qkv, cross_attn.to_kv, linear1, ffn.w1/w2/w3, adaLN_modulation.1 and "
            "timestep_features, to_timestep_embed, preprocess_conv, postprocess_conv), no SnakeBeta and no "
            f"Synchformer (a vfeat_extractor with blocks[i].timeattn) in {type(model_or_pipeline).__name__}")
    if fell_back:
        logger.warning("engine.accelerate: the model is on CPU, so backend='auto' uses the eager reference "
                       "backend (move it to CUDA first, or pass backend='triton' with TRITON_INTERPRET=1 to "
                       "run the kernels through Triton's CPU interpreter)")
    return result


def _cast_snake_owners(root: nn.Module, dtype: torch.dtype) -> None:
    """Cast the smallest module holding every SnakeBeta under ``root`` (the VAE) to ``dtype``."""
    paths = [n.split(".") for n, _ in find_snake_betas(root)]
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    # A SnakeBeta's own path is not its owner: stop at its parent when only one was found.
    if len(paths) == 1:
        common = common[:-1]
    root.get_submodule(".".join(common)).to(dtype) if common else root.to(dtype)


def _walk(root):
    for _, _, module in _module_slots(root):
        yield from module.named_modules()


def describe(model) -> dict:
    """What ``accelerate`` swapped and which backends run: a JSON-friendly dict."""
    dits, snakes, syncs = [], {}, []
    for name, m in _walk(model):
        if isinstance(m, AcceleratedDiT):
            dits.append({
                "path": name,
                "blocks": m.depth,
                "width": m.dim,
                "heads": f"{m.num_heads}x{m.head_dim}",
                "backend": m.backend,
                "attention": m.attention,
                "dtype": str(m.dtype).replace("torch.", ""),
                "device": str(m.device),
                "cuda_graphs": m.cuda_graphs,
                "attention_available": available_attention_backends(m.device, m.dtype, m.backend == "triton"),
                "hoisted": ["adaln_modulation(one batched GEMM per generation)",
                            "rope_tables(per length)",
                            "time_token_biases(one GEMM per step)",
                            "cross_attn.to_q(dropped: dead)"],
            })
        elif isinstance(m, FusedSnakeBeta):
            snakes[m.backend] = snakes.get(m.backend, 0) + 1
        elif isinstance(m, AcceleratedMotionFormer):
            syncs.append({
                "path": name,
                "blocks": m.depth,
                "width": m.dim,
                "heads": f"{m.num_heads}x{m.dim // m.num_heads}",
                "attention": m.attention,
                "dtype": str(m.dtype).replace("torch.", ""),
                "device": str(m.device),
                "fp32": ["residual stream", "LayerNorms", "position embeddings", "aggregation CLS row"],
                "attention_available": available_attention_backends(m.device, m.dtype, triton_ok=False),
            })
    return {
        "accelerated": bool(dits or snakes or syncs),
        "dits": dits,
        "snake_beta": snakes,
        "synchformers": syncs,
        "cuda": torch.cuda.is_available(),
    }
