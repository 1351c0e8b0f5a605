"""Small helpers shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"


def read_reference_keys(name: str, repeats: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Parse ``tests/data/<name>`` (copied from shared/reference) into ``key -> shape``.

    The files list layer 0 of each repeated stack; ``repeats`` maps a stack prefix such as
    ``"transformer.layers."`` to its depth, and every ``<prefix>0.`` key is expanded.
    """
    out: dict[str, tuple[int, ...]] = {}
    for line in (DATA / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        shape_t = tuple(int(s) for s in shape.strip("() ").split(",") if s.strip())
        for stack, depth in repeats.items():
            if stack + "0." in key:
                for i in range(depth):
                    out[key.replace(stack + "0.", f"{stack}{i}.", 1)] = shape_t
                break
        else:
            out[key] = shape_t
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def randomize_(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with fresh noise (the release zero-inits several of them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module
