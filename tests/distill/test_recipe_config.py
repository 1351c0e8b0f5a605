"""RecipeConfig (audiox.distill.recipe.config): the time budget, the JSON round trip, validation."""
import json

import pytest

from audiox_engine.audiox.distill.recipe import RecipeConfig


def test_recipe_config_budget_and_validation():
    cfg = RecipeConfig()
    shares = [cfg.seconds_for(s) / 60 for s in ("vae", "latents", "text", "teacher", "classifier", "student", "eval")]
    assert sum(shares) <= 180
    half = RecipeConfig(budget_minutes=90)
    assert half.seconds_for("teacher") == pytest.approx(cfg.seconds_for("teacher") / 2)
    assert RecipeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="budget_minutes"):
        RecipeConfig(budget_minutes=0)
    with pytest.raises(ValueError, match="train_on"):
        RecipeConfig(dmd={"train_on": "sometimes"})
    for bad in ({"teacher_ema_decay": 1.0}, {"student_select_every": -1}, {"student_select_items": 1},
                {"train_frequencies": "all"}, {"export_dtype": "int8"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RecipeConfig(**bad)
    with pytest.raises(ValueError, match="unknown RecipeConfig keys"):
        RecipeConfig.from_dict({"teacher_stepz": 3})


def test_recipe_config_to_dict_survives_json():
    """recipe.json is compared with a fresh config's to_dict on resume: tuples are written as
    lists, so a saved config equals a fresh one."""
    cfg = RecipeConfig.micro()
    d = cfg.to_dict()
    assert d["vae_stft_sizes"] == [256, 64] and d["eval_student_steps"] == [1, 2]
    assert json.loads(json.dumps(d)) == d
    assert RecipeConfig.from_dict(json.loads(json.dumps(d))) == cfg
