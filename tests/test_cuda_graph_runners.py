"""The CUDA-graph runners' bookkeeping, on the CPU, with an eager stand-in for graph capture.

``engine.cuda_graphs.capture`` is the only place a graph is recorded; replacing it with a
function that reruns the captured callable eagerly keeps every static buffer and cache key
of the runners as on a GPU, so what a replay would compute (and what it would reuse from a
previous call) is checked here without one. Replays on a real GPU: test_engine_gpu.py.
"""

import pytest
import torch

from audiox_engine import engine
from audiox_engine.audiox.config import DiTConfig
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.engine import cuda_graphs
from audiox_engine.engine import sampling as engine_sampling
from helpers import randomize_, rel_err

SMALL = DiTConfig(embed_dim=48, depth=2, num_heads=6, cond_token_dim=32, global_cond_dim=0,
                  mlp_ratio=2.0, latent_seq_len=9, num_cond_tokens=12)


def eager_capture(fn, device, generators=()):
    """Stand-in for a CUDA graph: replaying reruns ``fn`` and writes into the captured output."""
    out = fn()

    def replay():
        out.copy_(fn())

    return replay, out


@pytest.fixture
def graphed(monkeypatch):
    """(accelerated DiT, inputs) with sample_teacher taking its graph path on the CPU."""
    dit = randomize_(MMDiffusionTransformer(SMALL), std=0.1, seed=3).eval()
    fast = engine.accelerate(dit, backend="reference", dtype=torch.float32, cuda_graphs=False)
    monkeypatch.setattr(cuda_graphs, "capture", eager_capture)
    monkeypatch.setattr(engine_sampling, "_want_graph", lambda dit, x, cuda_graph: bool(cuda_graph))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, SMALL.io_channels, SMALL.latent_frames, generator=g)
    c = torch.randn(2, SMALL.num_cond_tokens, SMALL.cond_token_dim, generator=g)
    return fast, x, c


def test_teacher_graph_follows_the_cfg_scale_of_each_call(graphed):
    """One captured step serves every guidance scale: a second call with another cfg_scale
    must not replay the first call's guidance."""
    fast, x, c = graphed
    first = engine.sample_teacher(fast, x, c, steps=3, cfg_scale=6.0, cuda_graph=True)
    second = engine.sample_teacher(fast, x, c, steps=3, cfg_scale=2.5, cuda_graph=True)
    assert len(fast._graphs) == 1  # the same runner, reused
    want_first = engine.sample_teacher(fast, x, c, steps=3, cfg_scale=6.0, cuda_graph=False)
    want_second = engine.sample_teacher(fast, x, c, steps=3, cfg_scale=2.5, cuda_graph=False)
    assert rel_err(first, want_first) < 1e-6
    assert rel_err(second, want_second) < 1e-6
    assert rel_err(second, first) > 1e-3  # the scales really give different samples


def test_teacher_graph_loads_the_conditioning_once_per_generation(graphed, monkeypatch):
    fast, x, c = graphed
    loads = []
    real_load = cuda_graphs._load_prepared
    monkeypatch.setattr(cuda_graphs, "_load_prepared", lambda static, p: (loads.append(1), real_load(static, p)))
    engine.sample_teacher(fast, x, c, steps=7, cfg_scale=3.0, cuda_graph=True)
    assert len(loads) == 1
    engine.sample_teacher(fast, x, c, steps=7, cfg_scale=3.0, cuda_graph=True)
    assert len(loads) == 2


def test_unguided_teacher_graph_is_its_own_runner(graphed):
    fast, x, c = graphed
    engine.sample_teacher(fast, x, c, steps=2, cfg_scale=3.0, cuda_graph=True)
    plain = engine.sample_teacher(fast, x, c, steps=2, cfg_scale=1.0, cuda_graph=True)
    assert len(fast._graphs) == 2
    assert rel_err(plain, engine.sample_teacher(fast, x, c, steps=2, cfg_scale=1.0, cuda_graph=False)) < 1e-6
