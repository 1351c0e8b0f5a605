"""engine/: the accelerated DiT against the eager reference (fp32, Triton interpreter on CPU).

Every parity test uses fresh random weights (the release zero-inits several, which
would hide bugs) and compares the accelerated model with ``audiox`` on the same weights
and noise.
"""

import copy
import logging

import pytest
import torch
from torch import nn

from audiox_engine import engine
from audiox_engine.audiox import sampling as ref_sampling
from audiox_engine.audiox.config import DiTConfig, get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer, MMDiTWrapper
from audiox_engine.audiox.vae import OobleckDecoder, SnakeBeta, VAEConfig
from audiox_engine.engine.fused_block import FusedDiTBlock
from helpers import cosine, dit_inputs, randomize_, rel_err
from audiox_engine.kernels._dispatch import interpret_mode

# The kernels run on CPU tensors only through Triton's interpreter (tests/conftest.py
# sets it when there is no GPU); on a GPU machine their parity is in test_engine_gpu.py.
triton_on_cpu = pytest.mark.skipif(not interpret_mode(), reason="needs TRITON_INTERPRET=1 for CPU kernel runs")

# 8 heads of dim 12, 16 latent frames (+1 time token), 2 blocks: seconds per forward
# through the Triton interpreter.
SMALL = DiTConfig(embed_dim=96, depth=2, num_heads=12, cond_token_dim=64, global_cond_dim=0,
                  mlp_ratio=2.0, latent_seq_len=17, num_cond_tokens=24)


def make_dit(cfg: DiTConfig = SMALL, seed: int = 1) -> MMDiffusionTransformer:
    return randomize_(MMDiffusionTransformer(cfg), std=0.1, seed=seed).eval()


def inputs(cfg: DiTConfig = SMALL, b: int = 2, seed: int = 0):
    return dit_inputs(cfg, b, seed)


@pytest.fixture(scope="module")
def dit():
    return make_dit()


@pytest.fixture(scope="module")
def fast(dit):
    return engine.accelerate(dit, backend="triton", dtype=torch.float32)


@pytest.fixture(scope="module")
def ref_backend(dit):
    return engine.accelerate(dit, backend="reference", dtype=torch.float32)


# ----------------------------------------------------------------------------- parity


@triton_on_cpu
def test_forward_parity_triton(dit, fast):
    x, t, c = inputs(b=2)
    with torch.no_grad():
        want = dit(x, t, c)
        got = fast(x, t, c)
    assert isinstance(fast, engine.AcceleratedDiT)
    assert all(isinstance(b, FusedDiTBlock) for b in fast.transformer.layers)
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert cosine(got, want) >= 0.99999
    assert rel_err(got, want) < 1e-4


@triton_on_cpu
def test_forward_parity_guided(dit, fast):
    x, t, c = inputs(b=1, seed=3)
    with torch.no_grad():
        want = dit(x, t, c, cfg_scale=4.0)
        got = fast(x, t, c, cfg_scale=4.0)
    assert cosine(got, want) >= 0.99999
    assert rel_err(got, want) < 1e-4


def test_forward_parity_reference_backend(dit, ref_backend):
    x, t, c = inputs(b=3, seed=5)
    with torch.no_grad():
        want = dit(x, t, c)
        got = ref_backend(x, t, c)
    assert rel_err(got, want) < 1e-5


@triton_on_cpu
def test_turbo_loop_parity(dit, fast):
    x, _, c = inputs(b=1, seed=7)
    noise = x
    want = ref_sampling.sample_turbo(dit, noise, steps=4, generator=torch.Generator().manual_seed(11),
                                     cross_attn_cond=c)
    got = engine.sample_turbo(fast, noise, c, steps=4, generator=torch.Generator().manual_seed(11))
    err = rel_err(got, want)
    print(f"turbo 4-step final latent rel err (triton interpreter vs eager, fp32): {err:.2e}")
    assert err < 1e-4


def test_turbo_noise_comes_from_the_generator(ref_backend):
    x, _, c = inputs(b=1, seed=7)
    a = engine.sample_turbo(ref_backend, x, c, steps=3, generator=torch.Generator().manual_seed(11))
    b = engine.sample_turbo(ref_backend, x, c, steps=3, generator=torch.Generator().manual_seed(11))
    other = engine.sample_turbo(ref_backend, x, c, steps=3, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert rel_err(other, a) > 1e-2


@triton_on_cpu
def test_teacher_parity(dit, fast):
    x, _, c = inputs(b=1, seed=9)
    # One guided step (batch 2B) through the kernels; the multi-step loop is checked
    # on the reference backend below.
    want = ref_sampling.sample_teacher(dit, x, steps=1, cfg_scale=3.0, cross_attn_cond=c)
    got = engine.sample_teacher(fast, x, c, steps=1, cfg_scale=3.0)
    assert rel_err(got, want) < 1e-4


def test_teacher_parity_reference_backend_variation(dit, ref_backend):
    x, _, c = inputs(b=1, seed=10)
    init = torch.randn_like(x)
    want = ref_sampling.sample_teacher(dit, x, steps=3, cfg_scale=5.0, cross_attn_cond=c,
                                       sigma_max=0.8, init_data=init)
    got = engine.sample_teacher(ref_backend, x, c, steps=3, cfg_scale=5.0, sigma_max=0.8, init_data=init)
    assert rel_err(got, want) < 1e-5


def test_tiny_preset_full_length_reference_backend():
    # The real sequence length (236 frames + time token) and 384 MAF tokens.
    cfg = get_preset("tiny").dit
    dit = make_dit(cfg, seed=2)
    fast = engine.accelerate(dit, backend="reference", dtype=torch.float32)
    x, t, c = inputs(cfg, b=1, seed=20)
    with torch.no_grad():
        assert rel_err(fast(x, t, c), dit(x, t, c)) < 1e-5
    # The tables read from the model's latent_rot equal the kernels' own (used at other lengths).
    from audiox_engine.kernels import rope_tables

    cos, sin = fast.rope(cfg.latent_seq_len)
    want_cos, want_sin = rope_tables(cfg.latent_seq_len, cfg.head_dim)
    assert cos.shape == (237, cfg.head_dim // 2)
    torch.testing.assert_close(cos, want_cos, atol=1e-5, rtol=0)
    torch.testing.assert_close(sin, want_sin, atol=1e-5, rtol=0)
    cos9, _ = fast.rope(9)
    torch.testing.assert_close(cos9, want_cos[:9])


# ----------------------------------------------------------------------------- hoisting


def test_prepare_matches_every_blocks_adaln(dit, ref_backend):
    _, _, c = inputs(b=2, seed=2)
    prepared = ref_backend.prepare(c)
    with torch.no_grad():
        tokens = dit.transformer.modulation_tokens(c)
        for i, block in enumerate(dit.transformer.layers):
            want = block.adaLN_modulation(tokens)
            assert rel_err(prepared.modulation[i], want) < 1e-6
    assert prepared.modulation.shape == (SMALL.depth, 2, SMALL.latent_seq_len, 6 * SMALL.embed_dim)
    assert prepared.cos.shape == (SMALL.latent_seq_len, SMALL.head_dim // 2)


def test_guided_prepare_appends_null_rows(dit, ref_backend):
    _, _, c = inputs(b=2, seed=2)
    prepared = ref_backend.prepare(c, cfg_scale=2.0)
    plain = ref_backend.prepare(c)
    null = ref_backend.prepare(torch.zeros_like(c))
    assert prepared.guided and prepared.batch == 2 and prepared.modulation.shape[1] == 4
    torch.testing.assert_close(prepared.modulation[:, :2], plain.modulation)
    torch.testing.assert_close(prepared.modulation[:, 2:], null.modulation)


def test_time_biases_match_cross_attention(dit, ref_backend):
    g = torch.Generator().manual_seed(4)
    t = torch.rand(3, generator=g)
    with torch.no_grad():
        e = dit.time_embedding(t)
        got = ref_backend.time_biases(e)
        for i, block in enumerate(dit.transformer.layers):
            x = torch.randn(3, 5, SMALL.embed_dim, generator=g)
            want = block.cross_attn(x, context=e.unsqueeze(1))  # (B, 5, D), same for every token
            assert rel_err(got[i].unsqueeze(1).expand_as(want), want) < 1e-6


def test_dead_to_q_is_dropped(dit):
    fast = engine.accelerate(dit, backend="reference", dtype=torch.float32)
    assert not any("to_q" in n for n, _ in fast.named_parameters())
    assert not any("to_q" in n or "adaLN" in n for n, _ in fast.named_modules())
    # The release's to_q cannot change the output: fresh to_q weights, same velocity.
    changed = copy.deepcopy(dit)
    with torch.no_grad():
        for block in changed.transformer.layers:
            block.cross_attn.to_q.weight.normal_()
    x, t, c = inputs(b=1, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(engine.accelerate(changed, backend="reference", dtype=torch.float32)(x, t, c),
                                   fast(x, t, c))
        torch.testing.assert_close(changed(x, t, c), dit(x, t, c))


def test_forward_cache_reuses_prepared(dit):
    fast = engine.accelerate(dit, backend="reference", dtype=torch.float32)
    calls = []
    real_prepare = fast.prepare

    def counting_prepare(cond, cfg_scale=1.0):
        calls.append(cfg_scale)
        return real_prepare(cond, cfg_scale)

    fast.prepare = counting_prepare
    x, t, c = inputs(b=1, seed=8)
    v1 = fast(x, t, c)
    fast(x, t * 0.5, c)
    fast(x, t, cross_attn_cond=c)
    assert len(calls) == 1
    fast(x, t, c, cfg_scale=3.0)  # guided batch: prepared again
    assert len(calls) == 2
    fast(x, t, c)
    assert len(calls) == 3
    with torch.no_grad():
        c.add_(0.5)  # in-place edit bumps the version counter: must not reuse stale modulations
    v2 = fast(x, t, c)
    assert len(calls) == 4
    assert rel_err(v2, v1) > 1e-4
    with torch.no_grad():
        torch.testing.assert_close(v2, dit(x, t, c))
    fast(x, t, c.clone())
    assert len(calls) == 5


def test_step_api(dit, ref_backend):
    x, t, c = inputs(b=2, seed=12)
    prepared = ref_backend.prepare(c)
    with torch.no_grad():
        torch.testing.assert_close(ref_backend.step(x, t, prepared), dit(x, t, c))
        guided = ref_backend.prepare(c, cfg_scale=2.5)
        torch.testing.assert_close(ref_backend.step(x, t, guided), dit(x, t, c, cfg_scale=2.5))
        # cfg_scale can change per step without preparing again.
        torch.testing.assert_close(ref_backend.step(x, t, guided, cfg_scale=6.0), dit(x, t, c, cfg_scale=6.0))


# ----------------------------------------------------------------------------- accelerate()


def test_inplace_false_leaves_the_model_untouched():
    wrapper = MMDiTWrapper(SMALL)
    randomize_(wrapper, std=0.1, seed=3)
    x, t, c = inputs(b=1)
    with torch.no_grad():
        before = wrapper(x, t, c)
    fast = engine.accelerate(wrapper, backend="reference", dtype=torch.float32)
    assert fast is not wrapper
    assert isinstance(fast.model, engine.AcceleratedDiT)
    assert isinstance(wrapper.model, MMDiffusionTransformer)
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x, t, c), before)
        torch.testing.assert_close(fast(x, t, c), before)


def test_inplace_true_swaps_in_the_given_tree():
    wrapper = randomize_(MMDiTWrapper(SMALL), std=0.1, seed=3)
    same = engine.accelerate(wrapper, backend="reference", dtype=torch.float32, inplace=True)
    assert same is wrapper and isinstance(wrapper.model, engine.AcceleratedDiT)
    # A second call finds nothing left to swap and says so.
    with pytest.raises(ValueError, match="no AudioX DiT"):
        engine.accelerate(wrapper, backend="reference", dtype=torch.float32, inplace=True)


def test_pipeline_object_with_dit_and_vae():
    class Pipeline:  # not an nn.Module: a plain object holding modules
        def __init__(self):
            self.model = randomize_(MMDiTWrapper(SMALL), std=0.1, seed=4)
            self.vae = randomize_(OobleckDecoder(VAEConfig(channels=4, c_mults=[1, 2], strides=[2, 2],
                                                           latent_dim=8)), std=0.1, seed=5)

    pipe = Pipeline()
    fast = engine.accelerate(pipe, backend="reference", dtype=torch.float32)
    assert isinstance(fast, Pipeline) and fast is not pipe
    assert isinstance(fast.model.model, engine.AcceleratedDiT)
    n_snakes = sum(isinstance(m, SnakeBeta) for m in pipe.vae.modules())
    info = engine.describe(fast)
    assert info["accelerated"] and info["snake_beta"] == {"reference": n_snakes}
    assert [d["path"] for d in info["dits"]] == ["model"]


def test_cpu_auto_picks_the_cpu_backend_with_one_log_line(dit, caplog):
    if torch.cuda.is_available():
        pytest.skip("the CPU backend choice is a CPU behaviour")
    holder = nn.ModuleDict({
        "dit": dit,
        "vae": OobleckDecoder(VAEConfig(channels=4, c_mults=[1], strides=[2], latent_dim=8)),
    })
    n_snakes = sum(isinstance(m, SnakeBeta) for m in holder.modules())
    with caplog.at_level(logging.INFO, logger="engine"):
        fast = engine.accelerate(holder, dtype=torch.float32)
    lines = [r for r in caplog.records if r.name == "engine"]
    assert len(lines) == 1 and "CPU backend" in lines[0].getMessage()
    info = engine.describe(fast)
    assert info["dits"][0]["backend"] == "cpu" and info["dits"][0]["attention"] == "sdpa"
    assert info["snake_beta"] == {"cpu": n_snakes} and n_snakes > 0
    x, t, c = inputs(b=1)
    with torch.no_grad():
        torch.testing.assert_close(fast["dit"](x, t, c), dit(x, t, c))


@triton_on_cpu
def test_describe_reports_backends(fast):
    info = engine.describe(fast)
    assert info["accelerated"] is True
    (d,) = info["dits"]
    assert d["path"] == "" and d["blocks"] == SMALL.depth and d["heads"] == "8x12"
    assert d["backend"] == "triton" and d["attention"] == "triton" and d["dtype"] == "float32"
    assert d["attention_available"]["sdpa"] is True
    assert engine.describe(nn.Linear(2, 2)) == {"accelerated": False, "dits": [], "snake_beta": {},
                                                "synchformers": [], "cuda": torch.cuda.is_available()}


@triton_on_cpu
def test_attention_backend_sdpa_with_triton_blocks(dit):
    sdpa = engine.accelerate(dit, backend="triton", dtype=torch.float32, attention="sdpa")
    assert engine.describe(sdpa)["dits"][0]["attention"] == "sdpa"
    x, t, c = inputs(b=1, seed=13)
    with torch.no_grad():
        assert cosine(sdpa(x, t, c), dit(x, t, c)) >= 0.99999


@triton_on_cpu
def test_attention_backends_agree_on_random_qkv():
    from audiox_engine.engine.attention import attend
    from audiox_engine.kernels import rope_tables

    g = torch.Generator().manual_seed(17)
    qkv = torch.randn(2, 9, 3 * 4 * 12, generator=g) * 2
    cos, sin = rope_tables(9, 12)
    want = attend(qkv, 4, cos, sin, 1e-6, "sdpa")
    got = attend(qkv, 4, cos, sin, 1e-6, "triton")
    assert rel_err(got, want) < 1e-5
    with pytest.raises(ValueError, match="unknown attention backend"):
        attend(qkv, 4, cos, sin, 1e-6, "magic")


def test_bf16_dtype_casts_the_dit(dit):
    fast = engine.accelerate(dit, backend="reference", dtype=torch.bfloat16)
    assert fast.dtype == torch.bfloat16
    assert next(dit.parameters()).dtype == torch.float32  # the original is untouched
    x, t, c = inputs(b=1)
    with torch.no_grad():
        got = fast(x, t, c)
        want = dit(x, t, c)
    assert got.dtype == x.dtype  # returned in the caller's dtype
    assert cosine(got, want) > 0.99


# ----------------------------------------------------------------------------- bad inputs


def test_bad_arguments_raise_clear_errors(dit, monkeypatch):
    with pytest.raises(ValueError, match="no AudioX DiT"):
        engine.accelerate(nn.Sequential(nn.Linear(4, 4)), backend="reference")
    with pytest.raises(TypeError, match="nn.Module"):
        engine.accelerate(42)
    with pytest.raises(ValueError, match="backend must be one of"):
        engine.accelerate(dit, backend="cuda")
    with pytest.raises(ValueError, match="dtype must be one of"):
        engine.accelerate(dit, dtype=torch.int8)
    with pytest.raises(ValueError, match="attention must be one of"):
        engine.accelerate(dit, backend="reference", attention="nope")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="flash-attn"):
            engine.accelerate(dit, backend="triton", dtype=torch.float32, attention="flash")
        with pytest.raises(ValueError, match="xformers"):
            engine.accelerate(dit, backend="reference", dtype=torch.float32, attention="xformers")
        with pytest.raises(ValueError, match="Triton kernels run only"):
            engine.accelerate(dit, backend="reference", dtype=torch.float32, attention="triton")
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            engine.accelerate(dit, backend="triton", dtype=torch.float32)


def test_unsupported_block_layout_is_rejected():
    odd = make_dit(DiTConfig(embed_dim=96, depth=1, num_heads=12, cond_token_dim=64, global_cond_dim=0,
                             mlp_ratio=2.0, latent_seq_len=17, num_cond_tokens=24, kernel_size=5))
    with pytest.raises(ValueError, match="kernel-3"):
        engine.accelerate(odd, backend="reference", dtype=torch.float32)


def test_bad_step_inputs_raise(ref_backend):
    x, t, c = inputs(b=2)
    prepared = ref_backend.prepare(c)
    with pytest.raises(ValueError, match="latent frames"):
        ref_backend.step(x[:, :, :-1], t, prepared)
    with pytest.raises(ValueError, match="x must be"):
        ref_backend.step(x[:, :3], t, prepared)
    with pytest.raises(ValueError, match="prepared for 2"):
        ref_backend.step(x[:1], t[:1], prepared)
    with pytest.raises(ValueError, match="t must be"):
        ref_backend.step(x, t[:1], prepared)
    with pytest.raises(TypeError, match="prepare"):
        ref_backend.step(x, t, c)
    with pytest.raises(ValueError, match="cross_attn_cond must"):
        ref_backend.prepare(c[:, :5])
    with pytest.raises(ValueError, match="cross_attn_cond must"):
        ref_backend.prepare(c[..., :10])
    with pytest.raises(ValueError, match="required"):
        ref_backend(x, t)
    with pytest.raises(NotImplementedError, match="negative_cross_attn_cond"):
        ref_backend(x, t, c, negative_cross_attn_cond=c)
    with pytest.raises(NotImplementedError, match="scale_phi"):
        ref_backend(x, t, c, scale_phi=0.7)
    ref_backend(x, t, c, cross_attn_cond_mask=torch.ones(2, 24), cfg_dropout_prob=0.0)  # ignored, as the release
    with pytest.raises(TypeError, match="AcceleratedDiT"):
        engine.sample_turbo(nn.Linear(2, 2), x, c)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            engine.sample_turbo(ref_backend, x, c, cuda_graph=True)


# ----------------------------------------------------------------------------- torch.compile


@triton_on_cpu
def test_compiled_block_fullgraph_matches_eager(fast):
    block = fast.transformer.layers[0]
    assert block.backend == "triton"
    _, _, c = inputs(b=1, seed=14)
    prepared = fast.prepare(c)
    g = torch.Generator().manual_seed(15)
    x = torch.randn(1, SMALL.latent_seq_len, SMALL.embed_dim, generator=g)
    bias = torch.randn(1, SMALL.embed_dim, generator=g)
    args = (x, prepared.modulation[0], bias, prepared.cos, prepared.sin)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        want = block(*args)
        got = compiled(*args)
    torch.testing.assert_close(got, want)


def test_custom_ops_pass_opcheck():
    g = torch.Generator().manual_seed(16)
    x = torch.randn(1, 5, 16, generator=g)
    mod = torch.randn(1, 5, 48, generator=g)
    shift, scale, gate = mod.chunk(3, dim=-1)  # strided views, as the block passes them
    torch.library.opcheck(torch.ops.audiox.adaln_modulate.default, (x, shift, scale, 1e-5))
    w = torch.randn(3, 8, 16, generator=g)  # packed (3, Cout, Cin)
    torch.library.opcheck(torch.ops.audiox.conv1d_k3.default, (x, w, None))
    qkv = torch.randn(1, 5, 3 * 2 * 8, generator=g)
    from audiox_engine.kernels import rope_tables

    cos, sin = rope_tables(5, 8)
    torch.library.opcheck(torch.ops.audiox.dit_attention.default, (qkv, 2, cos, sin, 1e-6))


# ----------------------------------------------------------------------------- VAE


@triton_on_cpu
def test_vae_snake_beta_swap_matches():
    cfg = VAEConfig(channels=4, c_mults=[1, 2], strides=[2, 2], latent_dim=8)
    dec = randomize_(OobleckDecoder(cfg), std=0.3, seed=6).eval()
    n = sum(isinstance(m, SnakeBeta) for m in dec.modules())
    fast = engine.accelerate(dec, backend="triton", dtype=None)
    assert sum(isinstance(m, engine.FusedSnakeBeta) for m in fast.modules()) == n > 0
    assert not any(isinstance(m, SnakeBeta) for m in fast.modules())
    z = torch.randn(1, 8, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = dec(z)
        got = engine.decode(fast, z)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5
    # Same parameter names: the fused VAE loads the original state dict.
    fast.load_state_dict(dec.state_dict())


def test_vae_dtype_casts_the_vae_only():
    holder = nn.ModuleDict({
        "dit": make_dit(),
        "vae": randomize_(OobleckDecoder(VAEConfig(channels=4, c_mults=[1], strides=[2], latent_dim=8)), seed=8),
    })
    fast = engine.accelerate(holder, backend="reference", dtype=torch.float32, vae_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fast["vae"].parameters())
    assert all(p.dtype == torch.float32 for p in fast["dit"].parameters())
    z = torch.randn(1, 8, 5, dtype=torch.bfloat16)
    with torch.no_grad():
        out = engine.decode(fast["vae"], z)
        want = holder["vae"](z.float())
    assert out.dtype == torch.bfloat16 and rel_err(out.float(), want) < 0.05


def test_profiler_sees_the_named_ranges(ref_backend):
    x, _, c = inputs(b=1, seed=18)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine.sample_turbo(ref_backend, x, c, steps=2, generator=torch.Generator().manual_seed(0))
    names = {e.name for e in prof.events()}
    assert {"engine/conditioning", "engine/prepare", "engine/turbo_step0", "engine/turbo_step1"} <= names


@pytest.mark.slow
@triton_on_cpu
def test_compiled_step_fullgraph_matches_eager(fast):
    # The whole step (time embedding, bias GEMM, every fused block) in one graph.
    x, t, c = inputs(b=1, seed=19)
    prepared = fast.prepare(c)
    torch._dynamo.reset()
    compiled = torch.compile(fast.step, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, prepared), fast.step(x, t, prepared))
