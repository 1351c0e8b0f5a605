"""The Synchformer video encoder: official keys, parity with a plain restatement of the
release's computation, checkpoint loading, the engine's path, and the 25 fps frame pick."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from audiox_engine.audiox.checkpoint import CheckpointError
from audiox_engine.audiox.media import load_video_and_sync_frames
from audiox_engine.audiox.synchformer import Synchformer, SynchformerConfig, sync_pixels
from helpers import read_reference_keys, rel_err, write_gray_video

# Small enough for the CPU, with a 3x3 patch grid (not 8x8 like the 8 feature frames, so a
# swapped time/space axis cannot pass) and 4 overlapping segments per 40-frame clip.
SMALL = SynchformerConfig(width=64, depth=2, heads=2, image_size=48)
U_BF16 = torch.finfo(torch.bfloat16).eps / 2   # unit roundoff
U_FP32 = torch.finfo(torch.float32).eps / 2


def test_full_size_keys_shapes_and_parameter_count():
    with torch.device("meta"):
        model = Synchformer(SynchformerConfig.full())
    ref = read_reference_keys("synchformer_keys.tsv", {})
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ref) - set(ours)) == [] and sorted(set(ours) - set(ref)) == []
    assert ours == ref
    assert sum(p.numel() for p in model.parameters()) == 122_440_704
    assert model.vfeat_extractor.patch_embed.proj.weight.numel() + 768 == 590_592  # the unused 2-D embedding


def _random_state_dict(config: SynchformerConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fresh noise under the official key names (norm weights around 1), plus another
    sub-model's key the loader must ignore, as in the release's file."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in Synchformer(config).state_dict().items():
        noise = torch.randn(v.shape, generator=g)
        is_norm_weight = "norm" in k.rsplit(".", 2)[-2] and k.endswith(".weight")
        sd[k] = 1 + 0.1 * noise if is_norm_weight else 0.05 * noise
    sd["afeat_extractor.blocks.0.weight"] = torch.zeros(3)
    return sd


# ----------------------------------------------------------------------------- plain reference


def _naive_features(sd: dict[str, torch.Tensor], video: torch.Tensor, c: SynchformerConfig) -> torch.Tensor:
    """The release's computation restated in float64 from the facts: full attention over every
    token with masks for the divided attention, the whole aggregation layer, then its CLS."""
    p = {k[len("vfeat_extractor."):]: v.double() for k, v in sd.items() if k.startswith("vfeat_extractor.")}
    heads, d = c.heads, c.width

    def ln(x, name):
        return F.layer_norm(x, (d,), p[name + ".weight"], p[name + ".bias"], eps=1e-6)

    def attention(q, k, v, mask=None):  # (B, N, H, dh) each
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).flatten(2)

    def divided(x, name, mask):
        q, k, v = (x @ p[name + ".qkv.weight"].T + p[name + ".qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, d // heads)) for t in (q, k, v))
        return attention(q, k, v, mask) @ p[name + ".proj.weight"].T + p[name + ".proj.bias"]

    t, s = c.feature_frames, c.grid ** 2
    frame = torch.tensor([-1] + [i // s for i in range(t * s)])
    place = torch.tensor([-1] + [i % s for i in range(t * s)])
    is_cls = frame < 0
    either_cls = is_cls[:, None] | is_cls[None, :]
    time_mask = either_cls | (place[:, None] == place[None, :])     # same spatial position, across frames
    space_mask = either_cls | (frame[:, None] == frame[None, :])    # same frame
    out = []
    for start in range(0, video.shape[1] - c.segment_frames + 1, c.segment_stride):
        seg = video[:, start:start + c.segment_frames].double().permute(0, 2, 1, 3, 4)  # (B, 3, 16, H, W)
        size = (c.tubelet, c.patch_size, c.patch_size)
        tok = F.conv3d(seg, p["patch_embed_3d.proj.weight"], p["patch_embed_3d.proj.bias"], stride=size)
        tok = tok.flatten(2).transpose(1, 2)                          # (B, t*s, D), time-major
        pos = torch.stack([p["pos_embed"][0, 1 + j] + p["temp_embed"][0, f] for f in range(t) for j in range(s)])
        x = torch.cat([(p["cls_token"] + p["pos_embed"][:, :1]).expand(len(tok), -1, -1), tok + pos], dim=1)
        for i in range(c.depth):
            b = f"blocks.{i}"
            x = x + divided(ln(x, b + ".norm3"), b + ".timeattn", time_mask)
            x = x + divided(ln(x, b + ".norm1"), b + ".attn", space_mask)
            h = ln(x, b + ".norm2") @ p[b + ".mlp.fc1.weight"].T + p[b + ".mlp.fc1.bias"]
            x = x + F.gelu(h) @ p[b + ".mlp.fc2.weight"].T + p[b + ".mlp.fc2.bias"]
        frames = ln(x[:, 1:], "norm").reshape(-1, s, d)               # (B*t, s, D)
        a = "spatial_attn_agg."
        y = torch.cat([p[a + "cls_token"].expand(len(frames), -1, -1), frames], dim=1)
        q, k, v = (ln(y, a + "norm1") @ p[a + "self_attn.in_proj_weight"].T
                   + p[a + "self_attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (z.unflatten(-1, (heads, d // heads)) for z in (q, k, v))
        y = y + attention(q, k, v) @ p[a + "self_attn.out_proj.weight"].T + p[a + "self_attn.out_proj.bias"]
        h = ln(y, a + "norm2") @ p[a + "linear1.weight"].T + p[a + "linear1.bias"]
        y = y + F.gelu(h) @ p[a + "linear2.weight"].T + p[a + "linear2.bias"]
        out.append(y[:, 0].reshape(-1, t, d))
    return torch.cat(out, dim=1)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    sd = _random_state_dict(SMALL)
    path = tmp_path_factory.mktemp("synchformer") / "synchformer_state_dict.pth"
    torch.save(sd, path)
    return path, sd


def _clip(batch=2, frames=40, seed=1, size=SMALL.image_size):
    g = torch.Generator().manual_seed(seed)
    return sync_pixels(torch.randint(0, 256, (batch, frames, 3, size, size), generator=g))


def test_matches_plain_reference_on_overlapping_segments(small_checkpoint):
    path, sd = small_checkpoint
    model = Synchformer.from_file(path, SMALL)
    video = _clip()
    got = model.encode_video_with_sync(video)
    want = _naive_features(sd, video, SMALL)
    assert got.shape == (2, 4 * 8, 64) and got.dtype == torch.float32
    assert rel_err(got, want) <= 1e-4
    # segments are independent: the second segment alone gives the second 8 features
    alone = model.encode_video_with_sync(video[:, 8:24])
    assert rel_err(alone, got[:, 8:16]) <= 1e-5
    # frames past the last whole segment are dropped, as the release does
    assert torch.equal(model.encode_video_with_sync(video[:, :47]), got)


def test_loading_is_strict_on_the_official_keys(small_checkpoint, tmp_path):
    path, sd = small_checkpoint
    without_unused = {k: v for k, v in sd.items() if ".patch_embed.proj." not in k}
    Synchformer(SMALL).load_weights(without_unused)          # the unused 2-D embedding may be absent
    missing = {k: v for k, v in sd.items() if k != "vfeat_extractor.blocks.1.timeattn.qkv.bias"}
    with pytest.raises(CheckpointError, match="blocks.1.timeattn.qkv.bias"):
        Synchformer(SMALL).load_weights(missing)
    with pytest.raises(CheckpointError, match="extra"):
        Synchformer(SMALL).load_weights({**sd, "vfeat_extractor.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"(?s)shape mismatches.*file \(64,\) vs model \(32,\)"):
        Synchformer(SynchformerConfig(width=32, depth=2, heads=2, image_size=48)).load_weights(sd, str(path))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "s.safetensors"))
    a = Synchformer.from_file(tmp_path / "s.safetensors", SMALL)
    b = Synchformer.from_file(path, SMALL)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_seeded_weights_are_deterministic_and_leave_the_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = Synchformer.seeded(SynchformerConfig.tiny(), 0), Synchformer.seeded(SynchformerConfig.tiny(), 0)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.vfeat_extractor.pos_embed.std() > 0.01  # not the release's zero init: features carry the video


def test_bad_inputs_are_named():
    model = Synchformer(SMALL)
    with pytest.raises(ValueError, match="at least 16 frames"):
        model.encode_video_with_sync(_clip(frames=15))
    with pytest.raises(ValueError, match=r"\(B, T, 3, 48, 48\)"):
        model.encode_video_with_sync(torch.zeros(1, 16, 3, 32, 32))


# ----------------------------------------------------------------------------- engine


def _large_activation_checkpoint(sd):
    """The same weights with features of |x| ~ 440, about half of their norm varying along the
    sequence: the release's packaged sync features (data/media/sync/*.pth) peak at 441 with
    38-50 % of their norm varying. A bf16 output rounding would cost ~440 * 2^-9 each."""
    sd = dict(sd)
    key = "vfeat_extractor.spatial_attn_agg.linear2.weight"
    sd[key] = sd[key] * 800
    return sd


def _varying(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("large", [False, True], ids=["unit", "large"])
def test_engine_matches_reference(small_checkpoint, dtype, large):
    from audiox_engine import engine

    _, sd = small_checkpoint
    reference = Synchformer(SMALL)
    reference.load_weights(_large_activation_checkpoint(sd) if large else sd)
    video = _clip(batch=1, frames=24, seed=2)  # 2 segments
    want = reference.encode_video_with_sync(video)
    fast = engine.accelerate(reference, dtype=dtype)
    assert fast is not reference and type(fast.vfeat_extractor).__name__ == "AcceleratedMotionFormer"
    got = fast.encode_video_with_sync(video)
    if large:
        assert 300 < want.abs().max() < 600 and _varying(want).norm() > 0.3 * want.norm()
    # fp32: only the order of operations differs. bf16: each block rounds its ~7 matmul inputs
    # and outputs to bf16 (error ~u each, adding up like a random walk over 2 blocks: ~4u).
    tol = 8 * U_BF16 if dtype == torch.bfloat16 else 256 * U_FP32
    assert got.dtype == torch.float32 and rel_err(got, want) <= tol
    assert rel_err(_varying(got), _varying(want)) <= tol  # what depends on the video, too
    info = engine.describe(fast)["synchformers"]
    assert [(s["path"], s["blocks"], s["attention"], s["dtype"]) for s in info] == [
        ("vfeat_extractor", 2, "sdpa", str(dtype).replace("torch.", ""))]


def test_engine_keeps_official_keys_and_does_not_wrap_twice(small_checkpoint):
    from audiox_engine import engine

    _, sd = small_checkpoint
    reference = Synchformer(SMALL)
    reference.load_weights(sd)
    fast = engine.accelerate(reference, dtype=torch.float32, attention="triton")  # the DiT's kernel: falls back
    assert set(fast.state_dict()) == set(reference.state_dict())
    assert engine.describe(fast)["synchformers"][0]["attention"] == "sdpa"
    with pytest.raises(ValueError, match="no Synchformer"):
        engine.accelerate(fast, dtype=torch.float32, inplace=True)
    with pytest.raises(ValueError, match="segments"):
        fast.vfeat_extractor(torch.zeros(1, 3, 16, 48, 48))


# ----------------------------------------------------------------------------- media


def _levels(video: torch.Tensor, unit: int) -> list[int]:
    return [round(v / unit) for v in video.float().mean(dim=(1, 2, 3)).tolist()]


@pytest.mark.parametrize("fps,sync_picks,clip_picks", [
    (30, list(range(0, 30, 2)) + [28] * 10, [0, 6, 12, 18, 24]),   # step ceil(30/25) = 2: 15 frames, then the last
    (50, list(range(0, 50, 2)), [0, 10, 20, 30, 40]),              # step 2: exactly 25
])
def test_sync_frames_step_like_the_release(tmp_path, fps, sync_picks, clip_picks):
    path = tmp_path / f"gray{fps}.mkv"
    write_gray_video(path, [5 * i for i in range(fps)], fps=fps)
    clip, sync = load_video_and_sync_frames(path, seconds_total=1, size=32, sync_size=24)
    assert clip.shape == (5, 3, 32, 32) and sync.shape == (25, 3, 24, 24)
    assert clip.dtype == sync.dtype == torch.uint8
    assert _levels(sync, 5) == sync_picks
    assert _levels(clip, 5) == clip_picks


def test_short_clip_repeats_its_last_frame_and_start_time(tmp_path):
    path = tmp_path / "short.mkv"
    write_gray_video(path, [10 * i for i in range(10)], fps=25)
    _, sync = load_video_and_sync_frames(path, seconds_total=1, size=16, sync_size=16)
    assert _levels(sync, 10) == list(range(10)) + [9] * 15
    clip, late = load_video_and_sync_frames(path, seconds_start=0.2, seconds_total=0.4, size=16, sync_size=16)
    assert _levels(late, 10) == [5, 6, 7, 8, 9, 9, 9, 9, 9, 9] and _levels(clip, 10) == [5, 5]  # frame 10 does not exist


def test_one_decode_pass(tmp_path, monkeypatch):
    import av

    path = tmp_path / "gray.mkv"
    write_gray_video(path, [10 * i for i in range(20)], fps=25)
    opened = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    load_video_and_sync_frames(path, seconds_total=0.8, size=16, sync_size=16)
    assert len(opened) == 1
