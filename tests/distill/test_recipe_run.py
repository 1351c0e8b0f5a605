"""The tiny-family recipe end to end at a micro budget (audiox.distill.recipe.run): interrupt,
resume, metrics, export."""
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from audiox_engine.audiox.distill.evaluate import METRIC_KEYS
from audiox_engine.audiox.distill.recipe import RecipeConfig, build_model, run_recipe
from audiox_engine.audiox.distill.toy import torch_threads
from audiox_engine.audiox.pipeline import AudioXPipeline

SR = 44100


class Interrupted(Exception):
    pass


def test_recipe_end_to_end_interrupt_resume_export(tmp_path):
    cfg = RecipeConfig.micro()
    out = tmp_path / "run"

    def interrupt_at(where):
        def hook(stage, step):
            if (stage, step) == where:  # after the step-2 checkpoint, before the next one
                raise Interrupted
        return hook

    with pytest.raises(Interrupted):
        run_recipe(cfg, str(out), progress=False, on_step=interrupt_at(("vae", 3)))
    assert json.loads((out / "vae" / "state.json").read_text())["step"] == 2
    with pytest.raises(Interrupted):
        run_recipe(cfg, str(out), resume=True, progress=False, on_step=interrupt_at(("latents", 3)))
    assert json.loads((out / "latents" / "state.json").read_text())["step"] == 2
    assert load_file(out / "latents" / "latents.safetensors")["latents"].shape == (2, 64, 12)
    with pytest.raises(Interrupted):
        run_recipe(cfg, str(out), resume=True, progress=False, on_step=interrupt_at(("teacher", 3)))
    for stage in ("vae", "latents"):
        assert json.loads((out / stage / "state.json").read_text())["done"], stage
    teacher_state = json.loads((out / "teacher" / "state.json").read_text())
    assert (teacher_state["step"], teacher_state["done"]) == (2, False)
    for name in ("vae/vae.safetensors", "vae/optimizer.pt", "latents/latents.safetensors",
                 "teacher/dit.safetensors", "teacher/maf.safetensors"):
        assert (out / name).is_file(), name
    assert not (out / "student").exists()
    vae_bytes = (out / "vae" / "vae.safetensors").read_bytes()

    with pytest.raises(FileExistsError, match="--resume"):
        run_recipe(cfg, str(out), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        run_recipe(RecipeConfig.micro(teacher_lr=1e-3), str(out), resume=True, progress=False)

    seen = []
    metrics = run_recipe(cfg, str(out), resume=True, progress=False, on_step=lambda s, k: seen.append((s, k)))
    assert not [s for s, _ in seen if s in ("vae", "latents")], "finished stages ran again"
    assert [k for s, k in seen if s == "teacher"] == [3, 4], "the teacher did not continue from its checkpoint"
    assert (out / "vae" / "vae.safetensors").read_bytes() == vae_bytes

    # The resumed run ends where an uninterrupted one does (every draw is a function of the step).
    ref = tmp_path / "ref"
    run_recipe(cfg, str(ref), progress=False)
    for name in ("vae/vae.safetensors", "latents/latents.safetensors", "text/t5.safetensors", "text/head.safetensors",
                 "teacher/dit.safetensors", "teacher/maf.safetensors", "teacher/dit_ema.safetensors",
                 "student/dmd/ema.safetensors", "student/selected_ema.safetensors"):
        a, b = load_file(out / name), load_file(ref / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}:{k}")

    # Metrics: every system, every key, finite numbers; the plot is a PNG.
    saved = json.loads((out / "metrics.json").read_text())
    want = {"data", "vae_recon", "teacher_1", "teacher_2", "student_1", "student_2"}
    assert set(saved["systems"]) == want == set(metrics["systems"])
    for name, m in saved["systems"].items():
        assert set(METRIC_KEYS) <= set(m), name
        assert m["num_items"] == cfg.eval_items
        for k in ("fd", "kind_accuracy"):
            assert math.isfinite(m[k]) and m[k] >= 0, (name, k)
        if m["num_tones"]:
            assert 0 <= m["median_semitone_error"] < 100
    assert saved["systems"]["data"]["num_tones"] == 0 or saved["systems"]["data"]["median_semitone_error"] < 0.1
    assert set(saved["stages"]) == {"vae", "latents", "text", "teacher", "student", "classifier"}
    assert saved["stages"]["text"]["step"] == cfg.text_steps
    assert set(saved["stages"]["text"]["check"]) >= {"heldout_median_semitones", "heldout_max_semitones"}
    assert saved["stages"]["teacher"]["step"] == cfg.teacher_steps
    assert set(saved["stages"]["vae"]["check"]) >= {"median_semitone_error", "median_level_db", "num_tones"}
    assert saved["stages"]["vae"]["check"]["median_semitone_error"] < 0.5  # the DDSP codec: pitch by construction
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Export: within the size limit, loads with from_pretrained, holds the student, and generates.
    export = out / "export"
    assert sum(f.stat().st_size for f in export.rglob("*") if f.is_file()) <= 20_000_000
    pipe = AudioXPipeline.from_pretrained(export)
    assert pipe.trained and "procedural" in pipe.source.detail
    with safe_open(str(export / "model.safetensors"), "pt") as f:
        stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    params = {n for n, _ in pipe.model.named_parameters()}
    assert {stored[k] for k in stored if k in params} == {"F16"}  # export_dtype float16
    assert {stored[k] for k in stored if k not in params} <= {"F32", "I64", "BOOL"}  # buffers kept
    # The codec's latent standardisation was set from data, used for the latents, and shipped.
    stats = load_file(out / "latent_normalization.safetensors")
    assert not stats["latent_std"].eq(1).all()
    torch.testing.assert_close(pipe.model.pretransform.model.latent_std, stats["latent_std"], rtol=0, atol=0)
    # The text encoder the teacher and student were trained with is the one shipped (not the seed's).
    t5 = load_file(out / "text" / "t5.safetensors")
    shipped = pipe.model.conditioner.conditioners["text_prompt"].model.state_dict()
    assert not torch.equal(shipped["encoder.block.0.layer.0.SelfAttention.q.weight"],
                           build_model(cfg).conditioner.conditioners["text_prompt"].model.state_dict()[
                               "encoder.block.0.layer.0.SelfAttention.q.weight"])
    for k, v in t5.items():
        torch.testing.assert_close(shipped[k], v, rtol=0, atol=0)
    ema = load_file(out / "student" / "selected_ema.safetensors")
    dit_params = {n for n, _ in pipe.model.dit.named_parameters()}
    for k, v in pipe.model.dit.state_dict().items():
        torch.testing.assert_close(v, ema[k].half().float() if k in dit_params else ema[k], rtol=0, atol=0)
    with torch_threads(1):
        wave, sr = pipe("a loud sine tone at 440 Hz", generator=torch.Generator().manual_seed(0))
        teacher_wave, _ = pipe("two kick drum hits", mode="teacher", steps=2, cfg_scale=3.0, generator=0)
    assert sr == SR and wave.shape == (1, 2, int(round(pipe.cfg.seconds * SR)))
    assert torch.isfinite(wave).all() and wave.abs().max() > 0
    assert torch.isfinite(teacher_wave).all()
