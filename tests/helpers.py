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
        key, shape = line.split("\t")[:2]  # a third column, if any, is the dtype
        shape_t = tuple(int(s) for s in shape.strip("() ").split(",") if s.strip())
        for stack, depth in repeats.items():
            if stack + "0." in key:
                for i in range(depth):
                    out[key.replace(stack + "0.", f"{stack}{i}.", 1)] = shape_t
                break
        else:
            out[key] = shape_t
    return out


def reduction_rtol(dtype: torch.dtype, n: int) -> float:
    """Relative error bound between two evaluations of a length-``n`` reduction (a sum, dot
    product or norm) in ``dtype`` that add in different orders: ``n * eps``, the worst case,
    so it holds whatever the CPU's vector width or the library's summation order."""
    return n * torch.finfo(dtype).eps


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def dit_inputs(cfg, b: int = 2, seed: int = 0):
    """Random x (B, C, T), t (B,), cross_attn_cond (B, N, Dc) for a DiTConfig; never zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cfg.io_channels, cfg.latent_frames, generator=g)
    t = torch.rand(b, generator=g)
    c = torch.randn(b, cfg.num_cond_tokens, cfg.cond_token_dim, generator=g)
    return x, t, c


def randomize_(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with fresh noise (the release zero-inits several of them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def write_test_video(path, frames: int = 12, size: int = 48, fps: int = 10, seed: int = 0) -> None:
    """A short random-noise MPEG-4 clip (PyAV's bundled FFmpeg encodes it; no system codec)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_gray_video(path, levels, fps, size=40, codec="ffv1"):
    """Frame i is a flat gray of levels[i]: the frame pick can be read back exactly."""
    import av
    import numpy as np

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        for level in levels:
            img = np.full((size, size, 3), level, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_test_wav(path, seconds: float = 0.5, sr: int = 22050, channels: int = 1, seed: int = 0) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    sf.write(str(path), tone.astype("float32"), sr)
