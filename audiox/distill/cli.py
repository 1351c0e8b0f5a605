"""``audiox distill --config CONFIG.json [--resume] [--out DIR] [--toy]``.

Config JSON::

    {
      "recipe": {... RecipeConfig fields ...},  # the AudioX run (VAE, teacher, DMD student, eval, export)
      "dmd": {... DMDConfig fields ...},        # optional, overrides toy.dmd for --toy
      "toy": {... ToyConfig fields ...},        # optional, for --toy
      "checkpoint_every": 300                   # optional
    }

A config with a ``"recipe"`` object runs the AudioX recipe from those settings (fields left
out keep the ``tiny`` recipe's defaults; ``"model"`` may replace the preset's AudioXConfig;
its DMD settings are ``recipe.dmd``), so ``audiox distill --config run.json --out DIR`` and
``audiox distill --recipe tiny --config run.json --out DIR`` are the same run.

``audiox distill --recipe tiny --out DIR [--resume] [--budget-minutes M] [--config CONFIG.json]``
runs the whole tiny-family recipe (VAE, teacher, 4-step DMD student, evaluation, export;
see :mod:`audiox.distill.recipe`); an optional config's ``"recipe"`` object overrides
:class:`~audiox.distill.recipe.RecipeConfig` fields. ``--recipe micro`` is the
seconds-scale version the tests run.

``--toy`` runs the 2-D proof end to end (teacher, DMD, evaluation) and writes
``teacher.safetensors``, ``checkpoint/`` (resumable), ``metrics.json`` and ``toy_result.png``
(data / teacher 100-step / teacher 4-step / student 4-step) into ``--out``.
A config with neither a ``"recipe"`` object nor ``--toy`` is refused with what to add.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from .dmd import DMDConfig


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="audiox distill", description="DMD distillation of a rectified-flow teacher.")
    p.add_argument("--config", help="JSON config (see audiox/distill/cli.py); optional with --toy and --recipe")
    p.add_argument("--recipe", choices=("tiny", "micro"),
                   help="the full training recipe (VAE, teacher, DMD student, evaluation, export)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="--recipe: total time budget; every stage's share scales with it (default 180)")
    p.add_argument("--out", default="runs/distill", help="output directory (checkpoints, metrics, plots)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint if it exists")
    p.add_argument("--toy", action="store_true", help="2-D mixture-of-Gaussians proof run")
    p.add_argument("--no-progress", action="store_true", help="hide tqdm bars")
    return p.parse_args(argv)


def _load_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise SystemExit(f"audiox distill: config file not found: {path}")
    with open(path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise SystemExit(f"audiox distill: {path} is not valid JSON: {e}")
    if not isinstance(cfg, dict):
        raise SystemExit(f"audiox distill: {path} must hold a JSON object, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - {"dmd", "toy", "checkpoint_every", "recipe"})
    if unknown:
        raise SystemExit(f"audiox distill: unknown top-level config keys {unknown}")
    return cfg


def run_toy_cli(cfg: dict, out: str, resume: bool, progress: bool) -> dict:
    from safetensors.torch import load_model, save_model

    from .toy import ToyConfig, ToyVelocityMLP, plot_result, run_toy, torch_threads, train_teacher

    toy = ToyConfig.from_dict(cfg.get("toy", {}))
    if "dmd" in cfg:
        toy.dmd = DMDConfig.from_dict(cfg["dmd"])
    os.makedirs(out, exist_ok=True)
    teacher_path = os.path.join(out, "teacher.safetensors")
    ckpt = os.path.join(out, "checkpoint")
    with torch_threads(toy.num_threads):
        if resume and os.path.isfile(teacher_path):
            # The critic / generator checkpoint only makes sense against the same teacher.
            teacher = ToyVelocityMLP(toy.hidden)
            load_model(teacher, teacher_path)
            teacher.eval().requires_grad_(False)
        else:
            teacher = train_teacher(toy, progress)
            save_model(teacher, teacher_path)
    result = run_toy(toy, progress=progress, teacher=teacher, checkpoint_dir=ckpt, resume=resume,
                     checkpoint_every=cfg.get("checkpoint_every", 300))
    metrics = {"seconds": result.seconds, "guidance_scale": toy.dmd.guidance_scale,
               "train_on": toy.dmd.train_on, **result.metrics}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_result(result, os.path.join(out, "toy_result.png"))
    s, t4 = result.metrics["student_4"], result.metrics["teacher_4"]
    print(f"student-4: MMD {s['mmd']:.4f} (teacher-4 {t4['mmd']:.4f}), far {s['far_mass']:.3f} "
          f"(teacher-4 {t4['far_mass']:.3f}), spread x{s['spread_ratio']:.2f}, "
          f"min mode {s['min_mode_mass']:.3f}, class acc {s['class_accuracy']:.3f}  -> {out}")
    return metrics


def run_recipe_cli(name: str, cfg: dict, out: str, resume: bool, progress: bool,
                   budget_minutes: Optional[float]) -> dict:
    from .recipe import RecipeConfig, run_recipe

    overrides = dict(cfg.get("recipe", {}))
    if budget_minutes is not None:
        overrides["budget_minutes"] = budget_minutes
    try:
        rc = RecipeConfig.micro(**overrides) if name == "micro" else RecipeConfig.from_dict(overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"audiox distill: bad recipe settings: {e}")
    try:
        metrics = run_recipe(rc, out, resume=resume, progress=progress)
    except FileExistsError as e:
        raise SystemExit(f"audiox distill: {e}")
    for system, m in metrics["systems"].items():
        err = m["median_semitone_error"]
        print(f"{system:>12}: FD {m['fd']:9.3f}  kind acc {m['kind_accuracy']:.2f}  "
              f"median tone error {'-' if err is None else f'{err:.2f}'} st")
    print(f"metrics -> {os.path.join(out, 'metrics.json')}, export -> {metrics['export']['path']} "
          f"({metrics['export']['bytes'] / 1e6:.1f} MB)")
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    if args.recipe is not None:
        cfg = _load_config(args.config) if args.config else {}
        run_recipe_cli(args.recipe, cfg, args.out, args.resume, not args.no_progress, args.budget_minutes)
        return 0
    if args.config is None and not args.toy:
        raise SystemExit("audiox distill: give --toy, --recipe tiny, or --config CONFIG.json")
    cfg = _load_config(args.config) if args.config else {}
    if args.toy:
        run_toy_cli(cfg, args.out, args.resume, not args.no_progress)
        return 0
    if "recipe" in cfg:
        run_recipe_cli("tiny", cfg, args.out, args.resume, not args.no_progress, args.budget_minutes)
        return 0
    print(f"audiox distill: {args.config} has no \"recipe\" object, so it names no run: add \"recipe\": {{...}} "
          "(RecipeConfig fields; {} is the tiny recipe) for the AudioX run, or pass --toy for the 2-D proof run.",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
