"""``AudioXPipeline``: text / video / audio prompt -> waveform, in the diffusers style.

    pipe = AudioXPipeline.from_pretrained("checkpoints/")   # or .from_preset("tiny")
    wave, sr = pipe(text="a dog barking", seconds=10, generator=torch.Generator().manual_seed(0))

Two modes: ``"turbo"`` (the DMD student: 4 steps, no CFG) and ``"teacher"`` (Euler with
batched CFG, release defaults 250 steps at cfg 6). Generation always runs the model's
full 10 s latent (the release's DiT has a fixed 237-token length); the waveform is cropped
to ``seconds`` and returned as the decoder gives it, as the release's generation function
does (its example scripts peak-normalise afterwards; that erases the level a caption asks
for, so here it is the caller's choice).

Bad arguments raise :class:`~audiox.errors.ArgumentError` at the top of the call, before
any work; a model folder is checked against its config before the model is built.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from .checkpoint import match_state_dict, read_state_dict
from .config import AudioXConfig, get_preset, load_model_config
from .arguments import GenerationArgs, check_device, check_generation_args
from .errors import ArgumentError, CheckpointError, ConfigError
from .model import AudioXModel
from .sampling import ReferenceSampler, draw_noise
from .text_encoder import BYTE_TOKENIZER_MARK, load_text_encoder

__all__ = ["AudioXPipeline", "EMBEDDED_DIR", "GenerationArgs", "check_generation_args", "check_device",
           "embedded_folder", "read_model_config"]  # the checks live in .arguments

log = logging.getLogger(__name__)

EMBEDDED_DIR = os.path.join(os.path.dirname(__file__), "assets")
# Storage dtypes ``save_pretrained`` accepts for the parameters, by name (the recipe's export_dtype).
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


CONFIG_NAMES = ["model_config.json", "config.json", "*.json"]
CHECKPOINT_NAMES = ["model.safetensors", "audiox_turbo/audiox_turbo.ckpt", "*.safetensors", "*.ckpt"]


def embedded_folder(name: str) -> str | None:
    """The folder of a preset's shipped weights (``audiox/assets/<name>/``), or None."""
    folder = os.path.join(EMBEDDED_DIR, name)
    return folder if os.path.isfile(os.path.join(folder, "model.safetensors")) else None


def read_model_config(path: str | os.PathLike) -> AudioXConfig:
    """The config of a model folder, found as :meth:`AudioXPipeline.from_pretrained` finds it."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"model folder not found: {path}")
    return load_model_config(_find_one(path, CONFIG_NAMES, "model config"))


def _check_dtype(dtype) -> None:
    if dtype not in WEIGHT_DTYPES.values():
        raise ArgumentError(f"dtype must be one of torch.{', torch.'.join(WEIGHT_DTYPES)}, got {dtype!r}")


@dataclass
class _Source:
    name: str
    trained: bool
    detail: str


def _build_untrained(cfg: AudioXConfig, seed: int) -> AudioXModel:
    """The modules' own initialisation, seeded, without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AudioXModel(cfg)


class AudioXPipeline:
    def __init__(self, model: AudioXModel, *, source: _Source, device="cpu", dtype=torch.float32):
        _check_dtype(dtype)
        self.model = model.eval()
        self.cfg: AudioXConfig = model.cfg
        self.source = source
        self.device = check_device(device)
        self.dtype = dtype
        self._warned_prompts: set[str] = set()
        # The sampling slot: the reference samplers, or those ``engine.accelerate`` puts here.
        self.sampler = ReferenceSampler()
        self.model.to(self.device)
        # The release runs the VAE in fp32 whatever the DiT's dtype; the DiT and MAF take `dtype`.
        self.model.model.to(dtype)
        self.model.maf_block.to(dtype)

    # ------------------------------------------------------------------ construction
    @property
    def trained(self) -> bool:
        return self.source.trained

    @classmethod
    def from_preset(cls, name: str = "tiny", *, device="cpu", dtype=torch.float32, seed: int = 0) -> "AudioXPipeline":
        """A named preset. Weights come from ``audiox/assets/<name>/`` when shipped there;
        otherwise the model is randomly initialised from ``seed`` and labelled untrained."""
        check_device(device)
        _check_dtype(dtype)
        cfg = get_preset(name)
        embedded = embedded_folder(name)
        if embedded is not None:
            return cls.from_pretrained(embedded, device=device, dtype=dtype)
        model = _build_untrained(cfg, seed)
        source = _Source(name, trained=False, detail=f"preset {name!r}, UNTRAINED random weights (seed {seed})")
        return cls(model, source=source, device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device="cpu",
        dtype=torch.float32,
        t5_dir: str | os.PathLike | None = None,
        strict: bool = True,
    ) -> "AudioXPipeline":
        """Load a model folder laid out as the release (or as ``save_pretrained`` writes):

        - a model config JSON (``model_config.json``, ``config.json`` or the release's
          ``audiox_turbo_infer_4step.json``);
        - the student checkpoint (``model.safetensors``, or ``audiox_turbo/audiox_turbo.ckpt``,
          or a single ``*.ckpt`` / ``*.safetensors``);
        - optionally the VAE (``pretransform/vae.ckpt``) when the student file lacks it;
        - optionally a local T5 directory (``t5_dir`` or ``<path>/t5-base``); without one a
          random T5 of the configured size with the offline tokenizer stands in, with a warning.

        The checkpoint's keys and shapes are checked against the config (on a model built
        on the meta device) before the model is built: with ``strict`` any difference
        raises :class:`CheckpointError`, whose first line names the first one.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise CheckpointError(f"model folder not found: {path}")
        check_device(device)
        _check_dtype(dtype)
        cfg_path = _find_one(path, CONFIG_NAMES, "model config")
        cfg = load_model_config(cfg_path)
        ckpt = _find_one(path, CHECKPOINT_NAMES, "student checkpoint")
        t5_dir = t5_dir or (os.path.join(path, "t5-base") if os.path.isdir(os.path.join(path, "t5-base")) else None)
        text = None if t5_dir is None else load_text_encoder(os.fspath(t5_dir), cfg.dit.cond_token_dim)
        state = _checked_state(cfg, cfg_path, text, ckpt, os.path.join(path, "pretransform", "vae.ckpt"), strict)
        if text is None and cfg.name != "tiny" and cfg.conditioning.get("preset") != "tiny":
            log.warning("no local T5 given: text goes through a random small T5 stand-in (give t5_dir=)")
        model = AudioXModel(cfg, text_encoder=text)
        model.load_state_dict(state, strict=False)
        meta = _read_meta(path)
        source = _Source(cfg.name, trained=True, detail=meta.get("description", f"weights from {path}"))
        return cls(model, source=source, device=device, dtype=dtype)

    def save_pretrained(self, path: str | os.PathLike, description: str = "", text_encoder: bool = True,
                        weights_dtype: torch.dtype = torch.float32) -> None:
        """Write ``model_config.json``, ``model.safetensors`` (everything but T5, as the release's
        checkpoint; parameters stored as ``weights_dtype``, buffers as float32, all loaded back as
        the pipeline's dtype) and, with ``text_encoder``, the T5 encoder and its tokenizer in ``t5-base/``."""
        from .checkpoint import save_safetensors

        if weights_dtype not in WEIGHT_DTYPES.values():
            raise ValueError(f"weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {weights_dtype}")

        os.makedirs(path, exist_ok=True)
        t5 = self.model.conditioner.conditioners["text_prompt"] if "text_prompt" in self.model.conditioner.conditioners else None
        if text_encoder and t5 is not None:
            t5_dir = os.path.join(path, "t5-base")
            t5.model.save_pretrained(t5_dir, safe_serialization=True)
            if hasattr(t5.tokenizer, "tokenizer"):
                t5.tokenizer.tokenizer.save_pretrained(t5_dir)
            else:
                with open(os.path.join(t5_dir, BYTE_TOKENIZER_MARK), "w", encoding="utf-8") as f:
                    json.dump({"max_length": t5.max_length, **getattr(t5.tokenizer, "settings", dict)()}, f)
        with open(os.path.join(path, "model_config.json"), "w", encoding="utf-8") as f:
            json.dump(self.cfg.to_dict(), f, indent=1)
        params = {name for name, _ in self.model.named_parameters()}  # buffers (statistics, tables) stay float32
        sd = {k: v.to(weights_dtype if k in params else torch.float32) if v.is_floating_point() else v
              for k, v in self.model.state_dict().items()}
        save_safetensors(sd, os.path.join(path, "model.safetensors"), metadata={"config_name": self.cfg.name})
        with open(os.path.join(path, "meta.json"), "w", encoding="utf-8") as f:
            json.dump({"description": description or self.source.detail}, f)

    # ------------------------------------------------------------------ generation
    def encode_conditioning(
        self,
        text: str | Sequence[str] | None = None,
        video: str | os.PathLike | torch.Tensor | None = None,
        video_sync: torch.Tensor | None = None,
        audio: str | os.PathLike | torch.Tensor | None = None,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
        mask_audio_prompt: bool = True,
    ) -> torch.Tensor:
        """Any subset of text / video / audio -> ``cross_attn_cond`` (B, 384, D) (conditioners + MAF)."""
        from .media import load_audio_prompt, load_video_frames

        cc = self.model.conditioner.config
        if isinstance(text, str):
            text = [text]
        if isinstance(video, (str, os.PathLike)):
            video = load_video_frames(
                video, seconds_total=cc.video_frames / self.cfg.video_fps, fps=self.cfg.video_fps, size=cc.clip_image_size
            )[None]
        if isinstance(audio, (str, os.PathLike)):
            audio = load_audio_prompt(
                audio, sample_rate=self.cfg.sample_rate, seconds_total=cc.audio_prompt_samples / self.cfg.sample_rate
            )[None]
        if batch_size is not None and text is None and video is None and audio is None:
            text = [""] * batch_size
        if batch_size is not None:  # one item (a prompt, a file) is repeated to the batch
            text, video, video_sync, audio = (_repeat(x, batch_size) for x in (text, video, video_sync, audio))
        cond = self.model.conditioner(
            text=text, video=video, video_sync=video_sync, audio=audio, device=self.device,
            batch_size=None, generator=generator, mask_audio_prompt=mask_audio_prompt,
        )
        return self.model.conditioning_tokens(cond).to(self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        *,
        video: str | os.PathLike | torch.Tensor | None = None,
        video_sync: torch.Tensor | None = None,
        audio: str | os.PathLike | torch.Tensor | None = None,
        seconds: float | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        mode: str = "turbo",
        generator: torch.Generator | int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        mask_audio_prompt: bool = True,
        return_latents: bool = False,
        strict: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """Generate. Returns ``(waveform (B, 2, seconds * sr) float32, sample_rate)``, the decoder's
        output, not normalised (or ``(latents (B, 64, 236), sample_rate)`` with ``return_latents``).

        One ``str`` prompt, file path or unbatched tensor is one item, repeated to the batch
        (``batch_size``, or the length of the batched inputs). ``generator`` is a
        ``torch.Generator`` on the pipeline's device or an integer seed. A prompt longer
        than the text encoder reads is cut with a warning, once per prompt; with ``strict``
        it raises :class:`ArgumentError`. Every argument is checked before any work
        (:func:`check_generation_args`).
        """
        args = check_generation_args(
            self.cfg, text=text, video=video, video_sync=video_sync, audio=audio, seconds=seconds, steps=steps,
            cfg_scale=cfg_scale, mode=mode, generator=generator, batch_size=batch_size, device=self.device)
        self._check_text_length(args.text, strict)
        gen = args.generator
        cond = self.encode_conditioning(args.text, video, args.video_sync, audio, args.batch_size, gen,
                                        mask_audio_prompt)
        b = cond.shape[0]
        dit = self.model.dit
        shape = (b, self.cfg.dit.io_channels, self.cfg.dit.latent_frames)
        noise = draw_noise(shape, gen, self.device, self.dtype)
        if args.mode == "turbo":
            latents = self.sampler.turbo(dit, noise, cond, steps=args.steps, generator=gen, progress=progress)
        else:
            latents = self.sampler.teacher(dit, noise, cond, steps=args.steps, cfg_scale=args.cfg_scale,
                                           progress=progress)
        if return_latents:
            return latents, self.cfg.sample_rate
        return self.decode(latents, args.seconds), self.cfg.sample_rate

    def _check_text_length(self, texts: list[str] | None, strict: bool) -> None:
        conditioners = self.model.conditioner.conditioners
        t5 = conditioners["text_prompt"] if "text_prompt" in conditioners else None
        if texts is None or t5 is None or not hasattr(t5.tokenizer, "token_count"):
            return
        for t in dict.fromkeys(texts):
            n = t5.tokenizer.token_count(t)
            if n <= t5.max_length or (t in self._warned_prompts and not strict):
                continue
            what = (f"the prompt {t[:30]!r}... takes {n} tokens and the text encoder reads {t5.max_length}: "
                    "the rest is cut")
            if strict:
                raise ArgumentError(f"{what}; shorten it")
            self._warned_prompts.add(t)
            log.warning("%s (shorten it to keep every word)", what)

    def decode(self, latents: torch.Tensor, seconds: float | None = None) -> torch.Tensor:
        """Latents -> waveform in fp32 (as the release), cropped to ``seconds``; not normalised:
        the level is what the model made of the conditioning ("soft" and "loud" differ)."""
        audio = self.model.pretransform.decode(latents.float())
        if seconds is not None:
            audio = audio[..., : int(round(seconds * self.cfg.sample_rate))]
        return audio


def _repeat(items, n: int):
    """A batch of one (a list or a tensor) repeated to ``n``; anything else as it is."""
    if items is None or n == 1 or len(items) != 1:
        return items
    return items.expand(n, *items.shape[1:]) if isinstance(items, torch.Tensor) else list(items) * n


def _find_one(root: str, patterns: list[str], what: str) -> str:
    for pat in patterns:
        hits = sorted(glob.glob(os.path.join(root, pat)))
        if len(hits) == 1 or (hits and "*" not in pat):
            return hits[0]
        if len(hits) > 1:
            raise CheckpointError(f"{root}: several candidates for the {what}: {[os.path.basename(h) for h in hits]}")
    raise CheckpointError(f"{root}: no {what} found (looked for {patterns})")


def _checked_state(cfg: AudioXConfig, cfg_path: str, text, ckpt: str, vae_file: str,
                   strict: bool) -> dict[str, torch.Tensor]:
    """The tensors of ``ckpt`` (and, for what it lacks of the VAE, ``vae_file``) that fit the
    model ``cfg`` describes, checked on a model built on the meta device: nothing of the
    model's size is allocated before the files are known to fit."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in AudioXModel(cfg, text_encoder=text).state_dict().items()}
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as e:
        raise ConfigError(f"{cfg_path}: cannot build the model it describes ({e})") from None
    report, state = match_state_dict(read_state_dict(ckpt), shapes)  # a wrapper prefix (student., module.) is found
    if any(k.startswith("pretransform.") for k in report.missing) and os.path.isfile(vae_file):
        vae_shapes = {k[len("pretransform."):]: v for k, v in shapes.items() if k.startswith("pretransform.")}
        vae_report, vae_state = match_state_dict(read_state_dict(vae_file), vae_shapes)
        state.update({"pretransform." + k: v for k, v in vae_state.items()})
        report.loaded += ["pretransform." + k for k in vae_report.loaded]
        report.missing = [k for k in report.missing if not k.startswith("pretransform.")]
        report.missing += ["pretransform." + k for k in vae_report.missing]
        report.unexpected += [f"{vae_file}: {k}" for k in vae_report.unexpected]
        report.mismatched += [("pretransform." + k, a, b) for k, a, b in vae_report.mismatched]
    if report.ok:
        return state
    what = f"{ckpt} does not match the model config {cfg_path}: {report.summary()}; is the config this checkpoint's?"
    if strict or not report.loaded:
        raise CheckpointError(f"{what}\n{report.describe()}")
    log.warning("%s (loading the rest)\n%s", what, report.describe())
    return state


def _read_meta(path: str) -> dict:
    meta = os.path.join(path, "meta.json")
    if not os.path.isfile(meta):
        return {}
    try:
        with open(meta, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{meta} is not valid JSON: {e}") from None
