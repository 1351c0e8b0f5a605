"""DMD trainer: known-answer gradient, which parameters each update touches, exact resume, EMA."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from audiox_engine.audiox.distill.dmd import (DMDConfig, DMDTrainer, cfg_velocity, distribution_matching_gradient, dmd_loss,
                                ema_update, noise_to, turbo_sample, x0_from_velocity)
from audiox_engine.audiox.distill.toy import ToyVelocityMLP, torch_threads

DIM = 6


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: intra-op threads only add synchronisation cost (large on a busy machine).
    with torch_threads(1):
        yield


class GaussianVelocity(nn.Module):
    """Exact rectified-flow velocity of data N(mu, s^2 I): v = (z - E[x0 | z_t]) / t with
    E[x0 | z_t] = mu + k (z - (1 - t) mu), k = (1 - t) s^2 / ((1 - t)^2 s^2 + t^2).
    ``mu`` is a parameter so a 'generator' or 'critic' built from it can be trained."""

    def __init__(self, mu, s=0.5):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float32).clone())
        self.s = s

    def x0(self, z, t):
        tt = t[:, None]
        k = (1 - tt) * self.s ** 2 / ((1 - tt) ** 2 * self.s ** 2 + tt ** 2)
        return self.mu + k * (z - (1 - tt) * self.mu)

    def forward(self, z, t, cond):
        return (z - self.x0(z, t)) / t[:, None]


def gaussian_trainer(mu_real, mu_fake, **cfg):
    base = dict(guidance_scale=1.0, critic_updates_per_generator_update=1, generator_lr=1e-2, critic_lr=1e-2,
                weight_decay=0.0, dm_min_t=0.1, dm_max_t=0.9, seed=1)
    base.update(cfg)
    trainer = DMDTrainer(GaussianVelocity(mu_real), DMDConfig(**base))
    with torch.no_grad():
        trainer.critic.mu.copy_(torch.as_tensor(mu_fake))
        trainer.generator.mu.copy_(torch.as_tensor(mu_fake))
    return trainer


def test_dm_gradient_formula_on_known_values():
    g = torch.Generator().manual_seed(0)
    x0_gen, x0_real, x0_fake = (torch.randn(5, 3, 4, generator=g) for _ in range(3))
    grad = distribution_matching_gradient(x0_gen, x0_real, x0_fake)
    norm = (x0_gen - x0_real).abs().mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(grad, (x0_fake - x0_real) / norm)
    # The stop-gradient loss has d loss / d x0 = grad / numel.
    x = x0_gen.clone().requires_grad_(True)
    dmd_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / grad.numel())
    with pytest.raises(ValueError, match="shape mismatch"):
        distribution_matching_gradient(x0_gen, x0_real[:, :2], x0_fake)


def test_dm_gradient_two_gaussians_points_to_real():
    """Real N(mu_r, s^2), fake N(mu_f, s^2): x0_fake - x0_real = t^2 / ((1-t)^2 s^2 + t^2) (mu_f - mu_r)
    for every z, so the gradient of every sample is a positive multiple of mu_f - mu_r."""
    g0 = torch.Generator().manual_seed(3)
    mu_r, mu_f = torch.randn(DIM, generator=g0), torch.randn(DIM, generator=g0)
    trainer = gaussian_trainer(mu_r, mu_f)
    x0_gen = mu_f + 0.5 * torch.randn(256, DIM, generator=g0)
    grad, t = trainer.dm_gradient(x0_gen, torch.zeros(256, 1), torch.Generator().manual_seed(7))
    assert ((t >= 0.1) & (t <= 0.9)).all()
    direction = (mu_f - mu_r) / (mu_f - mu_r).norm()
    coef = grad @ direction
    assert (coef > 0).all()
    torch.testing.assert_close(grad, coef[:, None] * direction[None, :], atol=1e-5, rtol=1e-4)
    # A step down the DMD loss moves the samples' mean toward the real mean.
    x = x0_gen.clone().requires_grad_(True)
    dmd_loss(x, grad).backward()
    moved = (x0_gen - 1e3 * x.grad).mean(0)
    assert (moved - mu_r).norm() < (x0_gen.mean(0) - mu_r).norm()


@pytest.mark.parametrize("train_on", ["random_step", "final_step"])
def test_generator_update_moves_generator_toward_real(train_on):
    mu_r, mu_f = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0]), torch.zeros(DIM)
    trainer = gaussian_trainer(mu_r, mu_f, train_on=train_on)
    trainer.step = 1  # the generator's turn (1 critic update per generator update)
    assert trainer.is_generator_update(trainer.step)
    before = trainer.generator.mu.detach().clone()
    trainer.train_step(torch.zeros(512, DIM), torch.zeros(512, 1))
    delta = trainer.generator.mu.detach() - before
    moving = (mu_r - mu_f) != 0
    assert (torch.sign(delta[moving]) == torch.sign((mu_r - mu_f)[moving])).all(), delta


def test_critic_update_tracks_generator_samples():
    """The fake score trains on generator samples: its mean moves toward theirs."""
    mu_r = torch.zeros(DIM)
    trainer = gaussian_trainer(mu_r, torch.zeros(DIM), train_on="final_step")
    with torch.no_grad():
        trainer.generator.mu.fill_(2.0)  # generator samples near 2, critic still believes 0
    before = trainer.critic.mu.detach().clone()
    assert not trainer.is_generator_update(trainer.step)
    trainer.train_step(torch.zeros(512, DIM), torch.zeros(512, 1))
    assert (trainer.critic.mu.detach() > before).all()
    assert torch.equal(trainer.generator.mu.detach(), torch.full((DIM,), 2.0))


def test_cfg_velocity_standard_form():
    torch.manual_seed(0)
    model = ToyVelocityMLP(hidden=16)
    z, t = torch.randn(8, 2), torch.rand(8)
    cond = torch.nn.functional.one_hot(torch.arange(8) % 2, 2).float()
    null = torch.zeros_like(cond)
    c, u = model(z, t, cond), model(z, t, null)
    torch.testing.assert_close(cfg_velocity(model, z, t, cond, null, 4.0), u + 4.0 * (c - u))
    torch.testing.assert_close(cfg_velocity(model, z, t, cond, null, 1.0), c)


def test_turbo_sample_follows_schedule():
    torch.manual_seed(0)
    model = ToyVelocityMLP(hidden=16)
    cond = torch.nn.functional.one_hot(torch.arange(4) % 2, 2).float()
    noise = torch.randn(4, 2)
    out = turbo_sample(model, noise, cond, (1.0, 0.75, 0.5, 0.25), torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    z = noise
    for i, tv in enumerate((1.0, 0.75, 0.5, 0.25)):
        t = torch.full((4,), tv)
        x0 = z - tv * model(z, t, cond)
        if i < 3:
            nxt = (0.75, 0.5, 0.25)[i]
            z = nxt * torch.randn(4, 2, generator=g) + (1 - nxt) * x0
    torch.testing.assert_close(out, x0)
    torch.testing.assert_close(x0_from_velocity(z, model(z, t, cond), t), x0)
    eps = torch.randn(4, 2)
    torch.testing.assert_close(noise_to(x0, eps, t), (1 - 0.25) * x0 + 0.25 * eps)


# --------------------------------------------------------------------------- toy-MLP trainer
def toy_trainer(adversarial=True, ratio=2, seed=0, **cfg):
    torch.manual_seed(seed)
    teacher = ToyVelocityMLP(hidden=32)
    head = nn.Sequential(nn.Linear(32, 16), nn.SiLU(), nn.Linear(16, 1)) if adversarial else None
    config = DMDConfig(guidance_scale=2.0, critic_updates_per_generator_update=ratio, generator_lr=1e-3,
                       critic_lr=1e-3, ema_decay=0.9, adversarial=adversarial, adversarial_weight=0.1,
                       seed=seed, **cfg)
    return DMDTrainer(teacher, config, feature_fn=lambda z, t, c: teacher.features(z, t, c, 2), disc_head=head)


def toy_batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    labels = torch.randint(0, 2, (64,), generator=g)
    return torch.randn(64, 2, generator=g) + 2.0 * labels[:, None], torch.nn.functional.one_hot(labels, 2).float()


def snapshot(trainer):
    parts = {"teacher": trainer.teacher, "generator": trainer.generator, "critic": trainer.critic,
             "ema": trainer.ema, "disc_head": trainer.disc_head}
    return {f"{p}.{k}": v.detach().clone() for p, m in parts.items() if m is not None
            for k, v in m.state_dict().items()}


def changed_parts(before, after):
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    parts = {k.split(".")[0] for k in changed}
    # Within a part that changed, every tensor must have changed (nothing left out of the update).
    for p in parts:
        same = [k for k in before if k.startswith(p + ".") and k not in changed]
        assert not same, f"{p} changed only partly; unchanged: {same}"
    return parts


@pytest.mark.parametrize("train_on", ["random_step", "final_step", "random_step_final_critic"])
def test_each_update_changes_exactly_its_parameters(train_on):
    trainer = toy_trainer(train_on=train_on, ratio=2)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    s0 = snapshot(trainer)
    logs = trainer.train_step(*toy_batch(0))  # critic update
    assert "loss_fake" in logs and "loss_disc" in logs
    s1 = snapshot(trainer)
    assert changed_parts(s0, s1) == {"critic", "disc_head"}
    trainer.train_step(*toy_batch(1))  # critic update
    s2 = snapshot(trainer)
    logs = trainer.train_step(*toy_batch(2))  # generator update
    assert "loss_dmd" in logs and "loss_gan" in logs
    s3 = snapshot(trainer)
    assert changed_parts(s2, s3) == {"generator", "ema"}
    assert trainer.step == 3 and trainer.generator_steps == 1


def test_generator_update_without_backward_simulation_uses_real_data():
    trainer = toy_trainer(adversarial=False, ratio=1, backward_simulation=False)
    real, cond = toy_batch(0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    z1 = trainer.generator_input(real, cond, 2, g1)
    z2 = trainer.generator_input(real + 1.0, cond, 2, g2)
    torch.testing.assert_close(z2 - z1, torch.full_like(z1, 0.5))  # (1 - t_2) * shift


def test_ema_update_math():
    torch.manual_seed(0)
    ema, online = nn.Linear(4, 3), nn.Linear(4, 3)
    e0 = {k: v.clone() for k, v in ema.state_dict().items()}
    ema_update(ema, online, 0.9)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, 0.9 * e0[k] + 0.1 * online.state_dict()[k])
    # Inside the trainer: after a generator update, ema = d * ema_before + (1 - d) * generator_after.
    trainer = toy_trainer(adversarial=False, ratio=1)
    trainer.train_step(*toy_batch(0))
    before = {k: v.clone() for k, v in trainer.ema.state_dict().items()}
    trainer.train_step(*toy_batch(1))
    gen = trainer.generator.state_dict()
    for k, v in trainer.ema.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * gen[k])


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    total = 14
    full = toy_trainer()
    full.train(toy_batch, total, progress=False)

    interrupted = toy_trainer()

    def dying_batches(step):
        if step == 10:
            raise Interrupt
        return toy_batch(step)

    with pytest.raises(Interrupt):
        interrupted.train(dying_batches, total, progress=False, checkpoint_dir=str(tmp_path / "ck"),
                          checkpoint_every=4)
    resumed = toy_trainer()
    resumed.load(str(tmp_path / "ck"))
    assert resumed.step == 8
    resumed.train(toy_batch, total, progress=False)

    a, b = snapshot(full), snapshot(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for opt_a, opt_b in ((full.opt_generator, resumed.opt_generator), (full.opt_critic, resumed.opt_critic)):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for name in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][name]), torch.as_tensor(sb[i][name])), (i, name)
    assert full.generator_steps == resumed.generator_steps


def test_load_rejects_other_config(tmp_path):
    trainer = toy_trainer(adversarial=False)
    trainer.train(toy_batch, 2, progress=False, checkpoint_dir=str(tmp_path / "ck"))
    other = toy_trainer(adversarial=False, dm_min_t=0.2)
    with pytest.raises(ValueError, match="dm_min_t"):
        other.load(str(tmp_path / "ck"))
    with pytest.raises(FileNotFoundError):
        other.load(str(tmp_path / "missing"))


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="train_on"):
        DMDConfig(train_on="every_step")
    with pytest.raises(ValueError, match="student_timesteps"):
        DMDConfig(student_timesteps=(0.5, 0.75))
    with pytest.raises(ValueError, match="feature_fn"):
        DMDTrainer(ToyVelocityMLP(hidden=8), DMDConfig(adversarial=True))
    with pytest.raises(ValueError, match="unknown DMDConfig keys"):
        DMDConfig.from_dict({"guidance": 3})
    trainer = toy_trainer(adversarial=False)
    real, cond = toy_batch(0)
    with pytest.raises(ValueError, match="batch size mismatch"):
        trainer.train_step(real[:10], cond)
    cfg = DMDConfig(seed=3)
    assert DMDConfig.from_dict(cfg.to_dict()) == cfg
    assert dataclasses.replace(cfg, seed=4) != cfg


def test_token_discriminator_head_shapes_and_errors():
    from audiox_engine.audiox.distill.disc_head import TokenDiscriminatorHead
    torch.manual_seed(0)
    head = TokenDiscriminatorHead(dim=12, hidden=8)
    feats = torch.randn(3, 5, 12)
    logits = head(feats)
    assert logits.shape == (3, 5)
    # Per-token: each token's logit depends on that token only.
    torch.testing.assert_close(head(feats[:, 2:3])[:, 0], logits[:, 2])
    assert head(torch.randn(4, 12)).shape == (4,)
    with pytest.raises(ValueError, match="features must be"):
        head(torch.randn(3, 5, 11))
