"""Every official key and shape, built full-size on the meta device (no memory used)."""

import torch

from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiTWrapper
from audiox_engine.audiox.maf import MAF_Block
from helpers import read_reference_keys


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_full_size_dit_keys_match_official():
    cfg = get_preset("audiox-turbo")
    with torch.device("meta"):
        dit = MMDiTWrapper(cfg.dit)
    ref = read_reference_keys("dit_keys.tsv", {"transformer.layers.": 24})
    ours = _shapes(dit.model, "")
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert {k: ours[k] for k in ref} == ref
    # the wrapper gives the release's checkpoint prefix
    assert all(k.startswith("model.") for k in dit.state_dict())
    n_params = sum(p.numel() for p in dit.parameters())
    assert abs(n_params / 1e6 - 2217.6) < 0.5, n_params


def test_full_size_maf_keys_match_official():
    cfg = get_preset("audiox-turbo")
    with torch.device("meta"):
        maf = MAF_Block(cfg.maf)
    ref = read_reference_keys("maf_keys.tsv", {"fusion_transformer.layers.": 8})
    ours = _shapes(maf, "maf_block.")
    assert ours == ref


def test_real_attention_is_64_heads_of_24():
    cfg = get_preset("audiox-turbo").dit
    assert (cfg.attn_heads, cfg.head_dim, cfg.ffn_hidden, cfg.latent_seq_len) == (64, 24, 4096, 237)
