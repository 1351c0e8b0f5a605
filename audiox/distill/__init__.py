"""DMD distillation (rectified flow) of a multi-step teacher into a few-step student.

Model-agnostic: any velocity model ``model(z, t, cond) -> v`` can be distilled with
:class:`DMDTrainer`; :mod:`audiox.distill.toy` is the 2-D proof, and
:mod:`audiox.distill.procedural` a procedural captioned audio set.
"""
from .dmd import (DMDConfig, DMDTrainer, cfg_velocity, distribution_matching_gradient, dmd_loss, ema_update,
                  noise_to, turbo_sample, x0_from_velocity)

__all__ = ["DMDConfig", "DMDTrainer", "cfg_velocity", "distribution_matching_gradient", "dmd_loss", "ema_update",
           "noise_to", "turbo_sample", "x0_from_velocity"]
