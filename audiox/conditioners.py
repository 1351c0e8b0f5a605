"""Conditioners of AudioX-Turbo: text (T5), video (CLIP + temporal transformer + Synchformer
features) and audio prompt (VAE latents), each giving 128 tokens of width 768.

Module names mirror the official release, so that a `MultiConditioner` at attribute
`conditioner` of the top model has exactly the official keys
`conditioner.conditioners.<id>.<...>` (tests/data/conditioner_keys.tsv). T5 is, as in the
release, held outside the module tree: its weights are not in the AudioX checkpoint and
come from a separate local T5 directory.

Nothing here reaches a model hub: every network is built from a config, and real weights
load from local files.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .pretransform import AutoencoderPretransform
from .vae import VAEConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- config


@dataclass
class ConditionerConfig:
    """Sizes of the three conditioners. `full()` is the released model, `tiny()` is for tests."""

    cond_dim: int = 768          # token width of every conditioner (= CLIP and T5 width here)
    num_tokens: int = 128        # tokens per conditioner
    # video: CLIP ViT vision tower
    clip_hidden: int = 768
    clip_layers: int = 12
    clip_heads: int = 12
    clip_intermediate: int = 3072
    clip_image_size: int = 224
    clip_patch_size: int = 32
    clip_projection_dim: int = 512
    video_frames: int = 50       # 5 fps x 10 s
    temporal_depth: int = 4
    temporal_heads: int = 16
    temporal_dim_head: int = 64
    temporal_mlp_mult: int = 4
    sync_len: int = 240          # Synchformer tokens per clip (240 x 768)
    # text: T5 encoder
    t5_d_model: int = 768
    t5_d_kv: int = 64
    t5_d_ff: int = 3072
    t5_layers: int = 12
    t5_heads: int = 12
    t5_vocab: int = 32128
    text_max_length: int = 128
    # audio prompt: the conditioner's own copy of the VAE
    vae: VAEConfig = field(default_factory=VAEConfig.full)
    audio_latent_len: int = 215  # latent frames of a 10 s prompt (441000 samples)
    audio_prompt_samples: int = 441000
    mask_ratio_start: float = 0.25
    mask_ratio_end: float = 0.75

    @property
    def tokens_per_frame(self) -> int:
        return (self.clip_image_size // self.clip_patch_size) ** 2 + 1

    @classmethod
    def full(cls) -> ConditionerConfig:
        return cls()

    @classmethod
    def tiny(cls) -> ConditionerConfig:
        """Every piece a few layers of width 64: 4 frames of 64x64 (5 tokens each), 16-sample latents."""
        return cls(
            cond_dim=64, num_tokens=128,
            clip_hidden=64, clip_layers=2, clip_heads=2, clip_intermediate=128, clip_image_size=64,
            clip_patch_size=32, clip_projection_dim=32, video_frames=4,
            temporal_depth=2, temporal_heads=2, temporal_dim_head=16, temporal_mlp_mult=2, sync_len=8,
            t5_d_model=64, t5_d_kv=16, t5_d_ff=128, t5_layers=2, t5_heads=4, t5_vocab=300, text_max_length=128,
            vae=VAEConfig.tiny(), audio_latent_len=8, audio_prompt_samples=8 * 2048,
        )


def _check_batch(name: str, x: torch.Tensor, shape: Sequence[int | None]) -> None:
    """Raise a clear error unless x has len(shape) dims and the given sizes (None = any)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


# ----------------------------------------------------------------------------- text


class ByteTokenizer:
    """Offline stand-in for the T5 tokenizer: UTF-8 bytes + 3 (0 pad, 1 eos, 2 unk), eos appended.

    Used with random-weight T5s (tests, benchmarks) and with the byte-level T5 stand-ins the
    recipe trains. Such a model knows only the case of its training captions: with
    ``lowercase`` the text is lowercased first, and then the words of ``keep_case`` get their
    own case back (the procedural captions are lowercase but for the unit "Hz"). The
    settings travel with the model in its tokenizer marker file (:meth:`settings`).
    """

    pad_id, eos_id, offset = 0, 1, 3

    def __init__(self, lowercase: bool = False, keep_case: Sequence[str] = ()):
        self.lowercase = bool(lowercase)
        self.keep_case = tuple(keep_case)
        self._cased = {w.lower(): w for w in self.keep_case}
        self._word = re.compile(r"\b(" + "|".join(re.escape(w) for w in self._cased) + r")\b") if self._cased else None

    def settings(self) -> dict:
        return {"lowercase": self.lowercase, "keep_case": list(self.keep_case)}

    def normalize(self, text: str) -> str:
        if not self.lowercase:
            return text
        text = text.lower()
        return self._word.sub(lambda m: self._cased[m.group(1)], text) if self._word else text

    def token_count(self, text: str) -> int:
        """Tokens ``text`` takes before truncation (eos included)."""
        return len(self.normalize(text).encode("utf-8")) + 1

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [b + self.offset for b in self.normalize(text).encode("utf-8")][: max_length - 1] + [self.eos_id]
            ids[i, : len(row)] = torch.tensor(row)
        return ids, ids != self.pad_id


class _HFTokenizer:
    """The release's tokenizer call: truncate and pad to max_length, eos kept."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def token_count(self, text: str) -> int:
        """Tokens ``text`` takes before truncation (eos included)."""
        return len(self.tokenizer(text)["input_ids"])

    def __call__(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length",
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].to(torch.bool)


class T5Conditioner(nn.Module):
    """Text -> (tokens (B, L, D) float32 with padding zeroed, mask (B, L) bool), L = 128.

    The release runs T5 in fp16 (weights cast to fp16, fp16 autocast). `dtype=None` does the
    same on CUDA and uses fp32 on CPU, where fp16 is slow and not what anyone checks against.
    """

    def __init__(self, t5_model, tokenizer=None, max_length: int = 128, output_dim: int = 768,
                 dtype: torch.dtype | None = None):
        super().__init__()
        # Not a registered submodule (as in the release): T5 stays out of state_dict() and the
        # AudioX checkpoint, and .to() on the conditioner leaves it alone; forward moves it.
        object.__setattr__(self, "model", t5_model.eval().requires_grad_(False))
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        self.max_length = max_length
        self.t5_dtype = dtype
        width = t5_model.config.d_model
        self.proj_out = nn.Identity() if width == output_dim else nn.Linear(width, output_dim)

    @classmethod
    def from_config(cls, config: ConditionerConfig, dtype: torch.dtype | None = None) -> T5Conditioner:
        """Random-weight T5 encoder of the configured size with the offline byte tokenizer."""
        from transformers import T5Config, T5EncoderModel

        t5_config = T5Config(
            vocab_size=config.t5_vocab, d_model=config.t5_d_model, d_kv=config.t5_d_kv, d_ff=config.t5_d_ff,
            num_layers=config.t5_layers, num_heads=config.t5_heads, feed_forward_proj="relu",
            relative_attention_num_buckets=32, relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
            dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
        )
        return cls(T5EncoderModel(t5_config), ByteTokenizer(), config.text_max_length, config.cond_dim, dtype)

    @classmethod
    def from_pretrained(cls, path: str, max_length: int = 128, output_dim: int = 768,
                        dtype: torch.dtype | None = None) -> T5Conditioner:
        """T5 encoder and its tokenizer from a local directory (e.g. a downloaded `t5-base`); never the hub."""
        import os

        from transformers import AutoTokenizer, T5EncoderModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"T5 directory not found: {path!r} (give a local copy of t5-base)")
        model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return cls(model, _HFTokenizer(tokenizer), max_length, output_dim, dtype)

    @torch.no_grad()
    def forward(self, texts: Sequence[str], device: torch.device | str | None = None):
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("T5Conditioner: texts must be a list of str")
        device = torch.device(device) if device is not None else next(self.model.parameters()).device
        dtype = self.t5_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        self.model.to(device=device, dtype=dtype)
        input_ids, mask = self.tokenizer(texts, self.max_length)
        input_ids, mask = input_ids.to(device), mask.to(device)
        # The release also runs fp16 T5 under fp16 autocast (some ops then run in fp32).
        fp16_cuda = device.type == "cuda" and dtype == torch.float16
        with torch.autocast("cuda", dtype=torch.float16) if fp16_cuda else contextlib.nullcontext():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        tokens = self.proj_out.to(device)(hidden.float())
        return tokens * mask.unsqueeze(-1).float(), mask


# ----------------------------------------------------------------------------- video


class TemporalPreNorm(nn.Module):
    """fn(LayerNorm(x)); names `norm` and `fn` as the release's SA_PreNorm."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class TemporalAttention(nn.Module):
    """Multi-head self-attention, (N, T, D) -> (N, T, D); qkv without bias, out with bias."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Identity())  # [1]: the release's dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self.to_qkv(x).view(n, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(dim_head), as released
        return self.to_out(out.transpose(1, 2).reshape(n, t, -1))


class TemporalFeedForward(nn.Module):
    """Linear, GELU, Linear; indices 0 and 3 as the release's `net` (dropouts at 2 and 4)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim), nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TemporalTransformer(nn.Module):
    """Pre-norm transformer over the frame axis, final LayerNorm: (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([TemporalPreNorm(dim, TemporalAttention(dim, heads, dim_head)),
                           TemporalPreNorm(dim, TemporalFeedForward(dim, mlp_dim))])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


class CLIPWithSyncWithEmptyFeatureConditioner(nn.Module):
    """Video frames (+ Synchformer features) -> (tokens (B, 128, 768), mask (B, 128)).

    frames: (B, T=50, 3, 224, 224), pixel values in [0, 255] (uint8 or float), 5 fps.
    sync: (B, 240, 768) Synchformer features of the same clip at 25 fps (``audiox.synchformer``;
    the pipeline computes them), or None for zeros (the release's value when there is no
    video). A clip whose frames are all exactly zero is "no video" and gets the learned
    `empty_visual_feat`, as in the release.
    """

    def __init__(self, config: ConditionerConfig):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        if config.clip_hidden != config.cond_dim:
            raise ValueError("CLIP width must equal cond_dim: the release's reshape keeps CLIP channels as token width")
        self.config = config
        d, n_tok = config.cond_dim, config.num_tokens
        self.in_features = config.video_frames * config.tokens_per_frame
        self.empty_visual_feat = nn.Parameter(torch.zeros(1, n_tok, d))
        clip_config = CLIPVisionConfig(
            hidden_size=config.clip_hidden, intermediate_size=config.clip_intermediate,
            num_hidden_layers=config.clip_layers, num_attention_heads=config.clip_heads,
            image_size=config.clip_image_size, patch_size=config.clip_patch_size,
            projection_dim=config.clip_projection_dim, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        )
        self.visual_encoder_model = CLIPVisionModelWithProjection(clip_config).eval()
        self.proj = nn.Linear(self.in_features, n_tok)
        self.proj_sync = nn.Linear(config.sync_len, n_tok)
        self.sync_weight = nn.Parameter(torch.tensor(0.0))
        self.Temp_transformer = TemporalTransformer(d, config.temporal_depth, config.temporal_heads,
                                                    config.temporal_dim_head, d * config.temporal_mlp_mult)
        self.Temp_pos_embedding = nn.Parameter(torch.randn(1, config.video_frames, d))
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (B, T, 3, H, W) in [0, 255] -> CLIP video tokens (B, 128, D), before the sync term."""
        b, t = frames.shape[:2]
        pixels = (frames.flatten(0, 1).float() / 255.0 - self.clip_mean) / self.clip_std
        pixels = pixels.to(self.proj.weight.dtype)
        hidden = self.visual_encoder_model(pixel_values=pixels).last_hidden_state  # (B*T, Q, D), pre post-LN
        q, d = hidden.shape[1], hidden.shape[2]
        hidden = hidden.view(b, t, q, d).transpose(1, 2).reshape(b * q, t, d)
        hidden = self.Temp_transformer(hidden + self.Temp_pos_embedding)
        hidden = hidden.view(b, q, t, d).transpose(1, 2).reshape(b, t * q, d)
        # The release flattens (B, T*Q, D) row-major and reads rows of T*Q numbers: each row
        # mixes tokens and channels. The trained `proj` expects exactly that, so we keep it.
        return self.proj(hidden.reshape(-1, self.in_features)).view(b, self.config.num_tokens, -1)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, sync: torch.Tensor | None = None,
                device: torch.device | str | None = None):
        c = self.config
        device = torch.device(device) if device is not None else self.empty_visual_feat.device
        _check_batch("video frames", frames, (None, c.video_frames, 3, c.clip_image_size, c.clip_image_size))
        b = frames.shape[0]
        frames = frames.to(device)
        if sync is None:
            sync = torch.zeros(b, c.sync_len, c.cond_dim, device=device)
        _check_batch("video sync features", sync, (b, c.sync_len, c.cond_dim))
        sync = sync.to(device=device, dtype=self.proj_sync.weight.dtype)

        is_empty = (frames == 0).flatten(1).all(dim=1)
        tokens = self.empty_visual_feat.expand(b, -1, -1).clone()
        if not bool(is_empty.all()):
            # Only clips with content go through CLIP; the result for empty ones is replaced anyway.
            keep = (~is_empty).nonzero().squeeze(1)
            video = self.encode_frames(frames[keep])
            synced = self.proj_sync(sync[keep].reshape(-1, c.sync_len)).view(len(keep), c.num_tokens, -1)
            tokens[keep] = (video + self.sync_weight * synced).to(tokens.dtype)
        return tokens, torch.ones(b, c.num_tokens, dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------- audio prompt


def set_audio_channels(audio: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, L) -> (B, channels, L): mono is duplicated, extra channels dropped, as the release."""
    if channels == 1:
        return audio.mean(1, keepdim=True)
    if audio.shape[1] == 1:
        return audio.repeat(1, channels, 1)
    return audio[:, :channels]


class AudioAutoencoderConditioner(nn.Module):
    """Audio prompt (B, C, 441000) at 44.1 kHz -> (tokens (B, 128, 768), mask (B, 128)).

    Encoded by the conditioner's own VAE (at `pretransform`), sampled from the posterior as
    released, then Linear(215 -> 128) over time and Linear(64 -> 768) over channels. The
    release zeroes one random span of 25-75 % of each prompt, at inference too; `mask=True`
    reproduces that (draws from `generator`), `mask=False` turns it off.
    """

    def __init__(self, config: ConditionerConfig):
        super().__init__()
        self.config = config
        self.pretransform = AutoencoderPretransform(config.vae)
        self.proj_features_128 = nn.Linear(config.audio_latent_len, config.num_tokens)
        self.proj_out = nn.Linear(config.vae.latent_dim, config.cond_dim)

    def mask_audio(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Zero one span per item, its length a uniform 25-75 % of the prompt; same draws as the release."""
        b, _, length = audio.shape
        lo, hi = self.config.mask_ratio_start, self.config.mask_ratio_end
        gen_device = generator.device if generator is not None else audio.device
        ratios = torch.rand(b, generator=generator, device=gen_device) * (hi - lo) + lo
        out = audio.clone()
        for i in range(b):
            span = int(length * ratios[i])
            start = int(torch.randint(0, length - span + 1, (1,), generator=generator, device=gen_device))
            out[i, :, start:start + span] = 0
        return out

    @torch.no_grad()
    def forward(self, audio: torch.Tensor | Sequence[torch.Tensor], device: torch.device | str | None = None,
                generator: torch.Generator | None = None, mask: bool = True):
        c = self.config
        device = torch.device(device) if device is not None else self.proj_out.weight.device
        if isinstance(audio, (list, tuple)):
            # Channels are fixed per item first, so mono and stereo prompts can share a batch.
            items = [set_audio_channels(a if a.dim() == 3 else a.unsqueeze(0), c.vae.in_channels) for a in audio]
            longest = max(a.shape[-1] for a in items)
            audio = torch.cat([F.pad(a, (0, longest - a.shape[-1])) for a in items], dim=0)
        if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
            raise ValueError(f"audio prompt: expected (B, C, L) or a list of (C, L), got "
                             f"{tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__}")
        audio = set_audio_channels(audio.to(device=device, dtype=torch.float32), c.vae.in_channels)
        if mask and c.mask_ratio_start < c.mask_ratio_end:
            audio = self.mask_audio(audio, generator)
        latents = self.pretransform.encode(audio, generator=generator)  # (B, 64, T)
        latents = latents.to(self.proj_features_128.weight.dtype)
        if latents.shape[-1] != c.audio_latent_len:
            raise ValueError(f"audio prompt: {audio.shape[-1]} samples give {latents.shape[-1]} latent frames, the "
                             f"model takes {c.audio_latent_len} (use {c.audio_prompt_samples} samples at "
                             f"{c.vae.sample_rate} Hz)")
        tokens = self.proj_out(self.proj_features_128(latents).transpose(1, 2))
        return tokens, torch.ones(tokens.shape[0], c.num_tokens, dtype=torch.bool, device=device)


# ----------------------------------------------------------------------------- all three


class MultiConditioner(nn.Module):
    """The three conditioners under `conditioners` (ids `video_prompt`, `text_prompt`, `audio_prompt`).

    `text` may be None if the conditioner was built without T5 (`with_text=False`); it is then
    not part of the module, as in the checkpoint, where T5 has no keys anyway.
    """

    def __init__(self, config: ConditionerConfig | None = None, text: T5Conditioner | None = None,
                 with_text: bool = True):
        super().__init__()
        config = config or ConditionerConfig.full()
        self.config = config
        modules: dict[str, nn.Module] = {"video_prompt": CLIPWithSyncWithEmptyFeatureConditioner(config)}
        if text is None and with_text:
            text = T5Conditioner.from_config(config)
        if text is not None:
            modules["text_prompt"] = text
        modules["audio_prompt"] = AudioAutoencoderConditioner(config)
        self.conditioners = nn.ModuleDict(modules)

    def empty_video(self, batch_size: int, device=None) -> torch.Tensor:
        c = self.config
        return torch.zeros(batch_size, c.video_frames, 3, c.clip_image_size, c.clip_image_size, device=device)

    def empty_audio(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.config.vae.in_channels, self.config.audio_prompt_samples, device=device)

    @torch.no_grad()
    def forward(self, text: Sequence[str] | None = None, video: torch.Tensor | None = None,
                video_sync: torch.Tensor | None = None, audio: torch.Tensor | Sequence[torch.Tensor] | None = None,
                device: torch.device | str | None = None, batch_size: int | None = None,
                generator: torch.Generator | None = None, mask_audio_prompt: bool = True):
        """Any subset of the modalities -> {id: (tokens (B, 128, D), mask (B, 128))} in release order.

        Absent modalities get what the release gives them: text "", video all-zero frames (so
        the learned empty feature) with zero sync features, audio 10 s of silence (masked and
        VAE-encoded like any prompt).
        """
        if isinstance(text, str):
            text = [text]
        sizes = {n: len(x) for n, x in (("text", text), ("video", video), ("audio", audio)) if x is not None}
        if batch_size is not None:
            sizes["batch_size"] = batch_size
        if not sizes:
            raise ValueError("MultiConditioner: give at least one modality or batch_size")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"MultiConditioner: batch sizes differ: {sizes}")
        b = next(iter(sizes.values()))
        if text is not None and "text_prompt" not in self.conditioners:
            raise ValueError("MultiConditioner: text given but no T5 was loaded")
        device = torch.device(device) if device is not None else self.conditioners["video_prompt"].proj.weight.device

        out = {}
        out["video_prompt"] = self.conditioners["video_prompt"](
            video if video is not None else self.empty_video(b, device), video_sync, device)
        if "text_prompt" in self.conditioners:
            out["text_prompt"] = self.conditioners["text_prompt"](list(text) if text is not None else [""] * b, device)
        out["audio_prompt"] = self.conditioners["audio_prompt"](
            audio if audio is not None else self.empty_audio(b, device), device, generator, mask_audio_prompt)
        return out
