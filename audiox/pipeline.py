"""``AudioXPipeline``: text / video / audio prompt -> waveform, in the diffusers style.

    pipe = AudioXPipeline.from_pretrained("checkpoints/")   # or .from_preset("tiny")
    wave, sr = pipe(text="a dog barking", seconds=10, generator=torch.Generator().manual_seed(0))

Two modes: ``"turbo"`` (the DMD student: 4 steps, no CFG) and ``"teacher"`` (Euler with
batched CFG, release defaults 250 steps at cfg 6). Generation always runs the model's
full 10 s latent (the release's DiT has a fixed 237-token length); the waveform is cropped
to ``seconds`` and peak-normalised, as the release does.

Video tasks: the release conditions on CLIP features of the clip at 5 fps plus Synchformer
features of the same clip at 25 fps, and refuses video without the Synchformer checkpoint
(``synchformer/synchformer_state_dict.pth`` in the model directory, or ``synchformer=``).
So does the pipeline, unless the caller passes precomputed features (``video_sync=tensor``)
or asks for zero features (``video_sync="zeros"``, not the release's conditioning).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from .checkpoint import CheckpointError, LoadReport, load_into
from .config import AudioXConfig, ConfigError, get_preset, load_model_config
from .model import AudioXModel, synchformer_config_for
from .synchformer import Synchformer, sync_pixels
from .sampling import TEACHER_CFG_SCALE, TEACHER_STEPS, ReferenceSampler, draw_noise, make_generator

__all__ = ["AudioXPipeline", "EMBEDDED_DIR", "SYNCHFORMER_FILE", "MissingSynchformerError", "find_synchformer",
           "missing_synchformer_message"]

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


BYTE_TOKENIZER_MARK = "audiox_byte_tokenizer.json"


def _load_text_encoder(t5_dir: str, output_dim: int):
    """A local T5 directory: a real one (sentencepiece tokenizer) or one we saved with the
    offline byte tokenizer (marked by ``audiox_byte_tokenizer.json``)."""
    from .conditioners import ByteTokenizer, T5Conditioner

    if not os.path.isfile(os.path.join(t5_dir, BYTE_TOKENIZER_MARK)):
        return T5Conditioner.from_pretrained(t5_dir, output_dim=output_dim)
    from transformers import T5EncoderModel

    with open(os.path.join(t5_dir, BYTE_TOKENIZER_MARK), encoding="utf-8") as f:
        max_length = int(json.load(f)["max_length"])
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 19-tensor file: no "Loading weights" bar on stderr
    try:
        t5 = T5EncoderModel.from_pretrained(t5_dir, local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return T5Conditioner(t5, ByteTokenizer(), max_length=max_length, output_dim=output_dim)


class AudioXPipeline:
    def __init__(self, model: AudioXModel, *, source: _Source, device="cpu", dtype=torch.float32,
                 synchformer: Synchformer | None = None, synchformer_source: str | None = None):
        self.model = model.eval()
        self.cfg: AudioXConfig = model.cfg
        self.source = source
        self.device = torch.device(device)
        self.dtype = dtype
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
        cfg = get_preset(name)
        embedded = os.path.join(EMBEDDED_DIR, name)
        if os.path.isfile(os.path.join(embedded, "model.safetensors")):
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
        """Load a model directory laid out as the release (or as ``save_pretrained`` writes):

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
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise CheckpointError(f"model directory not found: {path}")
        cfg = load_model_config(_find_one(path, ["model_config.json", "config.json", "*.json"], "model config"))
        t5_dir = t5_dir or (os.path.join(path, "t5-base") if os.path.isdir(os.path.join(path, "t5-base")) else None)
        text = None
        if t5_dir is not None:
            text = _load_text_encoder(os.fspath(t5_dir), cfg.dit.cond_token_dim)
        elif cfg.name != "tiny" and cfg.conditioning.get("preset") != "tiny":
            log.warning("no local T5 given: text goes through a random small T5 stand-in (give t5_dir=)")
        model = AudioXModel(cfg, text_encoder=text)
        ckpt = _find_one(
            path,
            ["model.safetensors", "audiox_turbo/audiox_turbo.ckpt", "*.safetensors", "*.ckpt"],
            "student checkpoint",
        )
        report = load_into(model, ckpt, strict=False, prefix="")
        vae_file = os.path.join(path, "pretransform", "vae.ckpt")
        vae_missing = [k for k in report.missing if k.startswith("pretransform.")]
        if vae_missing and os.path.isfile(vae_file):
            vae_report = load_into(model.pretransform, vae_file, strict=strict)
            report.missing = [k for k in report.missing if not k.startswith("pretransform.")]
            report.loaded += ["pretransform." + k for k in vae_report.loaded]
        _check_report(report, ckpt, strict)
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
                    json.dump({"max_length": t5.max_length}, f)
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
            raise ValueError(f"video_sync must be a tensor (B, sync_len, D), 'zeros' or None, got {video_sync!r}")
        if zeros:
            video_sync = None
            if video is not None:
                log.warning(ZERO_SYNC_NOTE)
        is_file = isinstance(video, (str, os.PathLike))
        compute_sync = video is not None and video_sync is None and not zeros
        if compute_sync and not is_file:
            raise ValueError("video given as 5 fps frames: the Synchformer needs the clip at 25 fps; give the "
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
        generator: torch.Generator | None = None,
        mask_audio_prompt: bool = True,
    ) -> torch.Tensor:
        """Any subset of text / video / audio -> ``cross_attn_cond`` (B, 384, D) (conditioners + MAF).

        video_sync: Synchformer features (B, sync_len, D); None computes them from the video
        file with the pipeline's Synchformer (refused without one); ``"zeros"`` uses zero
        features (a warning says so: not the release's conditioning).
        """
        from .media import load_audio_prompt

        cc = self.model.conditioner.config
        if isinstance(text, str):
            text = [text]
        video, video_sync = self._video_inputs(video, video_sync)
        if isinstance(audio, (str, os.PathLike)):
            audio = load_audio_prompt(
                audio, sample_rate=self.cfg.sample_rate, seconds_total=cc.audio_prompt_samples / self.cfg.sample_rate
            )[None]
        if batch_size is not None and text is None and video is None and audio is None:
            text = [""] * batch_size
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
        video_sync: torch.Tensor | str | None = None,
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
    ) -> tuple[torch.Tensor, int]:
        """Generate. Returns ``(waveform (B, 2, seconds * sr) float32 in [-1, 1], sample_rate)``
        (or ``(latents (B, 64, 236), sample_rate)`` with ``return_latents``)."""
        seconds = self.cfg.seconds if seconds is None else float(seconds)
        if not 0 < seconds <= self.cfg.seconds:
            raise ValueError(f"seconds must be in (0, {self.cfg.seconds:g}], got {seconds:g}")
        if mode not in ("turbo", "teacher"):
            raise ValueError(f"mode must be 'turbo' or 'teacher', got {mode!r}")
        if mode == "turbo":
            steps = self.cfg.student_steps if steps is None else int(steps)
            if cfg_scale not in (None, 1.0):
                raise ValueError("the Turbo student runs without CFG: leave cfg_scale unset (or 1) in turbo mode")
            cfg_scale = 1.0
        else:
            steps = TEACHER_STEPS if steps is None else int(steps)
            cfg_scale = TEACHER_CFG_SCALE if cfg_scale is None else float(cfg_scale)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        gen = make_generator(generator, self.device)
        cond = self.encode_conditioning(text, video, video_sync, audio, batch_size, gen, mask_audio_prompt)
        b = cond.shape[0]
        dit = self.model.dit
        shape = (b, self.cfg.dit.io_channels, self.cfg.dit.latent_frames)
        noise = draw_noise(shape, gen, self.device, self.dtype)
        if mode == "turbo":
            latents = self.sampler.turbo(dit, noise, cond, steps=steps, generator=gen, progress=progress)
        else:
            latents = self.sampler.teacher(dit, noise, cond, steps=steps, cfg_scale=cfg_scale, progress=progress)
        if return_latents:
            return latents, self.cfg.sample_rate
        return self.decode(latents, seconds), self.cfg.sample_rate

    def decode(self, latents: torch.Tensor, seconds: float | None = None) -> torch.Tensor:
        """Latents -> waveform in fp32 (as the release), cropped and peak-normalised per clip."""
        audio = self.model.pretransform.decode(latents.float())
        if seconds is not None:
            audio = audio[..., : int(round(seconds * self.cfg.sample_rate))]
        peak = audio.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
        return (audio / peak).clamp(-1, 1)


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


def _check_report(report: LoadReport, path: str, strict: bool) -> None:
    if report.ok:
        return
    msg = f"{path} does not match the model config:\n{report.describe()}"
    if strict:
        raise CheckpointError(msg)
    log.warning(msg)


def _read_meta(path: str) -> dict:
    meta = os.path.join(path, "meta.json")
    if not os.path.isfile(meta):
        return {}
    try:
        with open(meta, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{meta} is not valid JSON: {e}") from None
