"""The tiny-family training recipe: ``audiox distill --recipe tiny --out DIR [--resume] [--budget-minutes M]``.

Stages, run in this order by :func:`run_recipe` (:mod:`.run`), each in ``DIR/<stage>/`` with
safetensors weights and a JSON state, each resumable (:mod:`.checkpoint`):

1. ``vae`` (:mod:`.vae`): the VAE on crops of procedural train clips (multi-resolution STFT
   loss of :mod:`.stft_loss`); the DDSP codec by default; :func:`check_vae` gates the later stages;
2. ``latents`` (:mod:`.latents`): full-length train clips encoded to posterior means, with captions;
3. ``text`` (:mod:`.text`): the T5 stand-in learns to read the captions, then is frozen and shipped;
4. ``teacher`` (:mod:`.teacher`): DiT + MAF as a rectified-flow model with CFG dropout; the
   later stages use its EMA;
5. ``classifier`` (:mod:`.classifier`): the procedural-label classifier whose embedding is the FD's;
6. ``student`` (:mod:`.student`): 4-step DMD from the teacher; the best-scoring EMA is kept;
7. ``eval`` (:mod:`.evaluation`): every system on the held-out split -> ``DIR/metrics.json``,
   ``DIR/metrics.png``;
8. ``export`` (:mod:`.export`): ``AudioXPipeline.save_pretrained(DIR/export)`` (checked <= 20 MB).

Every knob, and the time budget each stage gets, is in :class:`RecipeConfig` (:mod:`.config`).
"""
from .checkpoint import RNG_STREAMS, StepHook, load_stage, save_stage, train_stage
from .classifier import run_classifier
from .config import PLANNED_MINUTES, RecipeConfig
from .evaluation import run_eval
from .export import EXPORT_LIMIT_BYTES, export_pipeline, round_shipped
from .latents import load_latents, run_latents, set_latent_normalization
from .model_helpers import build_model, caption_condition, text_conditioner
from .run import STAGES, run_recipe
from .stft_loss import multi_resolution_stft_loss
from .student import run_student, score_student, selection_prompts
from .teacher import run_teacher
from .text import run_text
from .vae import check_vae, run_vae

__all__ = ["EXPORT_LIMIT_BYTES", "PLANNED_MINUTES", "RNG_STREAMS", "STAGES", "RecipeConfig", "StepHook",
           "build_model", "caption_condition", "check_vae", "export_pipeline", "load_latents", "load_stage",
           "multi_resolution_stft_loss", "round_shipped", "run_classifier", "run_eval", "run_latents", "run_recipe",
           "run_student", "run_teacher", "run_text", "run_vae", "save_stage", "score_student", "selection_prompts",
           "set_latent_normalization", "text_conditioner", "train_stage"]
