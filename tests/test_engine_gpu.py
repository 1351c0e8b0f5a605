"""engine/ on a CUDA device: bf16 parity, CUDA-graph capture and replay, a timing print.

All tests are ``@pytest.mark.gpu`` and skip without CUDA (deselected by default; run
with ``-m gpu``). They use the ``tiny`` preset at the real sequence length (237 tokens).
"""

import time

import pytest
import torch
import torch.nn.functional as F

from audiox_engine import engine
from audiox_engine.audiox import sampling as ref_sampling
from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
from helpers import randomize_, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CFG = get_preset("tiny").dit


def cosine(a, b):
    return F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


@pytest.fixture(scope="module")
def dit():
    return randomize_(MMDiffusionTransformer(CFG), std=0.1, seed=1).eval().cuda()


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, CFG.io_channels, CFG.latent_frames, generator=g)
    t = torch.rand(b, generator=g)
    c = torch.randn(b, CFG.num_cond_tokens, CFG.cond_token_dim, generator=g)
    return x.cuda(), t.cuda(), c.cuda()


def test_auto_picks_triton_on_cuda(dit):
    fast = engine.accelerate(dit)
    (d,) = engine.describe(fast)["dits"]
    assert d["backend"] == "triton" and d["attention"] == "triton" and d["dtype"] == "bfloat16"
    assert d["cuda_graphs"] is True


def test_fp32_parity_on_cuda(dit):
    fast = engine.accelerate(dit, backend="triton", dtype=torch.float32)
    x, t, c = _inputs()
    with torch.no_grad():
        # TF32 may be on for cuBLAS; the eager reference uses the same GEMMs.
        assert cosine(fast(x, t, c), dit(x, t, c)) >= 0.9999


def test_bf16_parity(dit):
    fast = engine.accelerate(dit, backend="triton", dtype=torch.bfloat16)
    x, t, c = _inputs(seed=1)
    with torch.no_grad():
        got = fast(x, t, c)
        want = dit(x, t, c)
    assert cosine(got, want) >= 0.999


@pytest.mark.parametrize("attention", ["sdpa", "flash", "xformers"])
def test_other_attention_backends(dit, attention):
    avail = engine.available_attention_backends("cuda", torch.bfloat16, True)
    if not avail[attention]:
        pytest.skip(f"{attention} not installed")
    fast = engine.accelerate(dit, backend="triton", attention=attention)
    x, t, c = _inputs(seed=2)
    with torch.no_grad():
        assert cosine(fast(x, t, c), dit(x, t, c)) >= 0.999


def test_turbo_cuda_graph_matches_eager_loop(dit):
    fast = engine.accelerate(dit, backend="triton", dtype=torch.float32)
    x, _, c = _inputs(b=2, seed=3)
    eager = engine.sample_turbo(fast, x, c, generator=torch.Generator("cuda").manual_seed(5), cuda_graph=False)
    g = torch.Generator("cuda").manual_seed(5)
    graphed = engine.sample_turbo(fast, x, c, generator=g, cuda_graph=True)
    assert len(fast._graphs) == 1
    assert rel_err(graphed, eager) < 1e-5  # same noise draws in the same order
    # Replay: same generator object, so the captured graph is reused and the noise
    # continues from the generator's state exactly as an eager run would.
    g_eager = torch.Generator("cuda").manual_seed(5)
    engine.sample_turbo(fast, x, c, generator=g_eager, cuda_graph=False)
    eager2 = engine.sample_turbo(fast, x, c, generator=g_eager, cuda_graph=False)
    graphed2 = engine.sample_turbo(fast, x, c, generator=g, cuda_graph=True)
    assert len(fast._graphs) == 1
    assert rel_err(graphed2, eager2) < 1e-5
    assert rel_err(graphed2, graphed) > 1e-3  # fresh noise on replay
    # Against the eager reference model and sampler.
    want = ref_sampling.sample_turbo(dit, x, generator=torch.Generator("cuda").manual_seed(5), cross_attn_cond=c)
    assert rel_err(graphed, want) < 1e-3


def test_teacher_cuda_graph_matches_eager(dit):
    fast = engine.accelerate(dit, backend="triton", dtype=torch.float32)
    x, _, c = _inputs(b=1, seed=4)
    eager = engine.sample_teacher(fast, x, c, steps=5, cfg_scale=3.0, cuda_graph=False)
    graphed = engine.sample_teacher(fast, x, c, steps=5, cfg_scale=3.0, cuda_graph=True)
    again = engine.sample_teacher(fast, x, c, steps=5, cfg_scale=3.0, cuda_graph=True)
    assert rel_err(graphed, eager) < 1e-5 and rel_err(again, eager) < 1e-5
    want = ref_sampling.sample_teacher(dit, x, steps=5, cfg_scale=3.0, cross_attn_cond=c)
    assert rel_err(graphed, want) < 1e-3


def test_timing_print(dit):
    fast = engine.accelerate(dit, backend="triton", dtype=torch.bfloat16)
    ref = engine.accelerate(dit, backend="reference", dtype=torch.bfloat16, cuda_graphs=False)
    x, _, c = _inputs(b=1, seed=6)
    x = x.bfloat16()
    results = {}
    for name, model, graph in (("reference", ref, False), ("triton", fast, False), ("triton+graph", fast, True)):
        for _ in range(2):
            engine.sample_turbo(model, x, c, generator=torch.Generator("cuda").manual_seed(0), cuda_graph=graph)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            engine.sample_turbo(model, x, c, generator=torch.Generator("cuda").manual_seed(0), cuda_graph=graph)
        torch.cuda.synchronize()
        results[name] = (time.perf_counter() - t0) / 5 * 1e3
    print("tiny preset, B=1, 4-step turbo loop (ms):", {k: round(v, 2) for k, v in results.items()})
    assert all(v > 0 for v in results.values())
