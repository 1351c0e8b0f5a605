"""Synchformer video features: the release's ``sync`` input of the video conditioner.

The release computes, for every video-conditioned generation, Synchformer features of the
clip at 25 fps: a MotionFormer ViT-B (divided space-time attention over 2x16x16 tubelets)
per 16-frame segment (stride 8), then one pre-norm transformer layer per feature frame
whose CLS token pools the frame's patches: 8 features of width 768 per segment, flattened
to (B, 8 * segments, 768) = (B, 240, 768) for 250 frames. It runs in fp32.

Module and parameter names mirror the release (``Synchformer.vfeat_extractor.*``), so the
release's ``synchformer_state_dict.pth`` loads unchanged (reference/synchformer_keys.tsv).
The 2-D ``patch_embed.proj`` is in that file but never used by the release's forward; it is
kept here so the keys match, and it may be absent from a file.

Shapes: segment tokens are time-major, ``1 + t * h * w`` per segment (CLS first), with
t = segment_frames / tubelet feature frames and h = w = image_size / patch_size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .checkpoint import CheckpointError, LoadReport, read_state_dict

__all__ = ["SynchformerConfig", "Synchformer", "MotionFormer", "sync_pixels"]

PREFIX = "vfeat_extractor."
UNUSED_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias")  # the unused 2-D patch embedding


@dataclass(frozen=True)
class SynchformerConfig:
    """Sizes of the Synchformer video encoder. ``full()`` is the release's, ``tiny()`` the ``tiny`` preset's."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: int = 4
    image_size: int = 224
    patch_size: int = 16
    tubelet: int = 2            # frames per 3-D patch
    segment_frames: int = 16
    segment_stride: int = 8
    fps: int = 25               # the clip is read at this rate for the Synchformer
    eps: float = 1e-6           # every LayerNorm's

    @property
    def grid(self) -> int:
        """Patches per side of a frame."""
        return self.image_size // self.patch_size

    @property
    def feature_frames(self) -> int:
        """Features per segment (= its tubelets along time)."""
        return self.segment_frames // self.tubelet

    def segments(self, frames: int) -> int:
        """How many 16-frame segments (stride 8) a clip of ``frames`` frames gives."""
        return max(0, (frames - self.segment_frames) // self.segment_stride + 1)

    def num_features(self, frames: int) -> int:
        """Sync tokens for a clip of ``frames`` frames: 8 per segment (240 for 250 frames)."""
        return self.segments(frames) * self.feature_frames

    def validate(self) -> SynchformerConfig:
        if self.width % self.heads:
            raise ValueError(f"Synchformer width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size or self.segment_frames % self.tubelet:
            raise ValueError(f"Synchformer: image_size {self.image_size} / patch_size {self.patch_size} and "
                             f"segment_frames {self.segment_frames} / tubelet {self.tubelet} must divide")
        return self

    @classmethod
    def full(cls) -> SynchformerConfig:
        return cls()

    @classmethod
    def tiny(cls) -> SynchformerConfig:
        """Width 64 (2 heads of 32), 2 layers, 64x64 frames (4x4 patches); same segments and rate."""
        return cls(width=64, depth=2, heads=2, image_size=64)


def sync_pixels(frames: torch.Tensor) -> torch.Tensor:
    """Frames (..., 3, H, W) in [0, 255] (uint8 or float) -> float32 scaled to [0, 1], then
    normalised with mean 0.5 and std 0.5, as the release's ``sync_transform``."""
    return (frames.float() / 255.0 - 0.5) / 0.5


# ----------------------------------------------------------------------------- modules


class PatchEmbed(nn.Module):
    """The release's 2-D patch embedding: in the checkpoint, unused by the forward."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, c.width, kernel_size=c.patch_size, stride=c.patch_size)


class PatchEmbed3D(nn.Module):
    """(N, 3, T, H, W) -> tubelet tokens (N, t*h*w, D), time-major."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        size = (c.tubelet, c.patch_size, c.patch_size)
        self.proj = nn.Conv3d(3, c.width, kernel_size=size, stride=size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DividedAttention(nn.Module):
    """Self-attention within groups of patch tokens, each group plus the CLS token; the CLS
    token itself attends to every token. ``axis="time"`` groups the patches at one spatial
    position across frames, ``axis="space"`` the patches of one frame."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, axis: str) -> torch.Tensor:
        """x (N, 1 + frames * P, D) -> (N, 1 + frames * P, D)."""
        n, length, dim = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(n, length, 3, h, dim // h).permute(2, 0, 3, 1, 4)  # each (N, H, L, d)
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)                   # (N, H, 1, d)
        per_frame = (length - 1) // frames

        def grouped(t: torch.Tensor) -> torch.Tensor:
            """(N, H, 1 + F*P, d) -> (N*G, H, L, d): its groups, each with the CLS token first."""
            patches = t[:, :, 1:].unflatten(2, (frames, per_frame))                  # (N, H, F, P, d)
            if axis == "time":
                patches = patches.transpose(2, 3)                                     # (N, H, P, F, d)
            groups = patches.shape[2]
            cls = t[:, :, :1, None].expand(-1, -1, groups, -1, -1)                   # (N, H, G, 1, d)
            return torch.cat([cls, patches], dim=3).transpose(1, 2).flatten(0, 1)

        out = F.scaled_dot_product_attention(grouped(q), grouped(k), grouped(v))[:, :, 1:]  # (N*G, H, L-1, d)
        out = out.unflatten(0, (n, -1)).transpose(1, 2)                               # (N, H, G, L-1, d)
        if axis == "time":
            out = out.transpose(2, 3)                                                 # (N, H, F, P, d)
        out = torch.cat([cls_out, out.flatten(2, 3)], dim=2)                          # (N, H, L, d)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DividedSpaceTimeBlock(nn.Module):
    """Time attention (``norm3``/``timeattn``), then space attention (``norm1``/``attn``), then
    the MLP (``norm2``), each pre-norm with a residual."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(c.width, eps=c.eps)
        self.attn = DividedAttention(c.width, c.heads)
        self.timeattn = DividedAttention(c.width, c.heads)
        self.norm2 = nn.LayerNorm(c.width, eps=c.eps)
        self.mlp = Mlp(c.width, c.mlp_ratio * c.width)
        self.norm3 = nn.LayerNorm(c.width, eps=c.eps)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, "time")
        x = x + self.attn(self.norm1(x), frames, "space")
        return x + self.mlp(self.norm2(x))


class SpatialAttentionAggregation(nn.Module):
    """One pre-norm transformer encoder layer (GELU, eps 1e-6) over a frame's patches with
    its own CLS token prepended and no position embedding; returns the CLS output.

    Parameter names are ``nn.TransformerEncoderLayer``'s, as in the release."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.self_attn = nn.MultiheadAttention(c.width, c.heads, batch_first=True)
        self.linear1 = nn.Linear(c.width, c.mlp_ratio * c.width)
        self.linear2 = nn.Linear(c.mlp_ratio * c.width, c.width)
        self.norm1 = nn.LayerNorm(c.width, eps=c.eps)
        self.norm2 = nn.LayerNorm(c.width, eps=c.eps)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (M, P, D) -> (M, D)."""
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        h = self.norm1(x)
        # Only the CLS row is returned; in a single layer it depends on no other query row.
        cls = x[:, :1] + self.self_attn(h[:, :1], h, h, need_weights=False)[0]
        cls = cls + self.linear2(F.gelu(self.linear1(self.norm2(cls))))
        return cls[:, 0]


class MotionFormer(nn.Module):
    """The release's ``vfeat_extractor``: segments (B, S, 3, T, H, W) -> features (B, S, t, D)."""

    def __init__(self, c: SynchformerConfig):
        super().__init__()
        self.config = c
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.grid ** 2 + 1, c.width))
        self.temp_embed = nn.Parameter(torch.zeros(1, c.feature_frames, c.width))
        self.patch_embed = PatchEmbed(c)
        self.patch_embed_3d = PatchEmbed3D(c)
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(c) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width, eps=c.eps)
        self.spatial_attn_agg = SpatialAttentionAggregation(c)
        for p in (self.cls_token, self.pos_embed, self.temp_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) -> tokens (N, 1 + t*h*w, D): tubelets plus CLS, with position
        = spatial embedding (CLS at slot 0) + the frame's time embedding."""
        c = self.config
        if tuple(x.shape[1:]) != (3, c.segment_frames, c.image_size, c.image_size):
            raise ValueError(f"Synchformer segments must be (N, 3, {c.segment_frames}, {c.image_size}, "
                             f"{c.image_size}), got {tuple(x.shape)}")
        tokens = self.patch_embed_3d(x)
        frames = self.temp_embed.shape[1]
        pos = self.pos_embed[:, 1:].repeat(1, frames, 1) + self.temp_embed.repeat_interleave(c.grid ** 2, dim=1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens + pos], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.shape[:2]
        frames = self.temp_embed.shape[1]
        tokens = self.embed(x.flatten(0, 1))
        for block in self.blocks:
            tokens = block(tokens, frames)
        patches = self.norm(tokens[:, 1:])                                    # CLS dropped
        per_frame = patches.reshape(b * s * frames, -1, patches.shape[-1])   # (N*t, h*w, D)
        return self.spatial_attn_agg(per_frame).view(b, s, frames, -1)


class Synchformer(nn.Module):
    """The release's Synchformer (video branch only) with its ``encode_video_with_sync``."""

    def __init__(self, config: SynchformerConfig | None = None):
        super().__init__()
        self.config = (config or SynchformerConfig.full()).validate()
        self.vfeat_extractor = MotionFormer(self.config)

    @classmethod
    def seeded(cls, config: SynchformerConfig, seed: int = 0) -> Synchformer:
        """Random weights drawn from ``seed`` (same on every machine), the caller's RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config).eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike, config: SynchformerConfig | None = None) -> Synchformer:
        """The release's ``synchformer_state_dict.pth`` (``torch.load(weights_only=True)``) or a
        ``.safetensors`` file; only ``vfeat_extractor.*`` keys are read, strictly."""
        model = cls(config)
        model.load_weights(read_state_dict(path), source=os.fspath(path))
        return model.eval()

    def load_weights(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> LoadReport:
        """Load the ``vfeat_extractor.*`` entries of ``state_dict`` (others are ignored, as the
        release's ``Synchformer.load_state_dict`` does). Every key must be there with its shape,
        except the unused 2-D ``patch_embed.proj``; nothing is copied unless all fit."""
        sub = {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
        target = self.vfeat_extractor.state_dict()
        report = LoadReport(prefix=PREFIX)
        report.missing = sorted(set(target) - set(sub) - set(UNUSED_KEYS))
        report.unexpected = sorted(set(sub) - set(target))
        report.mismatched = [(k, tuple(sub[k].shape), tuple(target[k].shape))
                             for k in sorted(set(sub) & set(target)) if sub[k].shape != target[k].shape]
        if not report.ok:
            raise CheckpointError(f"{source} does not match the Synchformer "
                                  f"(width {self.config.width}, depth {self.config.depth}):\n{report.describe()}")
        report.loaded = sorted(sub)
        self.vfeat_extractor.load_state_dict(sub, strict=False)
        return report

    def forward(self, vis: torch.Tensor) -> torch.Tensor:
        """vis (B, S, T, 3, H, W) segments -> (B, S, t, D), the release's ``Synchformer.forward``."""
        return self.vfeat_extractor(vis.permute(0, 1, 3, 2, 4, 5))

    @torch.no_grad()
    def encode_video_with_sync(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised frames (B, T, 3, H, W) at 25 fps -> sync features (B, 8 * segments, D).

        16-frame segments with stride 8 (the release drops frames past the last whole
        segment), all B * segments through the encoder in one call.
        """
        c = self.config
        if video.dim() != 5 or tuple(video.shape[2:]) != (3, c.image_size, c.image_size):
            raise ValueError(f"Synchformer: video must be (B, T, 3, {c.image_size}, {c.image_size}) normalised "
                             f"frames, got {tuple(video.shape)}")
        if c.segments(video.shape[1]) < 1:
            raise ValueError(f"Synchformer: a clip needs at least {c.segment_frames} frames, got {video.shape[1]}")
        param = self.vfeat_extractor.cls_token
        video = video.to(device=param.device, dtype=torch.float32)
        # (B, S, 3, H, W, 16) -> (B, S, 3, 16, H, W): the extractor's (B, S, C, T, H, W).
        segments = video.unfold(1, c.segment_frames, c.segment_stride).permute(0, 1, 2, 5, 3, 4)
        features = self.vfeat_extractor(segments)
        return features.flatten(1, 2).float()
