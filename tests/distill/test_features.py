"""Early-block feature tap, and the DMD trainer driving the AudioX DiT (tiny config)."""
import pytest
import torch

from audiox_engine.audiox.config import DiTConfig
from audiox_engine.audiox.dit import MMDiffusionTransformer
from audiox_engine.audiox.distill.disc_head import TokenDiscriminatorHead
from audiox_engine.audiox.distill.dmd import DMDConfig, DMDTrainer
from audiox_engine.audiox.distill.features import early_block_features
from audiox_engine.audiox.distill.toy import torch_threads

TINY = DiTConfig(embed_dim=48, depth=3, num_heads=12, cond_token_dim=32, global_cond_dim=0,
                 mlp_ratio=2.0, latent_seq_len=9, num_cond_tokens=12)


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    dit = MMDiffusionTransformer(TINY)
    with torch.no_grad():  # the release zero-inits these convs; randomise so every path matters
        for p in dit.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return dit


def inputs(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, TINY.io_channels, TINY.latent_frames, generator=g), torch.rand(b, generator=g),
            torch.randn(b, TINY.num_cond_tokens, TINY.cond_token_dim, generator=g))


def test_early_block_features_match_full_forward():
    dit = tiny_dit().eval().requires_grad_(False)
    z, t, cond = inputs()
    seen = []
    h = dit.transformer.layers[1].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    dit(z, t, cond)
    h.remove()
    fn = early_block_features(dit, dit.transformer.layers, 2)
    z = z.requires_grad_(True)
    feats = fn(z, t, cond)
    assert feats.shape == (2, TINY.latent_seq_len, TINY.embed_dim)
    torch.testing.assert_close(feats, seen[0])
    feats.square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert not dit.transformer.layers[1]._forward_hooks, "hook left behind"
    with pytest.raises(ValueError, match="num_blocks"):
        early_block_features(dit, dit.transformer.layers, 4)


def test_dmd_trainer_runs_on_the_audiox_dit():
    """Plugging the real velocity model in: critic and generator updates with CFG and the GAN term."""
    with torch_threads(1):
        teacher = tiny_dit()
        cfg = DMDConfig(guidance_scale=6.0, critic_updates_per_generator_update=1, generator_lr=1e-4,
                        critic_lr=1e-4, adversarial=True, adversarial_weight=0.1)
        trainer = DMDTrainer(teacher, cfg, feature_fn=early_block_features(teacher, teacher.transformer.layers, 2),
                             disc_head=TokenDiscriminatorHead(TINY.embed_dim, 16))
        real, _, cond = inputs(b=2)
        gen_before = [p.detach().clone() for p in trainer.generator.parameters()]
        logs_c = trainer.train_step(real, cond)
        logs_g = trainer.train_step(real, cond)
        assert {"loss_fake", "loss_disc"} <= set(logs_c) and {"loss_dmd", "loss_gan"} <= set(logs_g)
        moved = [not torch.equal(a, b) for a, b in zip(gen_before, trainer.generator.parameters())]
        # Exactly the parameters the loss depends on move. (Unused by the forward: to_cond_embed;
        # cross-attention queries see one key, so softmax makes them irrelevant.)
        has_grad = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainer.generator.parameters()]
        assert moved == has_grad
        assert sum(moved) >= len(moved) - 5
        assert all(p.grad is None for p in teacher.parameters())
