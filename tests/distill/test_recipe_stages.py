"""Single stages of the recipe at a micro budget: the VAE gate (recipe.vae), the student's
time budget and EMA selection (recipe.student), what the evaluation and export see
(recipe.evaluation, recipe.export)."""
import json

import pytest
import torch
from safetensors.torch import load_file

import audiox_engine.audiox.distill.recipe.run as recipe_run
import audiox_engine.audiox.distill.recipe.student as recipe_student
from audiox_engine.audiox.distill.recipe import RecipeConfig, run_recipe
from audiox_engine.audiox.pipeline import AudioXPipeline


def test_stage_time_budget_stops_the_student_mid_chunk(tmp_path):
    # With budget scale b, a stage gets (its minutes) * b / 180: ~1 ms for the student here.
    cfg = RecipeConfig.micro(student_minutes=1e-5, student_updates=6, student_select_every=0)  # no probe time
    out = tmp_path / "run"
    metrics = run_recipe(cfg, str(out), progress=False)
    student = json.loads((out / "student" / "state.json").read_text())
    assert student["done"] and student["stopped_by"] == "time" and 1 <= student["step"] < 6
    assert json.loads((out / "student" / "dmd" / "state.json").read_text())["step"] == student["step"]
    assert metrics["stages"]["student"]["stopped_by"] == "time"
    assert set(metrics["systems"]) >= {"student_1", "student_2"}


def test_student_selection_keeps_the_best_scored_ema_and_the_teacher_is_an_ema(tmp_path, monkeypatch):
    seen, scores = [], iter([5.0, 3.0, 4.0])  # steps 0, 2, 4: the EMA at step 2 must be kept

    def fake_score(cfg, model, dit, classifier, prompts):
        assert len(prompts["params"]) == cfg.student_select_items
        seen.append({k: v.clone() for k, v in dit.state_dict().items()})
        return {"score": next(scores), "median_semitone_error": 0.0, "kind_accuracy": 1.0, "fd": 0.0}

    evaluated = {}
    real_eval = recipe_run.run_eval

    def spy_eval(cfg, out, model, student_dit, *args, **kwargs):
        evaluated.update({k: v.clone() for k, v in student_dit.state_dict().items()})
        return real_eval(cfg, out, model, student_dit, *args, **kwargs)

    monkeypatch.setattr(recipe_student, "score_student", fake_score)
    monkeypatch.setattr(recipe_run, "run_eval", spy_eval)
    cfg = RecipeConfig.micro(student_select_every=2)
    out = tmp_path / "run"
    metrics = run_recipe(cfg, str(out), progress=False)
    state = json.loads((out / "student" / "state.json").read_text())
    assert [e["step"] for e in state["selection"]] == [0, 2, 4] and len(seen) == 3
    assert state["selected"]["step"] == 2 and metrics["stages"]["student"]["selected"]["step"] == 2
    picked = load_file(out / "student" / "selected_ema.safetensors")
    final = load_file(out / "student" / "dmd" / "ema.safetensors")
    assert any(not torch.equal(picked[k], final[k]) for k in picked), "the final EMA was kept, not the best"
    for k, v in seen[1].items():
        torch.testing.assert_close(picked[k], v, rtol=0, atol=0)
    # The student starts from the teacher's EMA, which is what the teacher stage hands on (not its raw weights).
    teacher_ema, teacher_raw = load_file(out / "teacher" / "dit_ema.safetensors"), load_file(out / "teacher" / "dit.safetensors")
    assert any(not torch.equal(teacher_ema[k], teacher_raw[k]) for k in teacher_ema)
    for k, v in seen[0].items():
        torch.testing.assert_close(v, teacher_ema[k], rtol=0, atol=0)
    # The export holds the picked weights, parameters rounded to float16 (the default
    # export_dtype), buffers as they are.
    shipped_dit = AudioXPipeline.from_pretrained(out / "export").model.dit
    params = {n for n, _ in shipped_dit.named_parameters()}
    shipped = shipped_dit.state_dict()
    for k, v in picked.items():
        torch.testing.assert_close(shipped[k], v.half().float() if k in params else v, rtol=0, atol=0)
    assert any(not torch.equal(picked[k].half().float(), picked[k]) for k in params), "nothing was rounded"
    for k, v in shipped.items():  # what was evaluated is what was shipped
        torch.testing.assert_close(evaluated[k], v, rtol=0, atol=0)


def test_vae_gate_stops_the_recipe_before_the_teacher(tmp_path):
    """A VAE that loses the pitch (the preset's Oobleck after 3 steps) stops the run with the
    numbers, and no later stage starts; the DDSP codec passes by construction (the micro run
    in test_recipe_run.py records its check)."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"semitones off .* vae_max_tone_error=0.5"):
        run_recipe(RecipeConfig.micro(vae_max_tone_error=0.5, vae_type="preset"), str(out), progress=False)
    assert (out / "vae" / "state.json").is_file() and not (out / "latents").exists()


def test_classifier_init_depends_on_the_seed_only():
    """Whatever ran before in the process (the global RNG's state), the classifier stage
    starts from the same weights for the same recipe seed, and leaves the global RNG alone."""
    from audiox_engine.audiox.distill.recipe.classifier import new_classifier

    torch.manual_seed(1)
    a = new_classifier(0).state_dict()
    torch.manual_seed(2)
    before = torch.random.get_rng_state()
    b = new_classifier(0).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = new_classifier(1).state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)
