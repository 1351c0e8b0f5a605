"""Every knob of the tiny-family recipe (:class:`RecipeConfig`), its validation, and the time budget.

Budget: the default run is planned for :data:`PLANNED_MINUTES` (180) minutes on 2 CPU cores.
Each stage stops at its step count or at its share of the budget, whichever comes first;
``budget_minutes`` scales every share. The shares and the step counts they are sized for
(the per-step costs behind them are in BENCHMARKS.md, "Distillation recipe"):

===========  =======  =======================================================
stage        minutes  default work
===========  =======  =======================================================
vae          20       4000 steps, batch 8 x 0.74 s crops
latents      5        2000 clips of 10.96 s
text         16       12000 steps, batch 64 captions
teacher      79       15000 steps, batch 8
classifier   6        800 clips rendered once, 1500 steps of batch 32
student      40       7000 DMD updates, batch 4, 4 critic : 1 generator
eval         14       160 held-out prompts x 9 systems (planned, not capped)
export       ~0       save + size check
===========  =======  =======================================================

Torch threads default to 2 (``num_threads``): on a box where other jobs hold a core, 1
thread is several times faster than 2 (oversubscribed spinning), so lower it there.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ...config import AudioXConfig, DictConfigMixin, get_preset
from ...pipeline import WEIGHT_DTYPES
from ..dmd import DMDConfig
from ..procedural import FREQUENCY_MODES

__all__ = ["PLANNED_MINUTES", "RecipeConfig"]

PLANNED_MINUTES = 180.0


@dataclass
class RecipeConfig(DictConfigMixin):
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
    construction); "preset": the preset's own VAE (the tiny Oobleck, which does not learn
    pitch within this budget; see :func:`~.stft_loss.multi_resolution_stft_loss` and
    BENCHMARKS.md's VAE table)."""
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
    the later stages run on its latents (:func:`~.vae.check_vae`); None skips the check."""
    # 2. latents
    train_frequencies: str = "continuous"
    """Tone frequencies of the teacher's (and the student selection's) train clips: see
    :class:`ProceduralAudioConfig`. "continuous" is the default because a teacher trained on
    the 39 train notes puts held-out notes on a neighbouring train note, which no student can
    beat; drawn from the continuum outside the held-out bands it has to read the number
    (BENCHMARKS.md). The VAE and classifier stay on notes."""
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
    the training split (:func:`~.student.score_student`) and the best-scoring weights are the
    ones the evaluation and the export use (0: the final EMA). DMD's EMA passes its best pitch
    early and then drifts away (BENCHMARKS.md, selection traces), so the last EMA is not the best."""
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
    (with 32, the data's own FD exceeds most gaps between systems; BENCHMARKS.md)."""
    eval_minutes: float = 14.0
    eval_cfg_scale: float = 1.0
    """Also the DMD guidance by default. Guidance pushes the pitch, a channel fixed by the
    caption, away from the mean (``u + w (c - u)`` extrapolates it): of w = 1, 1.5, 2 and 3,
    the teacher's tone error is lowest at 1 (BENCHMARKS.md, guidance on the teacher)."""
    eval_teacher_steps: tuple = (4, 8, 25, 50)
    eval_student_steps: tuple = (1, 2, 4)
    # 8. export
    export_dtype: str = "float16"
    """Storage dtype of the export's ``model.safetensors`` ("float32", "float16", "bfloat16").
    The shipped parameters (student DiT, MAF, VAE, the frozen video / audio conditioners; the
    T5 and all buffers are saved as they are) are rounded to it *before* the evaluation
    (:func:`~.export.round_shipped`), so the metrics are those of the files shipped. float16
    shrinks the export (BENCHMARKS.md; weight-norm VAE layers are stored as float32 weight_g /
    weight_v)."""

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
        """The stage's share of the budget, in seconds."""
        return getattr(self, f"{stage}_minutes") * 60.0 * self.budget_minutes / PLANNED_MINUTES

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
