"""``AudioXPipeline``: text / video / audio prompt -> waveform, in the diffusers style.

    pipe = AudioXPipeline.from_pretrained("checkpoints/")   # or .from_preset("tiny")
    wave, sr = pipe(text="a dog barking", seconds=10, generator=torch.Generator().manual_seed(0))

Two modes: ``"turbo"`` (the DMD student: 4 steps, no CFG) and ``"teacher"`` (Euler with
batched CFG, release defaults 250 steps at cfg 6). Generation always runs the model's
full 10 s latent (the release's DiT has a fixed 237-token length); the waveform is cropped
to ``seconds`` and returned as the decoder gives it, as the release's generation function
does (its example scripts peak-normalise afterwards; that erases the level a caption asks
for, so here it is the caller's choice).

Video tasks: the release conditions on CLIP features of the clip at 5 fps plus Synchformer
features of the same clip at 25 fps, and refuses video without the Synchformer checkpoint
(``synchformer/synchformer_state_dict.pth`` in the model directory, or ``synchformer=``).
So does the pipeline, unless the caller passes precomputed features (``video_sync=tensor``)
or asks for zero features (``video_sync="zeros"``, not the release's conditioning).

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

from .arguments import GenerationArgs, check_device, check_generation_args
from .checkpoint import match_state_dict, read_state_dict
from .config import AudioXConfig, get_preset, load_model_config
from .errors import ArgumentError, CheckpointError, ConfigError
from .model import AudioXModel, synchformer_config_for
from .sampling import Generators, ReferenceSampler, draw_noise
from .synchformer import Synchformer, sync_pixels
from .text_encoder import BYTE_TOKENIZER_MARK, load_text_encoder

__all__ = ["AudioXPipeline", "EMBEDDED_DIR", "GenerationArgs", "check_generation_args", "check_device",
           "embedded_folder", "read_model_config", "SYNCHFORMER_FILE", "MissingSynchformerError",
           "find_synchformer", "missing_synchformer_message"]

log = logging.getLogger(__name__)

EMBEDDED_DIR = os.path.join(os.path.dirname(__file__), "assets")
# Storage dtypes ``save_pretrained`` accepts for the parameters, by name (the recipe's export_dtype).
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Where the release keeps the Synchformer, relative to the model directory.
SYNCHFORMER_FILE = os.path.join("synchformer", "synchformer_state_dict.pth")
ZERO_SYNC_NOTE = ("zero sync features (--zero-sync / video_sync='zeros'): the video is conditioned on zeros in "
                  "place of its Synchformer features, which is not the release's conditioning (it computes them "
                  "from the clip at 25 fps)")


class MissingSynchformerError(CheckpointError):
    """A video task without the Synchformer checkpoint (and without an explicit alternative)."""


def find_synchformer(model_dir: str | os.PathLike) -> str | None:
    """The Synchformer checkpoint in a model directory laid out as the release:
    ``synchformer/synchformer_state_dict.pth`` (or the same name as ``.safetensors``); else None."""
    pth = os.path.join(os.fspath(model_dir), SYNCHFORMER_FILE)
    candidates = (pth, os.path.splitext(pth)[0] + ".safetensors")
    return next((c for c in candidates if os.path.isfile(c)), None)


def missing_synchformer_message(expected: str | None) -> str:
    where = f"{expected} not found" if expected else "this pipeline has none"
    return (f"video tasks need the Synchformer checkpoint ({where}): put the release's "
            f"synchformer_state_dict.pth there, or give its path (--synchformer PATH / synchformer=PATH); "
            f"--zero-sync / video_sync='zeros' runs with zero sync features, which is not the release's conditioning")


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
    def __init__(self, model: AudioXModel, *, source: _Source, device="cpu", dtype=torch.float32,
                 synchformer: Synchformer | None = None, synchformer_source: str | None = None):
        _check_dtype(dtype)
        self.model = model.eval()
        self.cfg: AudioXConfig = model.cfg
        self.source = source
        self.device = check_device(device, build_only=True)
        self.dtype = dtype
        self._warned_prompts: set[str] = set()
        # The sampling slot: the reference samplers, or those ``engine.accelerate`` puts here.
        self.sampler = ReferenceSampler()
        self.model.to(self.device)
        # The release runs the VAE in fp32 whatever the DiT's dtype; the DiT and MAF take `dtype`.
        self.model.model.to(dtype)
        self.model.maf_block.to(dtype)
        # The Synchformer for video tasks; ``synchformer_source`` says where its weights came
        # from or, without one, which file a video task would need.
        self.synchformer: Synchformer | None = None
        self.synchformer_source = synchformer_source
        if synchformer is not None:
            self.set_synchformer(synchformer, synchformer_source or "given module")

    def set_synchformer(self, synchformer: Synchformer, source: str) -> None:
        """Use ``synchformer`` for video tasks (fp32, as the release runs it); ``source`` says
        where its weights came from. Its features must fit the video conditioner."""
        sc, cc = synchformer.config, self.model.conditioner.config
        frames = int(sc.fps * self.video_seconds + 1e-9)
        if (sc.num_features(frames), sc.width) != (cc.sync_len, cc.cond_dim):
            raise ConfigError(
                f"the Synchformer gives {sc.num_features(frames)} x {sc.width} features for a {self.video_seconds:g} s "
                f"clip at {sc.fps} fps; this model's video conditioner takes {cc.sync_len} x {cc.cond_dim}")
        self.synchformer = synchformer.to(self.device, torch.float32).eval()
        self.synchformer_source = source

    def load_synchformer(self, path: str | os.PathLike) -> None:
        """Load the release's ``synchformer_state_dict.pth`` (or a ``.safetensors``) for video tasks."""
        self.set_synchformer(*_load_synchformer(path, self.cfg))

    @property
    def video_seconds(self) -> float:
        """The length of clip the video conditioner reads (10 s in the release)."""
        return self.model.conditioner.config.video_frames / self.cfg.video_fps

    # ------------------------------------------------------------------ construction
    @property
    def trained(self) -> bool:
        return self.source.trained

    @classmethod
    def from_preset(cls, name: str = "tiny", *, device="cpu", dtype=torch.float32, seed: int = 0) -> "AudioXPipeline":
        """A named preset. Weights come from ``audiox/assets/<name>/`` when shipped there;
        otherwise the model is randomly initialised from ``seed`` and labelled untrained."""
        check_device(device, build_only=True)
        _check_dtype(dtype)
        cfg = get_preset(name)
        embedded = embedded_folder(name)
        if embedded is not None:
            pipe = cls.from_pretrained(embedded, device=device, dtype=dtype)
        else:
            model = _build_untrained(cfg, seed)
            source = _Source(name, trained=False, detail=f"preset {name!r}, UNTRAINED random weights (seed {seed})")
            pipe = cls(model, source=source, device=device, dtype=dtype)
        if pipe.synchformer is None:
            # A preset without a shipped Synchformer gets one of its size, seeded: video tasks run end to end.
            pipe.set_synchformer(Synchformer.seeded(synchformer_config_for(cfg), seed), f"random weights (seed {seed})")
        return pipe

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        device="cpu",
        dtype=torch.float32,
        t5_dir: str | os.PathLike | None = None,
        strict: bool = True,
        synchformer: str | os.PathLike | Synchformer | None = None,
    ) -> "AudioXPipeline":
        """Load a model folder laid out as the release (or as ``save_pretrained`` writes):

        - a model config JSON (``model_config.json``, ``config.json`` or the release's
          ``audiox_turbo_infer_4step.json``);
        - the student checkpoint (``model.safetensors``, or ``audiox_turbo/audiox_turbo.ckpt``,
          or a single ``*.ckpt`` / ``*.safetensors``);
        - optionally the VAE (``pretransform/vae.ckpt``) when the student file lacks it;
        - optionally a local T5 directory (``t5_dir`` or ``<path>/t5-base``); without one a
          random T5 of the configured size with the offline tokenizer stands in, with a warning;
        - the Synchformer for video tasks: ``synchformer`` (a checkpoint path or a
          ``Synchformer``), else ``<path>/synchformer/synchformer_state_dict.pth`` if present;
          without one, video tasks are refused (text / audio tasks do not need it).

        The checkpoint's keys and shapes are checked against the config (on a model built
        on the meta device) before the model is built: with ``strict`` any difference
        raises :class:`CheckpointError`, whose first line names the first one.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise CheckpointError(f"model folder not found: {path}")
        check_device(device, build_only=True)
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
        if isinstance(synchformer, Synchformer):
            encoder, encoder_source = synchformer, "given module"
        else:
            file = synchformer if synchformer is not None else find_synchformer(path)
            if file is None:
                encoder, encoder_source = None, os.path.join(path, SYNCHFORMER_FILE)  # what a video task would need
            else:
                encoder, encoder_source = _load_synchformer(file, cfg)
        return cls(model, source=source, device=device, dtype=dtype, synchformer=encoder,
                   synchformer_source=encoder_source)

    def save_pretrained(self, path: str | os.PathLike, description: str = "", text_encoder: bool = True,
                        weights_dtype: torch.dtype = torch.float32, synchformer: bool = True) -> None:
        """Write ``model_config.json``, ``model.safetensors`` (everything but T5, as the release's
        checkpoint; parameters stored as ``weights_dtype``, buffers as float32, all loaded back as
        the pipeline's dtype), with ``text_encoder`` the T5 encoder and its tokenizer in ``t5-base/``,
        and with ``synchformer`` the Synchformer in the release's ``synchformer/synchformer_state_dict.pth``
        (float32)."""
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
        if synchformer and self.synchformer is not None:
            from ._io import atomic_path

            target = os.path.join(path, SYNCHFORMER_FILE)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with atomic_path(target, suffix=".pth") as tmp:
                torch.save({k: v.detach().float().cpu() for k, v in self.synchformer.state_dict().items()}, tmp)

    # ------------------------------------------------------------------ generation
    def sync_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Synchformer features of frames (B, T, 3, H, W) in [0, 255] at 25 fps -> (B, sync_len, D)."""
        if self.synchformer is None:
            raise MissingSynchformerError(missing_synchformer_message(self.synchformer_source))
        return self.synchformer.encode_video_with_sync(sync_pixels(frames.to(self.device)))

    def _video_inputs(self, video, video_sync):
        """(video, video_sync) as the conditioner takes them: frames (B, T, 3, H, W) or None, and
        Synchformer features (B, sync_len, D) or None for zeros. Refuses before decoding anything."""
        from .media import load_video_and_sync_frames, load_video_frames

        zeros = isinstance(video_sync, str)
        if zeros and video_sync != "zeros":
            raise ArgumentError(f"video_sync must be a tensor (B, sync_len, D), 'zeros' or None, got {video_sync!r}")
        if zeros:
            video_sync = None
            if video is not None:
                log.warning(ZERO_SYNC_NOTE)
        is_file = isinstance(video, (str, os.PathLike))
        compute_sync = video is not None and video_sync is None and not zeros
        if compute_sync and not is_file:
            raise ArgumentError("video given as 5 fps frames: the Synchformer needs the clip at 25 fps; give the "
                             "video as a file, or video_sync= (features, or 'zeros' for zero sync features)")
        if compute_sync and self.synchformer is None:
            raise MissingSynchformerError(missing_synchformer_message(self.synchformer_source))
        if not is_file:
            return video, video_sync
        cc = self.model.conditioner.config
        clip = dict(seconds_total=self.video_seconds, fps=self.cfg.video_fps, size=cc.clip_image_size)
        if not compute_sync:
            return load_video_frames(video, **clip)[None], video_sync
        sc = self.synchformer.config
        frames, sync_frames = load_video_and_sync_frames(video, **clip, sync_fps=sc.fps, sync_size=sc.image_size)
        return frames[None], self.sync_features(sync_frames[None])

    def encode_conditioning(
        self,
        text: str | Sequence[str] | None = None,
        video: str | os.PathLike | torch.Tensor | None = None,
        video_sync: torch.Tensor | str | None = None,
        audio: str | os.PathLike | torch.Tensor | None = None,
        batch_size: int | None = None,
        generator: Generators = None,
        mask_audio_prompt: bool = True,
    ) -> torch.Tensor:
        """Any subset of text / video / audio -> ``cross_attn_cond`` (B, 384, D) (conditioners + MAF).

        video_sync: Synchformer features (B, sync_len, D); None computes them from the video
        file with the pipeline's Synchformer (refused without one); ``"zeros"`` uses zero
        features (a warning says so: not the release's conditioning). ``generator``: one, or a
        list of one per item, each item then encoded alone with its own.
        """
        from .media import load_audio_prompt

        cc = self.model.conditioner.config
        if isinstance(text, str):
            text = [text]
        if isinstance(generator, (list, tuple)) and batch_size is None:
            batch_size = len(generator)
        video, video_sync = self._video_inputs(video, video_sync)
        if isinstance(audio, (str, os.PathLike)):
            audio = load_audio_prompt(
                audio, sample_rate=self.cfg.sample_rate, seconds_total=cc.audio_prompt_samples / self.cfg.sample_rate
            )[None]
        if batch_size is not None and text is None and video is None and audio is None:
            text = [""] * batch_size
        if batch_size is not None:  # one item (a prompt, a file) is repeated to the batch
            text, video, video_sync, audio = (_repeat(x, batch_size) for x in (text, video, video_sync, audio))
        inputs = (text, video, video_sync, audio)
        if not isinstance(generator, (list, tuple)):
            return self._conditioning_tokens(inputs, generator, mask_audio_prompt)
        return torch.cat([self._conditioning_tokens([None if x is None else x[i:i + 1] for x in inputs], g,
                                                    mask_audio_prompt) for i, g in enumerate(generator)])

    def _conditioning_tokens(self, inputs, generator, mask: bool) -> torch.Tensor:
        cond = self.model.conditioner(*inputs, device=self.device, generator=generator, mask_audio_prompt=mask)
        return self.model.conditioning_tokens(cond).to(self.dtype)

    @torch.no_grad()
    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        *,
        video: str | os.PathLike | torch.Tensor | None = None,
        video_sync: torch.Tensor | str | None = None,
        audio: str | os.PathLike | torch.Tensor | None = None,
        seconds: float | None = None,
        steps: int | None = None,
        cfg_scale: float | None = None,
        mode: str = "turbo",
        generator: torch.Generator | int | Sequence[torch.Generator | int] | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        mask_audio_prompt: bool = True,
        return_latents: bool = False,
        strict: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """Generate. Returns ``(waveform (B, 2, seconds * sr) float32, sample_rate)``, the decoder's
        output, not normalised (or ``(latents (B, 64, 236), sample_rate)`` with ``return_latents``).

        One ``str`` prompt, file path or unbatched tensor is one item, repeated to the batch (``batch_size``,
        or the length of the batched inputs). ``generator`` is a ``torch.Generator`` on the pipeline's device
        or an integer seed, or a list of them, one per item (each then conditioned, noised and decoded alone;
        the sampler runs them together). A prompt longer than the text encoder reads is cut with a warning,
        once per prompt; with ``strict`` it raises :class:`ArgumentError`. Every argument is checked before
        any work (:func:`check_generation_args`).
        """
        args = check_generation_args(
            self.cfg, text=text, video=video, video_sync=video_sync, audio=audio, seconds=seconds, steps=steps,
            cfg_scale=cfg_scale, mode=mode, generator=generator, batch_size=batch_size, device=self.device)
        self._check_text_length(args.text, strict)
        cond = self.encode_conditioning(args.text, video, args.video_sync, audio, args.batch_size, args.generator,
                                        mask_audio_prompt)
        latents = self.sample(cond, steps=args.steps, cfg_scale=args.cfg_scale, mode=args.mode,
                              generator=args.generator, progress=progress)
        if return_latents:
            return latents, self.cfg.sample_rate
        parts = latents.split(1) if isinstance(args.generator, list) else (latents,)  # per item: decoded alone
        return torch.cat([self.decode(p, args.seconds) for p in parts]), self.cfg.sample_rate

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, *, steps: int | None = None, cfg_scale: float | None = None,
               mode: str = "turbo", generator: Generators = None, progress: bool = False) -> torch.Tensor:
        """Latents (B, 64, 236) from encode_conditioning's ``cond`` (B, 384, D); ``generator``: one, or one per item."""
        if not isinstance(cond, torch.Tensor) or cond.dim() != 3:
            raise ArgumentError(f"cond must be encode_conditioning's output (B, tokens, D), got {cond!r:.60}")
        args = check_generation_args(self.cfg, steps=steps, cfg_scale=cfg_scale, mode=mode, generator=generator,
                                     batch_size=cond.shape[0], device=self.device)
        cond, dit = cond.to(self.device, self.dtype), self.model.dit
        shape = (cond.shape[0], self.cfg.dit.io_channels, self.cfg.dit.latent_frames)
        noise = draw_noise(shape, args.generator, self.device, self.dtype)
        if args.mode == "turbo":
            return self.sampler.turbo(dit, noise, cond, steps=args.steps, generator=args.generator, progress=progress)
        return self.sampler.teacher(dit, noise, cond, steps=args.steps, cfg_scale=args.cfg_scale, progress=progress)

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


def _load_synchformer(file: str | os.PathLike, cfg: AudioXConfig) -> tuple[Synchformer, str]:
    """(the Synchformer for ``cfg`` with the weights of ``file``, the file)."""
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise CheckpointError(f"Synchformer checkpoint not found: {file}")
    return Synchformer.from_file(file, synchformer_config_for(cfg)), file


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
