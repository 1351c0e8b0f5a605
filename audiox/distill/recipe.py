"""The tiny-family training recipe: ``audiox distill --recipe tiny --out DIR [--resume] [--budget-minutes M]``.

Stages, each in ``DIR/<stage>/`` with safetensors weights and a JSON state, each resumable:

1. ``vae``: the VAE on crops of procedural train clips (multi-resolution STFT with a
   -80 dB floor and log-band terms, a small KL term): by default the DDSP codec of
   :mod:`audiox.ddsp_vae` (``vae_type="ddsp"``), since the tiny preset's Oobleck did not
   learn pitch in this budget; :func:`check_vae` then gates the later stages;
2. ``latents``: procedural train clips of the model's full length (236 latent frames for
   ``tiny``) encoded to posterior means by that VAE, with their captions; tones at any
   whole frequency outside the held-out notes' neighbourhoods (``train_frequencies``);
3. ``text``: the ``tiny`` preset's small byte-level T5 stand-in is taught to read the
   captions (every token's output carries kind, level, waveform, frequencies, count through a
   linear read-out; :mod:`.text_reader`), which a pretrained T5 brings to the release; the
   random stand-in left the teacher deaf to the stated frequency. Frozen afterwards and
   shipped in the export's ``t5-base/``;
4. ``teacher``: DiT + MAF as a rectified-flow model on those latents with caption
   conditioning and CFG dropout (null condition = zeros in place of the MAF output, as the
   release's CFG). The conditioners run under ``no_grad`` as released; the (absent) video /
   audio-prompt conditioners stay frozen: with no such prompt they emit constants the MAF absorbs.
   The later stages use an EMA of its weights (``teacher_ema_decay``);
5. ``classifier``: the classifier of :mod:`.classifier` on procedural labels (its embedding is
   the FD's feature space);
6. ``student``: 4-step DMD from that teacher with :class:`~audiox.distill.dmd.DMDTrainer`; the
   EMA is scored on training-split prompts along the way and the best one is kept
   (:func:`score_student`, ``student_select_every``);
7. ``eval``: FD / accuracy / frequency error on the held-out split for the data, the VAE
   reconstruction, the teacher at 4, 8, 25, 50 steps with CFG and the student at 1, 2, 4
   steps -> ``DIR/metrics.json`` and ``DIR/metrics.png``;
8. ``export``: ``AudioXPipeline.save_pretrained(DIR/export)`` (checked <= 20 MB).

Budget: the default run is planned for 180 minutes on 2 CPU cores; each stage stops at
its step count or its share of the time budget, whichever comes first (``--budget-minutes``
scales every share; elapsed time is kept in the state, so a resumed stage only gets what
is left; a stage that finished, by steps or by time, stays finished, since the later stages
were built on it). Shares (minutes of 180), with the step counts they were sized for (measured on
this project's 2-core CPU box, 2 torch threads, nothing else running):

===========  =======  =======================================================
stage        minutes  default work (cost per unit)
===========  =======  =======================================================
vae          20       4000 steps, batch 8 x 0.74 s crops (DDSP codec: 529 fit in 20 min)
latents      5        2000 clips of 10.96 s (2.6 min with the DDSP codec in run 4; 11.5 with the Oobleck)
text         16       12000 steps, batch 64 captions (6.7 min in run 5; held-out caption reading
                      0.25 semitone median vs 0.70 after the 4000 steps of runs 3-4)
teacher      79       15000 steps, batch 8 (0.32 s / step in run 5: 14776 steps in 79 min; run 4 measured 0.36-0.56)
classifier   6        800 clips rendered once, 1500 steps of batch 32
student      40       7000 DMD updates, batch 4, 4 critic : 1 generator (~0.33 s)
eval         14       160 held-out prompts x 9 systems (planned, not capped)
export       ~0       save + size check
===========  =======  =======================================================

Torch threads default to 2 (``num_threads``): on a box where other jobs hold a core, 1
thread is several times faster than 2 (oversubscribed spinning), so lower it there.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm

from .._io import atomic_directory
from ..config import check_known_fields
from ..config import AudioXConfig, get_preset
from ..model import AudioXModel
from ..pipeline import WEIGHT_DTYPES, AudioXPipeline, _Source
from ..sampling import draw_noise, sample_teacher, sample_turbo
from .classifier import ProceduralAudioClassifier, classifier_loss, classify, labels_of
from .dmd import DMDConfig, DMDTrainer, ema_update
from .text_reader import TextReadout, check_text, random_caption_params, text_loss
from .evaluate import audio_metrics, fit_length, plot_metrics, procedural_dataset, render, spectrograms, write_metrics
from .procedural import FREQUENCY_MODES
from .toy import torch_threads

STAGES = ("vae", "latents", "text", "teacher", "classifier", "student", "eval", "export")
PLANNED_MINUTES = 180.0
EXPORT_LIMIT_BYTES = 20_000_000  # the 20 MB, decimal
StepHook = Callable[[str, int], None]


@dataclass
class RecipeConfig:
    """Every knob of the recipe. ``minutes`` are shares of :data:`PLANNED_MINUTES`, scaled by
    ``budget_minutes / PLANNED_MINUTES``."""

    preset: str = "tiny"
    model: Optional[dict] = None
    """An :class:`AudioXConfig` dict replacing the preset (tests use a short latent)."""
    seed: int = 0
    num_threads: Optional[int] = 2
    budget_minutes: float = PLANNED_MINUTES
    checkpoint_every: int = 200
    # 1. VAE
    vae_type: str = "ddsp"
    """"ddsp": the procedural codec of :mod:`audiox.ddsp_vae` (the default: pitch-exact by
    construction); "preset": the preset's own VAE (the tiny Oobleck, which did not learn
    pitch in this budget; see :func:`multi_resolution_stft_loss`)."""
    vae_steps: int = 4000
    vae_minutes: float = 20.0
    vae_batch: int = 8
    vae_crop_frames: int = 16
    vae_clip_seconds: float = 2.0
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-4
    vae_l1_weight: float = 0.0
    """Waveform L1 (for a waveform decoder; 0 for the DDSP codec, whose phases are its own)."""
    vae_stft_sizes: tuple = (4096, 1024, 256)
    vae_stft_floor_db: float = -80.0
    vae_bands: tuple = (12, 48, 192)
    vae_max_tone_error: Optional[float] = 1.0
    """The VAE must reconstruct held-out tones within this many semitones (median) before
    the later stages run on its latents (:func:`check_vae`); None skips the check."""
    # 2. latents
    train_frequencies: str = "continuous"
    """Tone frequencies of the teacher's (and the student selection's) train clips: see
    :class:`ProceduralAudioConfig`. "continuous" (the default since run 5): a teacher trained on
    the 39 train notes put held-out notes on a neighbouring train note (signed errors mostly
    -1 to -2 semitones), which no student can beat; drawn from the continuum outside the
    held-out bands it has to read the number. The VAE and classifier stay on notes."""
    latent_items: int = 2000
    latents_save_every: int = 250
    latents_minutes: float = 5.0
    # 3. text encoder (see :mod:`audiox.distill.text_reader`)
    text_steps: int = 12000
    text_minutes: float = 16.0
    text_batch: int = 64
    text_lr: float = 1e-3
    # 4. teacher
    teacher_steps: int = 15000
    teacher_minutes: float = 79.0
    teacher_batch: int = 8
    teacher_lr: float = 3e-4
    teacher_warmup: int = 100
    teacher_ema_decay: float = 0.999
    """The teacher the later stages use is an EMA of the trained weights (the learning rate
    stays constant, so the raw weights keep the last updates' noise)."""
    cfg_dropout: float = 0.1
    # 5. student
    student_updates: int = 7000
    student_minutes: float = 40.0
    student_batch: int = 4
    student_select_every: int = 150
    """Every this many DMD updates (and at the start) the student's EMA is scored on prompts of
    the training split (:func:`score_student`) and the best-scoring weights are the ones the
    evaluation and the export use (0: the final EMA). In the first complete run the EMA passed
    its best pitch near 100 generator updates and then drifted away (BENCHMARKS.md)."""
    student_select_items: int = 32
    dmd: dict = field(default_factory=lambda: {"guidance_scale": 1.0, "generator_lr": 1e-5, "critic_lr": 1e-4,
                                               "critic_updates_per_generator_update": 4, "ema_decay": 0.99,
                                               "weight_decay": 0.0, "grad_clip_norm": 1.0})
    # 6. classifier and evaluation
    classifier_items: int = 800
    classifier_steps: int = 1500
    classifier_minutes: float = 6.0
    classifier_batch: int = 32
    classifier_lr: float = 2e-3
    eval_items: int = 160
    """Prompts and as many reference clips: the FD's 64-dim embedding needs well over 64 of each
    (at 32 the data's own FD was 2260, larger than most gaps between systems)."""
    eval_minutes: float = 14.0
    eval_cfg_scale: float = 1.0
    """Also the DMD guidance by default. Measured on the 45-minute teacher of the first complete run
    (25 Euler steps, 20 tone prompts): guidance pushes the pitch, a channel fixed by the
    caption, away from the mean (u + w(c - u) extrapolates it): held-out median error 1.64
    semitones at w=1, 1.66 at 1.5, 4.30 at 2, 7.28 at 3; train notes 2.73, 7.22, 6.66, 13.1."""
    eval_teacher_steps: tuple = (4, 8, 25, 50)
    eval_student_steps: tuple = (1, 2, 4)
    # 8. export
    export_dtype: str = "float16"
    """Storage dtype of the export's ``model.safetensors`` ("float32", "float16", "bfloat16").
    The shipped parameters (student DiT, MAF, VAE, the frozen video / audio conditioners; the
    T5 and all buffers are saved as they are) are rounded to it *before* the evaluation
    (:func:`round_shipped`), so the metrics are those of the files shipped. float16 shrinks the
    export (run 5: 20.8 -> 12.0 MB; weight-norm VAE layers are stored as float32 weight_g / weight_v)."""

    def __post_init__(self):
        self.vae_stft_sizes = tuple(int(s) for s in self.vae_stft_sizes)
        self.vae_bands = tuple(int(b) for b in self.vae_bands)
        if self.vae_type not in ("ddsp", "preset"):
            raise ValueError(f"vae_type must be 'ddsp' or 'preset', got {self.vae_type!r}")
        if self.train_frequencies not in FREQUENCY_MODES:
            raise ValueError(f"train_frequencies must be one of {FREQUENCY_MODES}, got {self.train_frequencies!r}")
        self.eval_teacher_steps = tuple(int(s) for s in self.eval_teacher_steps)
        self.eval_student_steps = tuple(int(s) for s in self.eval_student_steps)
        if self.budget_minutes <= 0:
            raise ValueError(f"budget_minutes must be > 0, got {self.budget_minutes}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if not 0.0 <= self.teacher_ema_decay < 1.0:
            raise ValueError(f"teacher_ema_decay must be in [0, 1), got {self.teacher_ema_decay}")
        if self.student_select_every < 0:
            raise ValueError(f"student_select_every must be >= 0 (0: no selection), got {self.student_select_every}")
        if self.student_select_items < 2:
            raise ValueError(f"student_select_items must be >= 2 (for a covariance), got {self.student_select_items}")
        if self.eval_items < 2:
            raise ValueError(f"eval_items must be >= 2 (for a covariance), got {self.eval_items}")
        if self.export_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"export_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {self.export_dtype!r}")
        self.dmd_config()  # validates the DMD overrides early

    def dmd_config(self) -> DMDConfig:
        return DMDConfig.from_dict({"seed": self.seed, **self.dmd})

    def model_config(self) -> AudioXConfig:
        cfg = AudioXConfig.from_dict(self.model) if self.model is not None else get_preset(self.preset)
        if self.vae_type == "ddsp":
            cfg = dataclasses.replace(cfg, vae={"type": "ddsp", "config": {}})
        return cfg

    def seconds_for(self, stage: str) -> float:
        return getattr(self, f"{stage}_minutes") * 60.0 * self.budget_minutes / PLANNED_MINUTES

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RecipeConfig":
        check_known_fields(cls, d, ValueError)
        return cls(**d)

    @classmethod
    def micro(cls, **overrides) -> "RecipeConfig":
        """Seconds-scale run for tests: a 12-frame (0.56 s) latent and a handful of steps per stage."""
        tiny = get_preset("tiny").to_dict()
        frames = 12
        tiny.update(name="tiny-micro", sample_size=frames * 2048, seconds=frames * 2048 / 44100)
        tiny["dit"].update(latent_seq_len=frames + 1, depth=1)
        tiny["maf"].update(num_fusion_layers=1)
        d = dict(model=tiny, num_threads=1, checkpoint_every=2, vae_steps=3, vae_batch=2, vae_crop_frames=2,
                 vae_max_tone_error=None,
                 vae_clip_seconds=0.5, vae_stft_sizes=(256, 64), latent_items=6, latents_save_every=2,
                 text_steps=3, text_batch=4,
                 teacher_steps=4, teacher_batch=2,
                 teacher_warmup=1, student_updates=4, student_batch=2,
                 dmd={"guidance_scale": 3.0, "critic_updates_per_generator_update": 1, "ema_decay": 0.5,
                      "generator_lr": 1e-4, "critic_lr": 1e-4},
                 classifier_items=8, classifier_steps=3, classifier_batch=4, eval_items=4, student_select_items=4,
                 eval_teacher_steps=(1, 2), eval_student_steps=(1, 2))
        d.update(overrides)
        return cls(**d)


# ----------------------------------------------------------------------------- checkpoint plumbing


# Random-stream ids, fixed when the stage order changed (the classifier moved before the
# student), so that every stage draws what it drew before; new streams go at the end.
_RNG_STREAMS = ("vae", "latents", "text", "teacher", "student", "classifier", "eval", "export", "select")


def _rng(seed: int, stage: str, step: int) -> torch.Generator:
    """A generator for (seed, stage, step): resumed runs draw what uninterrupted ones drew."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + _RNG_STREAMS.index(stage) * 7_919_993 + step * 104_729 + 1) % (2 ** 63 - 1))
    return g


@contextlib.contextmanager
def _seeded_global_rng(seed: int, stage: str, step: int):
    """Seed torch's global RNG for one update and restore it after: modules that draw from
    it (the MAF's dropout) then repeat their draws when a run is resumed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2 ** 62, (1,), generator=_rng(seed, stage, step + 10 ** 9))))
        yield


def _clip_samples(model: AudioXModel) -> int:
    """Audio samples of one clip of the model's full latent length."""
    return model.cfg.dit.latent_frames * model.cfg.downsampling_ratio


def build_model(cfg: RecipeConfig) -> AudioXModel:
    """The model at its seeded initialisation (the frozen T5 stand-in included), without
    touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return AudioXModel(cfg.model_config())


def _read_state(directory: str) -> Optional[dict]:
    path = os.path.join(directory, "state.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def save_stage(directory: str, modules: dict, optimizer: Optional[torch.optim.Optimizer], state: dict) -> None:
    """Weights (safetensors per module), optimizer (torch.save, loadable with weights_only=True)
    and the JSON state, written to a temporary folder and swapped in, so an interruption
    while saving leaves the previous checkpoint whole."""
    with atomic_directory(directory) as tmp:
        for name, module in modules.items():
            save_model(module, os.path.join(tmp, f"{name}.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(state, f, indent=2)


def load_stage(directory: str, modules: dict, optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
    state = _read_state(directory)
    if state is None:
        raise FileNotFoundError(f"no stage checkpoint in {directory!r} (missing state.json)")
    for name, module in modules.items():
        load_model(module, os.path.join(directory, f"{name}.safetensors"))
    opt_path = os.path.join(directory, "optimizer.pt")
    if optimizer is not None and os.path.isfile(opt_path):
        optimizer.load_state_dict(torch.load(opt_path, weights_only=True))
    return state


def train_stage(name: str, out: str, cfg: RecipeConfig, modules: dict, optimizer: torch.optim.Optimizer,
                step_fn: Callable[[int], dict], total_steps: int, progress: bool,
                on_step: Optional[StepHook] = None, extra_state: Optional[dict] = None) -> dict:
    """Run ``step_fn(step)`` (one optimizer update, returns float logs) until ``total_steps``
    or the stage's time share is spent, checkpointing every ``cfg.checkpoint_every`` steps.
    A finished stage is loaded and skipped; an unfinished one continues from its step."""
    directory = os.path.join(out, name)
    state = {"stage": name, "step": 0, "elapsed_s": 0.0, "done": False, "stopped_by": None,
             "total_steps": total_steps, "last_logs": {}, **(extra_state or {})}
    if _read_state(directory) is not None:
        state.update(load_stage(directory, modules, optimizer))
        if state["done"]:
            return state
    budget_s = cfg.seconds_for(name)
    bar = tqdm(total=total_steps, initial=state["step"], desc=name, disable=not progress, dynamic_ncols=True)
    start, base = time.perf_counter(), state["elapsed_s"]
    try:
        while state["step"] < total_steps and base + time.perf_counter() - start < budget_s:
            with _seeded_global_rng(cfg.seed, name, state["step"]):
                logs = step_fn(state["step"])
            for k, v in logs.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"{name} step {state['step']}: {k} is {v}")
            state["step"] += 1
            state["last_logs"] = logs
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
            if state["step"] % cfg.checkpoint_every == 0:
                state["elapsed_s"] = base + time.perf_counter() - start
                save_stage(directory, modules, optimizer, state)
                load_stage(directory, modules)  # continue from the stored numbers, as a resume would
            if on_step is not None:
                on_step(name, state["step"])
    finally:
        bar.close()
    state.update(elapsed_s=base + time.perf_counter() - start, done=True,
                 stopped_by="steps" if state["step"] >= total_steps else "time")
    save_stage(directory, modules, optimizer, state)
    # Later stages use the weights as stored, so a run that resumes after this stage sees the
    # very same numbers (the VAE's weight norm is folded on save and split again on load,
    # which may move the last bit).
    load_stage(directory, modules)
    return state


def _update(opt: torch.optim.Optimizer, params: list, loss: torch.Tensor, lr: float) -> dict:
    """One optimizer step at learning rate ``lr`` with gradients clipped to norm 1."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return {"loss": loss.item(), "grad_norm": float(gn)}


# ----------------------------------------------------------------------------- 1. VAE


@functools.lru_cache(maxsize=32)
def _cached_filterbank(n_fft: int, bands: int, sample_rate: int) -> torch.Tensor:
    from ..ddsp_vae import log_band_filterbank

    return log_band_filterbank(n_fft, bands, sample_rate)


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor, sizes=(4096, 1024, 256),
                               floor_db: float = -80.0, bands: tuple = (), sample_rate: int = 44100) -> torch.Tensor:
    """Mean over FFT sizes of spectral convergence + L1 of log magnitudes, plus, for each
    entry of ``bands``, an L1 of log magnitudes summed in that many log-spaced bands.
    pred, target (B, C, L).

    The log magnitudes are taken of ``|X| + floor`` with the floor ``floor_db`` below the
    Hann-window peak of a full-scale sine (``n / 4``). Without it (a clamp at 1e-5, -146 dB)
    the L1 of logs is ruled by the empty bins of these sparse spectra (pure tones, silence
    between hits): the tiny VAE trained so for 6000 steps played held-out tones 13 dB too
    quiet (median; 32 dB for a loud sine) and 15 semitones off, its own artefacts at
    multiples of 44100 / 128 Hz louder than the tone (:func:`check_vae`). The band terms give
    a gradient toward a partial that is near but not on the right bins (a per-bin loss only
    penalises energy in the wrong bin)."""
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    p, t = pred.flatten(0, 1), target.flatten(0, 1)
    total = pred.new_zeros(())
    for n in sizes:
        win = torch.hann_window(n, device=pred.device, dtype=pred.dtype)
        mp = torch.stft(p, n, n // 4, window=win, return_complex=True).abs()
        mt = torch.stft(t, n, n // 4, window=win, return_complex=True).abs()
        sc = torch.linalg.norm(mt - mp) / torch.linalg.norm(mt).clamp_min(1e-7)
        floor = (n / 4) * 10.0 ** (floor_db / 20.0)
        mag = (torch.log(mp + floor) - torch.log(mt + floor)).abs().mean()
        total = total + sc + mag
        for nb in bands:
            fb = _cached_filterbank(n, int(nb), sample_rate).to(pred.device, pred.dtype)
            total = total + (torch.log(fb @ mp + floor) - torch.log(fb @ mt + floor)).abs().mean()
    return total / len(sizes)


def run_vae(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool, on_step: Optional[StepHook]) -> dict:
    ae = model.pretransform.model
    sr, crop = model.cfg.sample_rate, cfg.vae_crop_frames * ae.downsampling_ratio
    ds = procedural_dataset("train", max(crop, int(cfg.vae_clip_seconds * sr)), sr, cfg.seed)
    ae.train().requires_grad_(True)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.vae_lr, betas=(0.8, 0.99))

    def step(k: int) -> dict:
        g = _rng(cfg.seed, "vae", k)
        idx = torch.randint(0, len(ds), (cfg.vae_batch,), generator=g).tolist()
        clips = []
        for i in idx:
            audio = ds[i]["audio"]
            off = int(torch.randint(0, audio.shape[-1] - crop + 1, (1,), generator=g))
            clips.append(audio[:, off:off + crop])
        x = torch.stack(clips)
        mean, std = ae.posterior(x)
        z = mean + std * torch.randn(mean.shape, generator=g)
        y = ae.decode(z)[..., :crop]
        stft = multi_resolution_stft_loss(y, x, cfg.vae_stft_sizes, cfg.vae_stft_floor_db, cfg.vae_bands, sr)
        l1 = (y - x).abs().mean()
        kl = 0.5 * (mean.square() + std.square() - 2 * torch.log(std) - 1).mean()
        loss = stft + cfg.vae_l1_weight * l1 + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item(), "stft": stft.item(), "l1": l1.item(), "kl": kl.item()}

    state = train_stage("vae", out, cfg, {"vae": ae}, opt, step, cfg.vae_steps, progress, on_step)
    ae.eval().requires_grad_(False)
    state["check"] = check_vae(model, cfg.seed)
    gate = cfg.vae_max_tone_error
    if gate is not None and not state["check"]["median_semitone_error"] <= gate:
        c = state["check"]
        raise RuntimeError(
            f"the VAE reconstructs held-out tones {c['median_semitone_error']:.2f} semitones off (median of "
            f"{c['num_tones']}; level {c['median_level_db']:+.1f} dB), over vae_max_tone_error={gate}: the teacher "
            f"would learn from a codec that loses the pitch. Give the VAE more time (vae_minutes / vae_steps in a "
            f"new --out), or set vae_max_tone_error to null to go on anyway.")
    return state


@torch.no_grad()
def check_vae(model: AudioXModel, seed: int, num_tones: int = 16, frames: int = 32) -> dict:
    """Reconstruct ``num_tones`` held-out tones (``frames`` latent frames each) and measure
    what the later stages depend on: the pitch (median |semitone error| of the spectral
    peak) and the level (median peak gain, dB)."""
    from .classifier import estimate_frequency, semitone_error

    mc = model.cfg
    length = frames * mc.downsampling_ratio
    ds = procedural_dataset("heldout", length, mc.sample_rate, seed + 1)
    errors, gains, i = [], [], 0
    while len(errors) < num_tones:
        item = ds[i]
        i += 1
        if item["params"]["kind"] != "tone":
            continue
        x = fit_length(item["audio"], length)[None]
        y = model.pretransform.decode(model.pretransform.encode(x, sample=False))
        errors.append(semitone_error(estimate_frequency(y[0], mc.sample_rate), item["params"]["freq_hz"]))
        gains.append(20 * math.log10(max(float(y.abs().max()), 1e-12) / float(x.abs().max())))
    return {"median_semitone_error": float(torch.tensor(errors).median()),
            "fraction_within_1_semitone": float((torch.tensor(errors) <= 1.0).float().mean()),
            "median_level_db": float(torch.tensor(gains).median()), "num_tones": num_tones}


# ----------------------------------------------------------------------------- 2. latents


def run_latents(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
                on_step: Optional[StepHook]) -> dict:
    """Encode full-length train clips; saved every ``checkpoint_every`` items, resumable."""
    directory = os.path.join(out, "latents")
    path = os.path.join(directory, "latents.safetensors")
    state = _read_state(directory) or {"stage": "latents", "step": 0, "elapsed_s": 0.0, "done": False}
    mc = model.cfg
    length = _clip_samples(model)
    ds = procedural_dataset("train", length, mc.sample_rate, cfg.seed, frequencies=cfg.train_frequencies)
    set_latent_normalization(out, model, ds, length)
    if state["done"]:
        return state
    latents = list(load_file(path)["latents"]) if state["step"] else []
    captions = list(state.get("captions", []))[: state["step"]]
    budget_s, start, base = cfg.seconds_for("latents"), time.perf_counter(), state["elapsed_s"]

    def save(done: bool) -> None:
        with atomic_directory(directory) as tmp:
            stacked = torch.stack(latents).contiguous()
            save_file({"latents": stacked}, os.path.join(tmp, "latents.safetensors"))
            state.update(step=len(latents), captions=captions, done=done, elapsed_s=base + time.perf_counter() - start,
                         shape=list(latents[0].shape), std=float(stacked.std()))
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state, f, indent=1)

    bar = tqdm(total=cfg.latent_items, initial=len(latents), desc="latents", disable=not progress,
               dynamic_ncols=True)
    try:
        with torch.no_grad():
            while len(latents) < cfg.latent_items and (base + time.perf_counter() - start < budget_s
                                                       or len(latents) < 2):
                item = ds[len(latents)]
                # Posterior means: the deterministic code of each clip (the KL is small, so
                # samples would only add the VAE's own noise to the teacher's targets).
                z = model.pretransform.encode(fit_length(item["audio"], length)[None], sample=False)[0]
                latents.append(z)
                captions.append(item["caption"])
                bar.update(1)
                if len(latents) % cfg.latents_save_every == 0:
                    save(False)
                if on_step is not None:
                    on_step("latents", len(latents))
    finally:
        bar.close()
    save(True)
    return state


@torch.no_grad()
def set_latent_normalization(out: str, model: AudioXModel, ds, length: int, items: int = 64) -> None:
    """Codecs that standardise their latents per channel (the DDSP codec) get the mean / std
    of the first ``items`` train clips' posterior means, computed once and kept in
    ``DIR/latent_normalization.safetensors`` (later stages and resumed runs load it), so the
    teacher sees unit-scale channels, the pitch channel included."""
    ae = model.pretransform.model
    if not hasattr(ae, "set_latent_normalization"):
        return
    path = os.path.join(out, "latent_normalization.safetensors")
    if os.path.isfile(path):
        stats = load_file(path)
        ae.latent_mean.copy_(stats["latent_mean"])
        ae.latent_std.copy_(stats["latent_std"])
        return
    ae.latent_mean.zero_()
    ae.latent_std.fill_(1.0)
    raw = torch.cat([model.pretransform.encode(fit_length(ds[i]["audio"], length)[None], sample=False)
                     for i in range(items)])
    ae.set_latent_normalization(raw)
    save_file({"latent_mean": ae.latent_mean.clone(), "latent_std": ae.latent_std.clone()}, path)


def load_latents(out: str) -> tuple:
    directory = os.path.join(out, "latents")
    state = _read_state(directory)
    return load_file(os.path.join(directory, "latents.safetensors"))["latents"], state["captions"]


# ----------------------------------------------------------------------------- 3. text encoder


def text_conditioner(model: AudioXModel):
    return model.conditioner.conditioners["text_prompt"]


def run_text(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
             on_step: Optional[StepHook]) -> dict:
    """Train the T5 stand-in to read the captions (:mod:`.text_reader`), then freeze it."""
    text = text_conditioner(model)
    with torch.random.fork_rng(devices=[]):  # the read-out's init must not depend on what ran before
        torch.manual_seed(cfg.seed)
        head = TextReadout(model.cfg.dit.cond_token_dim)
    params = list(text.model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.0)
    text.model.train().requires_grad_(True)

    def step(k: int) -> dict:
        rng = np.random.default_rng([cfg.seed, _RNG_STREAMS.index("text"), k])
        loss = text_loss(text, head, [random_caption_params(rng) for _ in range(cfg.text_batch)])
        # linear decay to a tenth, a function of the step
        return _update(opt, params, loss, cfg.text_lr * (1.0 - 0.9 * k / max(1, cfg.text_steps)))

    state = train_stage("text", out, cfg, {"t5": text.model, "head": head}, opt, step, cfg.text_steps, progress,
                        on_step)
    text.model.eval().requires_grad_(False)
    state["check"] = check_text(text, head)
    return state


# ----------------------------------------------------------------------------- 4. teacher


def caption_condition(model: AudioXModel, captions, generator: torch.Generator) -> torch.Tensor:
    """Captions -> the DiT's cross-attention condition (B, 384, D) through the conditioners
    (frozen, no grad) and the MAF (differentiable)."""
    cond = model.conditioner(text=list(captions), device="cpu", generator=generator)
    return model.conditioning_tokens(cond)


def run_teacher(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
                on_step: Optional[StepHook]) -> dict:
    latents, captions = load_latents(out)
    dit, maf = model.dit, model.maf_block
    params = list(dit.parameters()) + list(maf.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.teacher_lr, weight_decay=0.01)
    dit.train().requires_grad_(True)
    maf.train().requires_grad_(True)

    def step(k: int) -> dict:
        g = _rng(cfg.seed, "teacher", k)
        idx = torch.randint(0, latents.shape[0], (cfg.teacher_batch,), generator=g)
        x0 = latents[idx]
        cond = caption_condition(model, [captions[i] for i in idx.tolist()], g)
        keep = (torch.rand(x0.shape[0], generator=g) >= cfg.cfg_dropout).to(cond.dtype)
        cond = cond * keep[:, None, None]  # CFG dropout: the null condition is all zeros
        t = torch.sigmoid(torch.randn(x0.shape[0], generator=g))  # logit-normal: most weight mid-path
        eps = torch.randn(x0.shape, generator=g)
        z = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
        loss = F.mse_loss(dit(z, t, cond), eps - x0)
        # linear warm-up, a function of the step so resume repeats it
        return _update(opt, params, loss, cfg.teacher_lr * min(1.0, (k + 1) / max(1, cfg.teacher_warmup)))

    dit_ema = copy.deepcopy(dit).requires_grad_(False)
    maf_ema = copy.deepcopy(maf).requires_grad_(False)

    def step_with_ema(k: int) -> dict:
        logs = step(k)
        ema_update(dit_ema, dit, cfg.teacher_ema_decay)
        ema_update(maf_ema, maf, cfg.teacher_ema_decay)
        return logs

    state = train_stage("teacher", out, cfg, {"dit": dit, "maf": maf, "dit_ema": dit_ema, "maf_ema": maf_ema}, opt,
                        step_with_ema, cfg.teacher_steps, progress, on_step)
    dit.load_state_dict(dit_ema.state_dict())
    maf.load_state_dict(maf_ema.state_dict())
    dit.eval().requires_grad_(False)
    maf.eval().requires_grad_(False)
    return state


# ----------------------------------------------------------------------------- 5. student


class _BudgetSpent(Exception):
    """Raised from the DMD trainer's log hook when the student's time share is spent."""


def _decode(model: AudioXModel, latents: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Latents (N, C, T) -> audio (N, channels, samples) through the model's VAE, in batches."""
    return torch.cat([model.pretransform.decode(latents[i:i + batch]) for i in range(0, latents.shape[0], batch)])


@torch.no_grad()
def selection_prompts(cfg: RecipeConfig, model: AudioXModel, classifier: ProceduralAudioClassifier) -> dict:
    """The prompts :func:`score_student` uses: ``student_select_items`` items of the *training*
    split (a seed of their own, so neither the training clips nor the held-out evaluation),
    with fixed noise. Returns cond, noise, params and the clips' classifier embeddings (the
    FD's reference)."""
    mc = model.cfg
    length = _clip_samples(model)
    ds = procedural_dataset("train", length, mc.sample_rate, cfg.seed + 3_333, frequencies=cfg.train_frequencies)
    audio, captions, params = render(ds, range(cfg.student_select_items), length)
    return {"cond": caption_condition(model, captions, _rng(cfg.seed, "select", 0)),
            "noise": draw_noise((len(params), mc.dit.io_channels, mc.dit.latent_frames), _rng(cfg.seed, "select", 1),
                                "cpu"),
            "params": params, "reference": classify(classifier, spectrograms(audio, mc.sample_rate))["embedding"]}


@torch.no_grad()
def score_student(cfg: RecipeConfig, model: AudioXModel, dit: nn.Module, classifier: ProceduralAudioClassifier,
                  prompts: dict) -> dict:
    """Metrics of ``dit`` as a 4-step student on :func:`selection_prompts`, and its selection
    ``score`` (lower is better): the median tone error in semitones plus 12 semitones per unit
    of kind error (hearing a drum for a tone counts as an octave off)."""
    mc = model.cfg
    length = _clip_samples(model)
    steps = len(cfg.dmd_config().student_timesteps)
    latents = sample_turbo(dit, prompts["noise"], steps=steps, cross_attn_cond=prompts["cond"],
                           generator=_rng(cfg.seed, "select", 2))
    m = audio_metrics(classifier, fit_length(_decode(model, latents), length), prompts["params"], mc.sample_rate,
                      prompts["reference"])
    m["score"] = (m["median_semitone_error"] or 0.0) + 12.0 * (1.0 - m["kind_accuracy"])
    return m


def run_student(cfg: RecipeConfig, out: str, model: AudioXModel, classifier: ProceduralAudioClassifier,
                progress: bool, on_step: Optional[StepHook]) -> tuple:
    """DMD from the teacher DiT (MAF frozen: its condition is what the student sees). Returns
    (state, trainer, student): ``student`` is the EMA the selection picked (or the final EMA)."""
    directory = os.path.join(out, "student")
    ckpt = os.path.join(directory, "dmd")
    selected_path = os.path.join(directory, "selected_ema.safetensors")
    latents, captions = load_latents(out)
    trainer = DMDTrainer(model.dit, cfg.dmd_config())
    state = _read_state(directory) or {"stage": "student", "elapsed_s": 0.0, "done": False, "selection": []}
    if DMDTrainer.has_checkpoint(ckpt):
        trainer.load(ckpt)
    selected = copy.deepcopy(trainer.ema)
    if os.path.isfile(selected_path):
        load_model(selected, selected_path)

    def result() -> tuple:
        return state, trainer, (selected if cfg.student_select_every else trainer.ema)

    if state["done"]:
        return result()

    def batch_fn(k: int) -> tuple:
        g = _rng(cfg.seed, "student", k)
        idx = torch.randint(0, latents.shape[0], (cfg.student_batch,), generator=g)
        with torch.no_grad():
            cond = caption_condition(model, [captions[i] for i in idx.tolist()], g)
        return latents[idx], cond

    def save_progress(done: bool, elapsed: float) -> None:
        os.makedirs(directory, exist_ok=True)
        state.update(done=done, elapsed_s=elapsed, step=trainer.step, generator_steps=trainer.generator_steps,
                     total_steps=cfg.student_updates)
        with open(os.path.join(directory, "state.json.tmp"), "w") as f:
            json.dump(state, f, indent=2)
        os.replace(os.path.join(directory, "state.json.tmp"), os.path.join(directory, "state.json"))

    prompts = selection_prompts(cfg, model, classifier) if cfg.student_select_every else None

    def select() -> None:
        """Score the EMA once per step count (also after a resume that stopped before scoring)."""
        if prompts is None or (state["selection"] and state["selection"][-1]["step"] == trainer.step):
            return
        m = score_student(cfg, model, trainer.ema, classifier, prompts)
        entry = {"step": trainer.step, "generator_steps": trainer.generator_steps,
                 **{k: m[k] for k in ("score", "median_semitone_error", "kind_accuracy", "fd")}}
        best = state.get("selected")
        if best is None or entry["score"] < best["score"]:
            selected.load_state_dict(trainer.ema.state_dict())
            os.makedirs(directory, exist_ok=True)
            save_model(selected, selected_path + ".tmp")
            os.replace(selected_path + ".tmp", selected_path)
            state["selected"] = entry
        state["selection"].append(entry)

    budget_s, start, base = cfg.seconds_for("student"), time.perf_counter(), state["elapsed_s"]

    def log_fn(step: int, logs: dict) -> None:
        state.setdefault("last_logs", {}).update({k: v for k, v in logs.items() if k != "k"})
        if on_step is not None:
            on_step("student", step)
        if base + time.perf_counter() - start >= budget_s:
            raise _BudgetSpent  # stop inside a chunk; the checkpoint is written below

    def next_stop() -> int:
        stops = [cfg.student_updates, (trainer.step // cfg.checkpoint_every + 1) * cfg.checkpoint_every]
        if cfg.student_select_every:
            stops.append((trainer.step // cfg.student_select_every + 1) * cfg.student_select_every)
        return min(stops)

    try:
        select()
        while trainer.step < cfg.student_updates and base + time.perf_counter() - start < budget_s:
            trainer.train(batch_fn, next_stop(), progress=progress, checkpoint_dir=ckpt, log_fn=log_fn)
            if trainer.step % max(1, cfg.student_select_every) == 0 or trainer.step >= cfg.student_updates:
                select()
            save_progress(False, base + time.perf_counter() - start)
    except _BudgetSpent:
        trainer.save(ckpt)
    state["stopped_by"] = "steps" if trainer.step >= cfg.student_updates else "time"
    if not DMDTrainer.has_checkpoint(ckpt):
        trainer.save(ckpt)
    select()  # the final EMA is a candidate too
    save_progress(True, base + time.perf_counter() - start)
    return result()


# ----------------------------------------------------------------------------- 6. classifier and evaluation


def run_classifier(cfg: RecipeConfig, out: str, model: AudioXModel, progress: bool,
                   on_step: Optional[StepHook]) -> tuple:
    """Classifier on clips of the model's length from both splits (a seed disjoint from the
    training and evaluation items) so that every note is a class it has heard."""
    mc = model.cfg
    length = _clip_samples(model)
    directory = os.path.join(out, "classifier")
    feats_path = os.path.join(out, "classifier_data.safetensors")
    if os.path.isfile(feats_path):
        data = load_file(feats_path)
    else:
        half = cfg.classifier_items // 2
        specs, kinds, semis = [], [], []
        for split, n in (("train", cfg.classifier_items - half), ("heldout", half)):
            ds = procedural_dataset(split, length, mc.sample_rate, cfg.seed + 7_777)
            audio, _, params = render(ds, range(n), length, progress, desc=f"classifier data ({split})")
            specs.append(spectrograms(audio, mc.sample_rate))
            kinds += [labels_of(p)[0] for p in params]
            semis += [labels_of(p)[1] for p in params]
        data = {"spec": torch.cat(specs), "kind": torch.tensor(kinds), "semitone": torch.tensor(semis)}
        save_file(data, feats_path)
    clf = ProceduralAudioClassifier()
    with torch.no_grad():
        clf.feat_mean.fill_(float(data["spec"].mean()))
        clf.feat_std.fill_(float(data["spec"].std().clamp_min(1e-3)))
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.classifier_lr, weight_decay=1e-4)
    clf.train()

    def step(k: int) -> dict:
        g = _rng(cfg.seed, "classifier", k)
        idx = torch.randint(0, data["spec"].shape[0], (cfg.classifier_batch,), generator=g)
        spec = data["spec"][idx]
        # Small random gain in log power (level invariance) and noise (generated audio is imperfect).
        spec = spec + 0.5 * torch.randn(spec.shape[0], 1, 1, generator=g) + 0.3 * torch.randn(spec.shape, generator=g)
        loss, kl, _ = classifier_loss(clf, spec, data["kind"][idx], data["semitone"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "kind_acc": float((kl.argmax(-1) == data["kind"][idx]).float().mean())}

    state = train_stage("classifier", out, cfg, {"classifier": clf}, opt, step, cfg.classifier_steps, progress,
                        on_step)
    return state, clf.eval().requires_grad_(False)


@torch.no_grad()
def run_eval(cfg: RecipeConfig, out: str, model: AudioXModel, student_dit: nn.Module,
             classifier: ProceduralAudioClassifier, progress: bool, on_step: Optional[StepHook]) -> dict:
    """Every system on the same held-out prompts and noise; per-system results are saved as
    they finish, so a resumed evaluation only runs the rest."""
    directory = os.path.join(out, "eval")
    os.makedirs(directory, exist_ok=True)
    state = _read_state(directory) or {"stage": "eval", "done": False, "systems": {}}
    if state["done"]:
        return state
    mc = model.cfg
    sr, length = mc.sample_rate, _clip_samples(model)
    n = cfg.eval_items
    ds = procedural_dataset("heldout", length, sr, cfg.seed)
    prompts_audio, captions, params = render(ds, range(n), length, progress, desc="eval prompts")
    reference_audio, _, _ = render(ds, range(n, 2 * n), length, progress, desc="eval reference")
    reference = classify(classifier, spectrograms(reference_audio, sr))["embedding"]
    cond = caption_condition(model, captions, _rng(cfg.seed, "eval", 0))
    noise = draw_noise((n, mc.dit.io_channels, mc.dit.latent_frames), _rng(cfg.seed, "eval", 1), "cpu")

    def vae_recon() -> torch.Tensor:
        means = [model.pretransform.encode(prompts_audio[i:i + 4], sample=False) for i in range(0, n, 4)]
        return _decode(model, torch.cat(means))

    def teacher(steps: int) -> torch.Tensor:
        return _decode(model, sample_teacher(model.dit, noise, steps=steps, cfg_scale=cfg.eval_cfg_scale,
                                             cross_attn_cond=cond))

    def student(steps: int) -> torch.Tensor:
        return _decode(model, sample_turbo(student_dit, noise, steps=steps, cross_attn_cond=cond,
                                           generator=_rng(cfg.seed, "eval", 2)))

    systems = {"data": lambda: prompts_audio, "vae_recon": vae_recon}
    for s in cfg.eval_teacher_steps:
        systems[f"teacher_{s}"] = functools.partial(teacher, s)
    for s in cfg.eval_student_steps:
        systems[f"student_{s}"] = functools.partial(student, s)
    start = time.perf_counter()
    for name, make in tqdm(list(systems.items()), desc="eval", disable=not progress, dynamic_ncols=True):
        if name in state["systems"]:
            continue
        t0 = time.perf_counter()
        audio = fit_length(make(), length)
        state["systems"][name] = {**audio_metrics(classifier, audio, params, sr, reference),
                                  "seconds": time.perf_counter() - t0}
        with open(os.path.join(directory, "state.json"), "w") as f:
            json.dump(state, f, indent=2)
        if on_step is not None:
            on_step("eval", len(state["systems"]))
    state.update(done=True, seconds=time.perf_counter() - start, prompts=captions)
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump(state, f, indent=2)
    return state


# ----------------------------------------------------------------------------- 7. export


@torch.no_grad()
def round_shipped(cfg: RecipeConfig, model: AudioXModel, student_dit: nn.Module) -> None:
    """Round, in place, every parameter that :func:`export_pipeline` stores in
    ``model.safetensors`` to ``cfg.export_dtype`` (kept as float32; buffers are stored as
    float32): what is evaluated is then exactly what loads from the export. Idempotent (a
    resumed run rounds again). The T5 is not a registered submodule, so it is left as is."""
    dtype = WEIGHT_DTYPES[cfg.export_dtype]
    for module in (model.conditioner, model.pretransform, model.maf_block, student_dit):
        for p in module.parameters():
            p.copy_(p.to(dtype).to(p.dtype))


def export_pipeline(cfg: RecipeConfig, out: str, model: AudioXModel, student_dit: nn.Module, summary: str):
    """Student DiT + trained MAF + VAE + the frozen conditioners -> ``DIR/export`` via
    ``AudioXPipeline.save_pretrained``; raises if it is over 20 MB."""
    export = build_model(cfg)  # same seed: the same frozen conditioners
    text_conditioner(export).model.load_state_dict(text_conditioner(model).model.state_dict())
    export.pretransform.load_state_dict(model.pretransform.state_dict())
    export.maf_block.load_state_dict(model.maf_block.state_dict())
    export.dit.load_state_dict(student_dit.state_dict())
    pipe = AudioXPipeline(export, source=_Source(export.cfg.name, True, summary))
    path = os.path.join(out, "export")
    with atomic_directory(path) as tmp:
        pipe.save_pretrained(tmp, description=summary, weights_dtype=WEIGHT_DTYPES[cfg.export_dtype])
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(tmp) for f in fs)
        if size > EXPORT_LIMIT_BYTES:
            raise RuntimeError(f"export is {size / 1e6:.1f} MB, over the {EXPORT_LIMIT_BYTES / 1e6:.0f} MB limit")
    return path, size


# ----------------------------------------------------------------------------- the whole recipe


def _check_out(cfg: RecipeConfig, out: str, resume: bool) -> None:
    path = os.path.join(out, "recipe.json")
    started = [s for s in STAGES if os.path.exists(os.path.join(out, s))]
    if started and not resume:
        raise FileExistsError(f"{out} already holds stages {started}: pass --resume to continue, or a new --out")
    if resume and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
        # Budget, threads and checkpoint spacing may change between runs; anything else would
        # mix two different models.
        free = ("budget_minutes", "num_threads", "checkpoint_every")
        mine = {k: v for k, v in cfg.to_dict().items() if k not in free}
        theirs = {k: v for k, v in saved.items() if k not in free}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"{path}: the run was started with other settings ({diff}); use a new --out")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)


def run_recipe(cfg: RecipeConfig, out: str, resume: bool = False, progress: bool = True,
               on_step: Optional[StepHook] = None) -> dict:
    """All stages; returns the metrics dict also written to ``DIR/metrics.json``.
    ``on_step(stage, step)`` is called after every update (tests use it to interrupt)."""
    _check_out(cfg, out, resume)
    timings = {}
    with torch_threads(cfg.num_threads):
        model = build_model(cfg)
        model.eval().requires_grad_(False)  # each stage switches on what it trains
        stage_states = {}
        t0 = time.perf_counter()
        stage_states["vae"] = run_vae(cfg, out, model, progress, on_step)
        timings["vae"] = time.perf_counter() - t0
        for name, fn in (("latents", run_latents), ("text", run_text), ("teacher", run_teacher)):
            t0 = time.perf_counter()
            stage_states[name] = fn(cfg, out, model, progress, on_step)
            timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stage_states["classifier"], classifier = run_classifier(cfg, out, model, progress, on_step)
        timings["classifier"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stage_states["student"], trainer, student = run_student(cfg, out, model, classifier, progress, on_step)
        timings["student"] = time.perf_counter() - t0
        round_shipped(cfg, model, student)
        t0 = time.perf_counter()
        ev = run_eval(cfg, out, model, student, classifier, progress, on_step)
        timings["eval"] = time.perf_counter() - t0
        latent_state = stage_states["latents"]
        sel = stage_states["student"].get("selected") if cfg.student_select_every else None
        picked = f" (the EMA after {sel['generator_steps']} picked on training-split prompts)" if sel else ""
        summary = (f"AudioX '{model.cfg.name}' trained from scratch by `audiox distill --recipe` on the procedural "
                   f"captioned audio set (sine/square/saw tones, kick drums, noise bursts, chirps at 44.1 kHz): "
                   f"VAE {stage_states['vae']['step']} steps, text encoder {stage_states['text']['step']} steps, "
                   f"teacher {stage_states['teacher']['step']} steps on "
                   f"{latent_state['step']} clips, {trainer.generator_steps} DMD generator updates{picked} "
                   f"({cfg.dmd_config().student_timesteps} student steps). It only knows that set's captions.")
        t0 = time.perf_counter()
        export_path, export_bytes = export_pipeline(cfg, out, model, student, summary)
        timings["export"] = time.perf_counter() - t0
    extra = {
        "held_out_prompts": ev.get("prompts", []),
        "stages": {k: {kk: v.get(kk) for kk in ("step", "total_steps", "elapsed_s", "stopped_by", "last_logs",
                                                 "generator_steps", "std", "check", "selected")}
                   for k, v in stage_states.items()},
        "this_run_seconds": timings,
        "eval_cfg_scale": cfg.eval_cfg_scale,
        "dmd_guidance_scale": cfg.dmd_config().guidance_scale,
        "export": {"path": export_path, "bytes": export_bytes},
        "budget_minutes": cfg.budget_minutes,
    }
    write_metrics(ev["systems"], extra, os.path.join(out, "metrics.json"))
    plot_metrics(ev["systems"], os.path.join(out, "metrics.png"))
    return {"systems": ev["systems"], **extra}
