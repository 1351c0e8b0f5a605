"""Turbo (DMD) and teacher (Euler + CFG) samplers."""

import pytest
import torch

from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.audiox.sampling import make_generator, sample_teacher, sample_turbo, turbo_timesteps
from helpers import randomize_


class Recorder:
    """A velocity model with a known closed form that records its calls."""

    def __init__(self, target: torch.Tensor):
        self.target = target
        self.calls = []

    def __call__(self, z, t, **kw):
        self.calls.append((z.clone(), t.clone(), kw))
        # exact velocity toward a fixed x0: v = (z - x0) / t for t > 0
        return (z - self.target) / t.view(-1, 1, 1)


def test_turbo_schedule_and_last_step_returns_x0():
    assert torch.allclose(turbo_timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 9, generator=g)
    noise = torch.randn(2, 4, 9, generator=g)
    model = Recorder(target)
    out = sample_turbo(model, noise, steps=4, generator=make_generator(1))
    assert [round(c[1][0].item(), 4) for c in model.calls] == [1.0, 0.75, 0.5, 0.25]
    torch.testing.assert_close(out, target, rtol=1e-5, atol=1e-5)
    # step 2 input is re-noised: z = t' * fresh + (1 - t') * x0 with fresh noise from the generator
    g1 = make_generator(1)
    fresh = torch.randn(2, 4, 9, generator=g1)
    torch.testing.assert_close(model.calls[1][0], 0.75 * fresh + 0.25 * target, rtol=1e-5, atol=1e-5)
    # the last call's x0 is returned, not re-noised
    z_last, t_last, _ = model.calls[-1]
    torch.testing.assert_close(out, z_last - t_last.view(-1, 1, 1) * model(z_last, t_last))


def test_turbo_is_deterministic_per_seed():
    cfg = get_preset("tiny").dit
    dit = randomize_(MMDiffusionTransformer(cfg), std=0.05, seed=2).eval()
    c = torch.randn(1, cfg.num_cond_tokens, cfg.cond_token_dim)

    def run(seed):
        g = make_generator(seed)
        noise = torch.randn(1, cfg.io_channels, cfg.latent_frames, generator=g)
        return sample_turbo(dit, noise, steps=4, generator=g, cross_attn_cond=c)

    a, b, other = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, other)


def test_teacher_euler_integrates_constant_velocity_exactly():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 5, generator=g)
    x0 = torch.randn(2, 3, 5, generator=g)
    calls = []

    def model(x, t, cross_attn_cond=None, cfg_scale=1.0):
        calls.append((t[0].item(), cfg_scale))
        return noise - x0  # the straight-line rectified-flow velocity

    out = sample_teacher(model, noise, steps=25, cfg_scale=6.0, cross_attn_cond=torch.ones(1))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
    assert len(calls) == 25 and calls[0] == (1.0, 6.0) and abs(calls[-1][0] - 0.04) < 1e-6


def test_teacher_cfg_one_equals_conditional_sampling():
    cfg = get_preset("tiny").dit
    dit = randomize_(MMDiffusionTransformer(cfg), std=0.05, seed=3).eval()
    c = torch.randn(1, cfg.num_cond_tokens, cfg.cond_token_dim)
    noise = torch.randn(1, cfg.io_channels, cfg.latent_frames)
    a = sample_teacher(dit, noise, steps=3, cfg_scale=1.0, cross_attn_cond=c)
    b = sample_teacher(lambda x, t, cross_attn_cond, cfg_scale: dit(x, t, cross_attn_cond=cross_attn_cond),
                       noise, steps=3, cfg_scale=1.0, cross_attn_cond=c)
    assert torch.equal(a, b)


@pytest.mark.parametrize("steps", [0, -1])
def test_bad_step_counts(steps):
    with pytest.raises(ValueError, match="steps must be"):
        sample_turbo(lambda z, t: z, torch.randn(1, 2, 3), steps=steps)
    with pytest.raises(ValueError, match="steps must be"):
        sample_teacher(lambda *a, **k: a[0], torch.randn(1, 2, 3), steps=steps)
