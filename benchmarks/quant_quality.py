"""Quality and weight memory of each quantization config on a DiT with random weights.

For each config: velocity cosine similarity (and relative L2 error) of the quantized
DiT against the unquantized one on the same random inputs, plus the weight-memory
ratios of :func:`engine.quantize.weight_memory_report`. Random weights (normal, std
``std`` for every parameter) stand in for the release until a real checkpoint is
wired in; pass ``checkpoint=`` to use one instead.

Too slow for CI at full size (2.2B parameters: ~9 GB of fp32, a minute per forward on
two CPU cores). The model is built directly on ``device``. From the command line::

    python -m audiox_engine.benchmarks.quant_quality --preset audiox-turbo            # full size
    python -m audiox_engine.benchmarks.quant_quality --preset audiox-turbo --depth 2  # full width, 2 blocks
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from audiox_engine.audiox.checkpoint import load_into
from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.engine.quant_checkpoint import (
    weight_memory_report,
)
from audiox_engine.engine.quantize import (
    Float8WeightAndActivationConfig,
    Int8WeightAndActivationConfig,
    Int8WeightOnlyConfig,
    QuantConfig,
    quantize_,
    set_backend,
)

__all__ = ["quant_quality_report", "block_branches", "DEFAULT_CONFIGS"]

DEFAULT_CONFIGS = (Float8WeightAndActivationConfig(), Int8WeightAndActivationConfig(), Int8WeightOnlyConfig())


def _build(cfg, std: float, seed: int, checkpoint: str | None, device) -> MMDiffusionTransformer:
    device = torch.device(device)
    with device:  # built where it runs: a full-size init on the CPU takes minutes
        model = MMDiffusionTransformer(cfg)
    if checkpoint is not None:
        load_into(model, checkpoint, strict=True)
    else:
        g = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, std, generator=g)
    return model.eval()


def block_branches(block, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor):
    """The attention and FFN branches of an eager ``MMDitSingleBlock``: what it adds to the
    residual stream besides the time-token bias, computed as ``audiox.dit`` does.

    With random weights the velocity is dominated by the time-token biases (unquantized
    in the fused engine), so the velocity cosine barely sees the block GEMMs; the branch
    cosines, with modulation tokens ``c`` strong enough for gates of order one, do.
    """
    shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=-1)
    attn = block.linear1(block.attn(block.norm1(x) * (1 + scale1) + shift1, rot)) * gate1
    ffn = block.ffn(block.norm2(x + attn) * (1 + scale2) + shift2) * gate2
    return attn, ffn


def _inputs(cfg, batch: int, seed: int, device):
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, cfg.io_channels, cfg.latent_frames, generator=g)
    t = torch.rand(batch, generator=g)
    cond = torch.randn(batch, cfg.num_cond_tokens, cfg.cond_token_dim, generator=g)
    return x.to(device), t.to(device), cond.to(device)


def quant_quality_report(preset: str = "audiox-turbo", depth: int | None = None, std: float = 0.02,
                         seed: int = 0, batch: int = 1,
                         configs: tuple[QuantConfig, ...] = DEFAULT_CONFIGS,
                         backend: str = "auto", device: str = "cpu",
                         dtype: torch.dtype = torch.float32, checkpoint: str | None = None) -> list[dict]:
    """One row per config: cosine, relative L2 error, memory ratios, seconds per forward.

    The model is rebuilt (same seed) for each config rather than copied, so peak memory
    is one model. ``backend`` as in ``engine.quantize.set_backend``; ``dtype`` is the
    high-precision dtype of both the baseline and the unquantized rest.
    """
    cfg = get_preset(preset).dit
    if depth is not None:
        cfg = dataclasses.replace(cfg, depth=depth)
    inputs = _inputs(cfg, batch, seed, device)

    def forward(model):
        t0 = time.perf_counter()
        with torch.no_grad():
            v = model(inputs[0].to(dtype), inputs[1], inputs[2].to(dtype)).double()
        if device != "cpu":
            torch.cuda.synchronize()
        return v, time.perf_counter() - t0

    g = torch.Generator().manual_seed(seed + 2)
    bx = torch.randn(batch, cfg.latent_seq_len, cfg.embed_dim, generator=g).to(device, dtype)
    # Modulation tokens scaled so that |gate| ~ 1 whatever the width and std.
    bc = (torch.randn(batch, cfg.latent_seq_len, cfg.embed_dim, generator=g)
          / (std * cfg.embed_dim ** 0.5)).to(device, dtype)

    def branches(model):
        with torch.no_grad():
            return block_branches(model.transformer.layers[0], bx, bc, model.transformer.latent_rot.to(device))

    model = _build(cfg, std, seed, checkpoint, device).to(dtype)
    ref, ref_s = forward(model)
    ref_branches = branches(model)
    rows = [{"config": f"unquantized ({str(dtype).removeprefix('torch.')})", "cosine": 1.0, "rel_l2": 0.0,
             "block0_attn_cosine": 1.0, "block0_ffn_cosine": 1.0,
             "quantized_ratio": 1.0, "total_ratio": weight_memory_report(model).total_ratio,
             "forward_s": ref_s}]
    del model
    gc.collect()
    for config in tqdm(configs, desc="quant configs"):
        model = _build(cfg, std, seed, checkpoint, device).to(dtype)
        set_backend(quantize_(model, config), backend)
        v, s = forward(model)
        attn, ffn = (F.cosine_similarity(q.double().flatten(), w.double().flatten(), dim=0).item()
                     for q, w in zip(branches(model), ref_branches))
        mem = weight_memory_report(model)
        rows.append({
            "config": config.name,
            "cosine": F.cosine_similarity(v.flatten(), ref.flatten(), dim=0).item(),
            "rel_l2": ((v - ref).norm() / ref.norm()).item(),
            "block0_attn_cosine": attn,
            "block0_ffn_cosine": ffn,
            "quantized_ratio": mem.quantized_ratio,
            "total_ratio": mem.total_ratio,
            "forward_s": s,
            "memory": mem.describe(),
        })
        del model
        gc.collect()
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="audiox-turbo")
    p.add_argument("--depth", type=int, default=None, help="override the block count (full width kept)")
    p.add_argument("--std", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    a = p.parse_args(argv)
    rows = quant_quality_report(a.preset, a.depth, a.std, a.seed, a.batch, backend=a.backend,
                                device=a.device, checkpoint=a.checkpoint)
    print(f"{'config':33s} {'v cosine':>9s} {'v rel_l2':>9s} {'attn cos':>9s} {'ffn cos':>9s} "
          f"{'quant/bf16':>10s} {'model/bf16':>10s} {'fwd s':>6s}")
    for r in rows:
        print(f"{r['config']:33s} {r['cosine']:9.6f} {r['rel_l2']:9.5f} {r['block0_attn_cosine']:9.6f} "
              f"{r['block0_ffn_cosine']:9.6f} {r['quantized_ratio']:10.4f} {r['total_ratio']:10.4f} "
              f"{r['forward_s']:6.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
