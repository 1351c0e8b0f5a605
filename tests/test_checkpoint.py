"""Checkpoint round trips, prefixes, mismatch reports and the unsafe-pickle refusal."""

import os
import pickle

import pytest
import torch

from audiox_engine.audiox.checkpoint import CheckpointError, UnsafeCheckpointError, load_into, read_state_dict, save_safetensors
from audiox_engine.audiox.config import get_preset
from audiox_engine.audiox.dit import MMDiffusionTransformer, MMDiTWrapper
from helpers import randomize_, rel_err


@pytest.fixture(scope="module")
def trained():
    return randomize_(MMDiTWrapper(get_preset("tiny").dit), std=0.05, seed=11)


def _fresh():
    return MMDiTWrapper(get_preset("tiny").dit)


def _assert_same(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_safetensors_round_trip(tmp_path, trained):
    path = tmp_path / "dit.safetensors"
    save_safetensors(trained.state_dict(), path, metadata={"config": {"name": "tiny"}})
    assert os.listdir(tmp_path) == ["dit.safetensors"]
    m = _fresh()
    rep = load_into(m, path, strict=True)
    assert rep.ok and rep.prefix == ""
    _assert_same(m, trained)


@pytest.mark.parametrize("wrap", ["lightning", "raw", "student", "module"])
def test_pickle_formats_and_official_prefixes(tmp_path, trained, wrap):
    sd = {"model." + k: v for k, v in trained.state_dict().items()}  # the release: model.model.<dit>
    sd["maf_block.unified_experts"] = torch.randn(24, 64)  # other sub-models in the same file
    if wrap == "lightning":
        obj = {"state_dict": sd, "epoch": 3, "global_step": 10}
    elif wrap == "student":
        obj = {"student." + k: v for k, v in sd.items()}
    elif wrap == "module":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        obj = sd
    path = tmp_path / "model.ckpt"
    torch.save(obj, path)
    dit = MMDiffusionTransformer(get_preset("tiny").dit)
    rep = load_into(dit, path, strict=True)
    assert rep.ok
    assert rep.prefix.endswith("model.model.")
    _assert_same(dit, trained.model)


def test_mismatches_are_reported_by_name_and_strict_leaves_model_untouched(trained):
    sd = dict(trained.state_dict())
    del sd["model.transformer.project_in.weight"]
    sd["model.transformer.extra.weight"] = torch.randn(3)
    sd["model.to_timestep_embed.0.bias"] = torch.randn(7)
    m = _fresh()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_into(m, sd, strict=True)
    msg = str(e.value)
    assert "model.transformer.project_in.weight" in msg
    assert "model.transformer.extra.weight" in msg
    assert "model.to_timestep_embed.0.bias: file (7,) vs model (128,)" in msg
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), f"strict failure modified {k}"
    # non-strict: loads what fits, reports the rest
    rep = load_into(m, sd, strict=False)
    assert rep.missing == ["model.transformer.project_in.weight"]
    assert rep.unexpected == ["model.transformer.extra.weight"]
    assert rep.mismatched == [("model.to_timestep_embed.0.bias", (7,), (128,))]
    assert torch.equal(m.state_dict()["model.transformer.project_out.weight"],
                       trained.state_dict()["model.transformer.project_out.weight"])


def test_checkpoint_for_another_model_fails_clearly():
    full_like = {"model.model.transformer.project_in.weight": torch.randn(1536, 64)}
    with pytest.raises(CheckpointError, match="file \\(1536, 64\\) vs model \\(128, 64\\)"):
        load_into(_fresh(), full_like, strict=True)
    with pytest.raises(CheckpointError, match="no key fits"):
        load_into(_fresh(), {"foo.bar": torch.randn(2)})


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    with pytest.raises(UnsafeCheckpointError, match="refused: its pickle would run code") as e:
        read_state_dict(path)
    torch.save({"state_dict": {"w": torch.ones(1)}, "hparams": Evil()}, tmp_path / "evil2.ckpt")
    with pytest.raises(UnsafeCheckpointError) as e:
        read_state_dict(tmp_path / "evil2.ckpt")
    assert "system" in str(e.value)  # names what it asked for
    # Never the advice to load unsafely, and one line.
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content, what", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    (b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", "HTML"),
    (b"epoch,loss\n1,0.5\n", "text file"),
    (b"", "empty file"),
    (bytes(range(1, 200)), "not a PyTorch checkpoint"),
])
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, content, what):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=what) as e:
        read_state_dict(path)
    assert not isinstance(e.value, UnsafeCheckpointError)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        read_state_dict(bad)
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint extension"):
        read_state_dict(other)
    trunc = tmp_path / "trunc.ckpt"
    trunc.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError):
        read_state_dict(trunc)


def test_vae_weight_norm_in_parametrization_names_loads(tmp_path):
    """Files from newer torch name weight norm `parametrizations.weight.original0/1`."""
    from audiox_engine.audiox.pretransform import AutoencoderPretransform
    from audiox_engine.audiox.vae import VAEConfig

    src = randomize_(AutoencoderPretransform(VAEConfig.tiny()), std=0.1, seed=4)
    sd = {}
    for k, v in src.state_dict().items():
        k = k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1")
        sd["pretransform." + k] = v
    save_safetensors(sd, tmp_path / "vae.safetensors")
    dst = AutoencoderPretransform(VAEConfig.tiny())
    rep = load_into(dst, tmp_path / "vae.safetensors", strict=True)
    assert rep.ok and rep.prefix == "pretransform."
    z = torch.randn(1, 64, 3)
    with torch.no_grad():
        # stored as g / v and refolded: equal up to rounding
        assert rel_err(dst.decode(z), src.decode(z)) < 1e-5
