"""Per-item generators: with a list of generators (one per row) each row gets exactly the noise a
batch of one draws from its generator, in ``audiox.sampling``, the engine's Turbo loop and
sampler, and the pipeline (conditioning, noise, decode); one generator keeps its draws.

Where the model is replaced by a velocity that is exact row by row, batched and alone agree
bit for bit, so any difference would be the noise. With the real DiT they agree within the
rounding of batched matrix products (CPU GEMMs are blocked by the batch's size)."""

import pytest
import torch

from audiox_engine import engine
from audiox_engine.audiox.config import DiTConfig
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.audiox.errors import ArgumentError
from audiox_engine.audiox.pipeline import AudioXPipeline
from audiox_engine.audiox.sampling import draw_noise, sample_turbo, turbo_timesteps
from audiox_engine.engine import cuda_graphs
from audiox_engine.engine import sampling as engine_sampling
from audiox_engine.engine.loops import turbo_loop
from helpers import randomize_, reduction_rtol, rel_err

SEEDS = (11, 5, 2024, 7)
SHAPE = (len(SEEDS), 6, 10)
TEXTS = ["rain on a roof", "a dog barking", "a loud square tone at 523 Hz", "wind"]


def generators(seeds=SEEDS, device="cpu"):
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


class RowWiseVelocity:
    """v(z, t, cond): exact row by row (elementwise, one element of the row's conditioning)."""

    def __call__(self, z, t, cross_attn_cond=None, **kwargs):
        v = torch.tanh(z) * 0.5 + t[:, None, None]
        return v if cross_attn_cond is None else v + cross_attn_cond[:, :1, :1].to(v.dtype)

    def step(self, z, t, prepared):  # the engine loop's interface
        return self(z, t)


class RowWiseSampler:
    """A pipeline ``sampler`` slot running the reference Turbo loop over ``RowWiseVelocity``."""

    def turbo(self, dit, noise, cond, *, steps, generator, progress=False):
        return sample_turbo(RowWiseVelocity(), noise, steps=steps, generator=generator, cross_attn_cond=cond)


# ----------------------------------------------------------------------------- draw_noise


def test_draw_noise_rows_are_batches_of_one():
    alone = torch.cat([draw_noise((1, *SHAPE[1:]), g, "cpu") for g in generators()])
    assert torch.equal(draw_noise(SHAPE, generators(), "cpu"), alone)
    assert torch.equal(draw_noise(SHAPE, generators(), "cpu", torch.bfloat16), alone.bfloat16())


def test_draw_noise_with_one_generator_draws_as_before():
    drawn = draw_noise(SHAPE, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(drawn, torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)))


def test_draw_noise_refuses_a_wrong_count_or_a_shared_generator():
    with pytest.raises(ValueError, match="one per item"):
        draw_noise(SHAPE, generators()[:2], "cpu")
    g = torch.Generator()
    with pytest.raises(ValueError, match="twice"):
        draw_noise((2, 3), [g, g], "cpu")


# ----------------------------------------------------------------------------- samplers


def _alone(run, seeds=SEEDS):
    """``run(noise, generator)`` for each seed as a batch of one, noise drawn first as the pipeline does."""
    outs = []
    for g in generators(seeds):
        outs.append(run(draw_noise((1, *SHAPE[1:]), g, "cpu"), g))
    return torch.cat(outs)


def _batched(run, seeds=SEEDS):
    gens = generators(seeds)
    return run(draw_noise((len(seeds), *SHAPE[1:]), gens, "cpu"), gens)


def test_reference_turbo_rows_are_batches_of_one():
    def run(noise, gen):
        return sample_turbo(RowWiseVelocity(), noise, steps=4, generator=gen)

    assert torch.equal(_batched(run), _alone(run))


def test_engine_turbo_loop_rows_are_batches_of_one():
    ts = turbo_timesteps(4)

    def run(noise, gen):
        return turbo_loop(RowWiseVelocity(), noise, None, ts, gen)

    assert torch.equal(_batched(run), _alone(run))


SMALL = DiTConfig(embed_dim=96, depth=2, num_heads=12, cond_token_dim=64, global_cond_dim=0,
                  mlp_ratio=2.0, latent_seq_len=17, num_cond_tokens=24)


@pytest.fixture(scope="module")
def small_engine_dit():
    dit = randomize_(MMDiffusionTransformer(SMALL), std=0.1, seed=1).eval()
    return engine.accelerate(dit, backend="reference", dtype=torch.float32)


def test_engine_sample_turbo_rows_match_batches_of_one(small_engine_dit):
    shape = (len(SEEDS), SMALL.io_channels, SMALL.latent_frames)
    cond = torch.randn(len(SEEDS), SMALL.num_cond_tokens, SMALL.cond_token_dim, generator=torch.Generator().manual_seed(9))
    gens = generators()
    batched = engine.sample_turbo(small_engine_dit, draw_noise(shape, gens, "cpu"), cond, steps=4, generator=gens)
    alone = torch.cat([
        engine.sample_turbo(small_engine_dit, draw_noise((1, *shape[1:]), g, "cpu"), cond[i:i + 1], steps=4, generator=g)
        for i, g in enumerate(generators())])
    assert rel_err(batched, alone) <= reduction_rtol(torch.float32, SMALL.embed_dim)


def test_engine_turbo_with_per_item_generators_runs_outside_cuda_graphs(small_engine_dit, monkeypatch):
    """The captured loop draws from one generator: with a list the eager loop runs (and an explicit
    cuda_graph=True is refused). The graph choice is forced here, as on a GPU."""
    monkeypatch.setattr(engine_sampling, "_want_graph", lambda dit, x, cuda_graph: True)
    monkeypatch.setattr(engine_sampling, "turbo_graph", lambda *a: pytest.fail("a CUDA graph was captured"))
    shape = (2, SMALL.io_channels, SMALL.latent_frames)
    cond = torch.randn(2, SMALL.num_cond_tokens, SMALL.cond_token_dim)
    noise = torch.randn(shape)
    with pytest.raises(ValueError, match="cuda_graph=True takes one generator"):
        engine.sample_turbo(small_engine_dit, noise, cond, generator=generators((1, 2)), cuda_graph=True)
    out = engine.sample_turbo(small_engine_dit, noise, cond, generator=generators((1, 2)))
    monkeypatch.undo()
    assert torch.equal(out, engine.sample_turbo(small_engine_dit, noise, cond, generator=generators((1, 2))))
    with pytest.raises(ValueError, match="one generator"):
        cuda_graphs._source_generator(generators((1, 2)), torch.device("cpu"))


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def pipe():
    return AudioXPipeline.from_preset("tiny")


@pytest.fixture
def row_wise_pipe(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "sampler", RowWiseSampler())
    return pipe


def test_pipeline_items_are_batches_of_one_bit_for_bit(row_wise_pipe):
    """Conditioning (with its random audio-prompt mask and posterior draw), noise, re-noising and
    decode: each item of a batch with per-item generators is the batch of one of its seed."""
    wave, _ = row_wise_pipe(TEXTS, seconds=0.5, generator=list(SEEDS))
    alone = torch.cat([row_wise_pipe(t, seconds=0.5, generator=s)[0] for t, s in zip(TEXTS, SEEDS)])
    assert torch.equal(wave, alone)
    audio = torch.randn(1, 2, 16384, generator=torch.Generator().manual_seed(0))  # one prompt for every item
    wave, _ = row_wise_pipe(TEXTS[:2], audio=audio, seconds=0.5, generator=list(SEEDS[:2]))
    alone = torch.cat([row_wise_pipe(t, audio=audio, seconds=0.5, generator=s)[0] for t, s in zip(TEXTS[:2], SEEDS)])
    assert torch.equal(wave, alone)


def test_pipeline_items_do_not_depend_on_their_neighbours(row_wise_pipe):
    first, _ = row_wise_pipe(TEXTS[:2], seconds=0.5, generator=[SEEDS[0], SEEDS[1]])
    swapped, _ = row_wise_pipe([TEXTS[2], TEXTS[0]], seconds=0.5, generator=[SEEDS[2], SEEDS[0]])
    assert torch.equal(first[0], swapped[1])


def test_pipeline_encode_and_sample_are_the_call_split_in_two(pipe):
    gens = generators()
    with torch.no_grad():
        cond = pipe.encode_conditioning(TEXTS, generator=gens)
        latents = pipe.sample(cond, generator=gens)
    assert torch.equal(latents, pipe(TEXTS, generator=list(SEEDS), return_latents=True)[0])
    with pytest.raises(ArgumentError, match="encode_conditioning's output"):
        pipe.sample("rain")


def test_pipeline_real_dit_rows_match_batches_of_one(pipe):
    """With the DiT itself, rows agree within the rounding of batched GEMMs; a list of one
    generator is the single generator exactly."""
    latents, _ = pipe(TEXTS, generator=list(SEEDS), return_latents=True)
    alone = torch.cat([pipe(t, generator=s, return_latents=True)[0] for t, s in zip(TEXTS, SEEDS)])
    assert rel_err(latents, alone) <= reduction_rtol(torch.float32, pipe.cfg.dit.embed_dim)
    one, _ = pipe(TEXTS[0], generator=[SEEDS[0]], seconds=0.5)
    assert torch.equal(one, pipe(TEXTS[0], generator=SEEDS[0], seconds=0.5)[0])
    teacher, _ = pipe(TEXTS[:2], mode="teacher", steps=2, generator=list(SEEDS[:2]), return_latents=True)
    alone = torch.cat([pipe(t, mode="teacher", steps=2, generator=s, return_latents=True)[0]
                       for t, s in zip(TEXTS[:2], SEEDS)])
    assert rel_err(teacher, alone) <= reduction_rtol(torch.float32, pipe.cfg.dit.embed_dim)


@pytest.mark.parametrize("generator,words", [
    ([1], "got 1 for a batch of 3"),
    ([1, 2], "batch sizes differ"),
    ([], "empty list"),
    ([1, None, 3], "its own"),
    ("shared", "its own"),
    ([1, 2.5, 3], "an integer seed, got 2.5"),
])
def test_pipeline_refuses_bad_generator_lists(pipe, generator, words):
    if generator == "shared":
        g = torch.Generator()
        generator = [g, g, torch.Generator()]
    with pytest.raises(ArgumentError, match=words):
        pipe(TEXTS[:3], generator=generator)
