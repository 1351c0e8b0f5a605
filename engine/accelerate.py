"""``engine.accelerate``: one verb that makes an AudioX-Turbo model fast; ``engine.describe``.

Works on any module tree with the release's names (our ``audiox`` models, the official
``audiox_turbo`` model object, a pipeline object holding such modules as attributes):
every DiT found by ``engine.discover`` is replaced at its attribute by an
``AcceleratedDiT``, every SnakeBeta by a ``FusedSnakeBeta`` (on CPU: the VAE's
convolutions and SnakeBetas by their channels-last CPU versions, ``engine.cpu_vae``), and
every Synchformer video encoder (a MotionFormer ``vfeat_extractor``, also found by
``engine.discover``) by an ``AcceleratedMotionFormer``.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from audiox_engine.engine.accelerated_dit import AcceleratedDiT
from audiox_engine.engine.attention import available_attention_backends, resolve_attention
from audiox_engine.engine.cpu_features import auto_cpu_dtype, cpu_features
from audiox_engine.engine.cpu_gemm import packing_available
from audiox_engine.engine.cpu_vae import ChannelsLastConv1d, CPUSnakeBeta, accelerate_vae_cpu
from audiox_engine.engine.discover import find_dits, find_motionformers, find_snake_betas, replace_module, snake_owner
from audiox_engine.engine.sampling import EngineSampler
from audiox_engine.engine.synchformer import (
    AcceleratedMotionFormer,
    motionformer_layout_problem,
    resolve_sync_attention,
)
from audiox_engine.engine.vae import FusedSnakeBeta, swap_snake_betas

__all__ = ["accelerate", "describe", "BACKENDS"]

logger = logging.getLogger("engine")

BACKENDS = ("auto", "triton", "reference", "cpu")
_DTYPES = ("auto", None, torch.float32, torch.float16, torch.bfloat16)


def _interpret_mode() -> bool:
    from audiox_engine.kernels._dispatch import interpret_mode

    return interpret_mode()


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" else "cpu"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend='cpu' needs the model on the CPU (it is on {device}); "
                         f"use backend='auto' or 'triton' on CUDA")
    if backend == "triton" and device.type != "cuda" and not _interpret_mode():
        raise ValueError(
            f"backend='triton' needs the DiT on CUDA, or TRITON_INTERPRET=1 to run the kernels "
            f"on the CPU through Triton's interpreter (the DiT is on {device})")
    return backend


def _resolve_dtype(dtype, backend: str, device: torch.device) -> torch.dtype | None:
    """``"auto"``: bf16 on CUDA; on CPU bf16 for the CPU backend where the ISA makes bf16
    GEMMs pay (AMX, AVX-512 BF16), else fp32 (the reference ops compute in fp32 anyway)."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return torch.bfloat16
    return auto_cpu_dtype() if backend == "cpu" else torch.float32


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


def accelerate(model_or_pipeline, *, backend: str = "auto", dtype: torch.dtype | str | None = "auto",
               cuda_graphs: bool = True, inplace: bool = False, attention: str = "auto",
               vae: bool = True, vae_dtype: torch.dtype | None = None, synchformer: bool = True):
    """Swap every AudioX DiT for an ``AcceleratedDiT``, every SnakeBeta for the fused op and
    every Synchformer video encoder for an ``AcceleratedMotionFormer``.

    backend: ``"triton"`` (our kernels; on CPU only under ``TRITON_INTERPRET=1``),
    ``"cpu"`` (GEMM-shaped blocks and a channels-last VAE for the CPU, ``engine.cpu_block``
    and ``engine.cpu_vae``), ``"reference"`` (eager PyTorch ops, still with the hoisted
    prepare/step structure), or ``"auto"`` (Triton on CUDA, the CPU backend on CPU).
    dtype: the DiT's weights are cast to it (None keeps them); ``"auto"`` (default) is bf16
    on CUDA and, on CPU, bf16 for the CPU backend where the CPU has AMX or AVX-512 BF16,
    else fp32. The CPU backend runs its GEMMs in this dtype and keeps an fp32 residual
    stream. attention: ``"auto"``, ``"triton"``, ``"flash"``, ``"xformers"`` or ``"sdpa"``
    (the CPU backend: ``"auto"`` or ``"sdpa"``). cuda_graphs: allow
    ``engine.sample_turbo``/``sample_teacher`` to capture CUDA graphs (CUDA only).
    vae / vae_dtype: swap SnakeBetas; cast modules that contain them to ``vae_dtype`` (on
    the CPU backend: the VAE's convolutions run in ``vae_dtype``, SnakeBeta math in fp32).
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
    if vae_dtype not in _DTYPES[1:]:
        raise ValueError(f"vae_dtype must be one of {_DTYPES[1:]}, got {vae_dtype!r}")
    _module_slots(model_or_pipeline)  # type check before the (possibly large) copy
    root = model_or_pipeline if inplace else copy.deepcopy(model_or_pipeline)

    result = root
    n_dits = n_snakes = n_sync = 0
    cpu_paths: list[str] = []
    for owner, attr, module in _module_slots(root):
        for name, dit in find_dits(module):
            device = next(dit.parameters()).device
            chosen = _resolve_backend(backend, device)
            want = _resolve_dtype(dtype, chosen, device)
            if want is not None:
                dit.to(want)
            param = next(dit.parameters())
            if chosen == "cpu":
                attn = "sdpa" if attention == "auto" else attention  # AcceleratedDiT refuses the others
            elif attention == "auto" and chosen == "reference":
                attn = "sdpa"  # the reference backend stays plain PyTorch unless asked otherwise
            else:
                attn = resolve_attention(attention, device, param.dtype, triton_ok=chosen == "triton")
            accel = AcceleratedDiT(dit, chosen, attn, cuda_graphs=cuda_graphs and device.type == "cuda")
            n_dits += 1
            if chosen == "cpu":
                cpu_paths.append(f"DiT GEMMs in {str(param.dtype).replace('torch.', '')}")
            if not _replace(owner, attr, module, name, accel):
                result = accel
        for name, encoder in find_motionformers(module) if synchformer else ():
            problem = motionformer_layout_problem(encoder)
            if problem:
                logger.info("engine.accelerate: skipped %s: %s", name, problem)
                continue
            device = encoder.cls_token.device
            want = _resolve_dtype(dtype, "triton" if device.type == "cuda" else "cpu", device)
            sync_attn = resolve_sync_attention(attention, device, want or encoder.cls_token.dtype)
            accel = AcceleratedMotionFormer(encoder, want, sync_attn)
            n_sync += 1
            if not _replace(owner, attr, module, name, accel):
                result = accel
        if vae:
            snake_device = None
            for _, snake in find_snake_betas(module):
                snake_device = snake.alpha.device
                break
            if snake_device is None:
                continue
            chosen = _resolve_backend(backend, snake_device)
            if chosen == "cpu":
                n, n_convs, skipped = accelerate_vae_cpu(module, vae_dtype)
                conv_dtype = "kept" if vae_dtype is None else str(vae_dtype).replace("torch.", "")
                cpu_paths.append(f"VAE: {n_convs} channels-last convs (dtype {conv_dtype}), {n} SnakeBetas")
            else:
                if vae_dtype is not None:
                    _cast_snake_owners(module, vae_dtype)
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
    if cpu_paths:
        isa = cpu_features()
        logger.info("engine.accelerate: CPU backend (%s; ISA %s, AMX %s, AVX-512 BF16 %s)",
                    "; ".join(cpu_paths), isa["capability"], isa["amx"], isa["avx512_bf16"])
    return result


def _cast_snake_owners(root: nn.Module, dtype: torch.dtype) -> None:
    """Cast the smallest module holding every SnakeBeta under ``root`` (the VAE) to ``dtype``."""
    snake_owner(root)[1].to(dtype)


def _walk(root):
    for _, _, module in _module_slots(root):
        yield from module.named_modules()


_CPU_BLOCK_HOISTED = ["conv_weights(laid out once as (Cout, 3*Cin) GEMM operands; W1|W3 stacked)",
                      "qkv_rows(reordered once to [q|k|v], q/k half-split for RoPE)",
                      "one_plus_scale(fp32, per generation)"]


def describe(model) -> dict:
    """What ``accelerate`` swapped and which backends run: a JSON-friendly dict.

    ``cpu`` (present when a CPU-backend module runs): the ISA, the DiT's GEMM dtype and
    the VAE's conv count, conv dtype and SnakeBeta implementation.
    """
    dits, snakes, syncs = [], {}, []
    vae_convs: dict[str, int] = {}
    snake_impl: set[str] = set()
    for name, m in _walk(model):
        if isinstance(m, AcceleratedDiT):
            entry = {
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
            }
            if m.backend == "cpu":
                entry["gemm_dtype"] = entry["dtype"]
                entry["gemm_weights"] = "onednn-packed" if packing_available(m.dtype) else "plain"
                entry["stream_dtype"] = "float32"
                entry["hoisted"] += _CPU_BLOCK_HOISTED
            dits.append(entry)
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
        elif isinstance(m, CPUSnakeBeta):
            snakes["cpu"] = snakes.get("cpu", 0) + 1
            snake_impl.add(m.implementation)
        elif isinstance(m, ChannelsLastConv1d):
            key = str(m.weight.dtype).replace("torch.", "")
            vae_convs[key] = vae_convs.get(key, 0) + 1
    info = {
        "accelerated": bool(dits or snakes or syncs),
        "dits": dits,
        "snake_beta": snakes,
        "synchformers": syncs,
        "cuda": torch.cuda.is_available(),
    }
    if vae_convs or snake_impl or any(d["backend"] == "cpu" for d in dits):
        info["cpu"] = {
            "isa": dict(cpu_features()),
            "dit_gemm_dtype": sorted({d["gemm_dtype"] for d in dits if d["backend"] == "cpu"}),
            "vae_convs_channels_last": vae_convs,
            "vae_snake_beta": sorted(snake_impl),
        }
    return info
