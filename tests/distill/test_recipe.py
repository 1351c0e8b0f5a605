"""The tiny-family recipe end to end at a micro budget (interrupt, resume, metrics, export),
and the evaluation metrics on cases with known answers."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from audiox_engine.audiox.distill.classifier import (NUM_SEMITONES, ProceduralAudioClassifier, classifier_loss, classify,
                                       estimate_frequency, frechet_distance, labels_of, log_frequency_filterbank,
                                       log_spectrogram, semitone_error)
from audiox_engine.audiox.distill.cli import main
from audiox_engine.audiox.distill.evaluate import (METRIC_KEYS, audio_metrics, procedural_dataset, quality_markdown, render,
                                    spectrograms)
from audiox_engine.audiox.distill.procedural import NOTE_FREQUENCIES
from audiox_engine.audiox.distill.recipe import RecipeConfig, build_model, multi_resolution_stft_loss, run_recipe
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


def test_cli_recipe_micro_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--recipe", "micro", "--out", str(out), "--no-progress", "--budget-minutes", "60"]) == 0
    assert "student_2" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["budget_minutes"] == 60
    with pytest.raises(SystemExit, match="--resume"):
        main(["--recipe", "micro", "--out", str(out), "--no-progress"])
    # Only the budget may change on resume; finished stages are then all loaded, not rerun.
    assert main(["--recipe", "micro", "--out", str(out), "--no-progress", "--resume", "--budget-minutes", "90"]) == 0
    with pytest.raises(SystemExit, match="--config"):
        main([])
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"recipe": {"vae_stepz": 3}}))
    with pytest.raises(SystemExit, match="vae_stepz"):
        main(["--recipe", "micro", "--config", str(cfg), "--out", str(tmp_path / "x")])


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


# ----------------------------------------------------------------------------- metrics with known answers


def test_frechet_distance_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.randn(6, generator=g)
    # Same covariance: only the means differ.
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)
    # b = 2 (a - mean): S_b = 4 S_a, so tr(S + 4S - 2 (4 S^2)^1/2) = tr(S); plus |mu_a|^2.
    b = 2 * (a - a.mean(0))
    want = float(torch.trace(torch.cov(a.T.double())) + a.double().mean(0).square().sum())
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        frechet_distance(a, a[:, :3])


@pytest.mark.parametrize("freq", [110.0, 440.0, 523.251, 1234.5])
def test_frequency_estimate_of_a_pure_tone(freq):
    t = torch.arange(int(0.5 * SR), dtype=torch.float64) / SR
    tone = torch.sin(2 * math.pi * freq * t + 0.3)
    est = estimate_frequency(torch.stack([tone, 0.5 * tone]), SR)
    assert semitone_error(est, freq) < 0.02


def test_frequency_estimate_of_procedural_tones_and_semitone_error():
    assert semitone_error(880.0, 440.0) == pytest.approx(12.0)
    assert semitone_error(440.0, 880.0) == pytest.approx(12.0)
    assert semitone_error(440.0 * 2 ** (1 / 12), 440.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        semitone_error(0.0, 440.0)
    ds = procedural_dataset("heldout", 24576, SR, seed=3, num_items=200)
    tones = [i for i in range(200) if ds.sample_params(i)["kind"] == "tone"][:6]
    assert {ds.sample_params(i)["waveform"] for i in tones} - {"sine"}, "want square / saw among the tones"
    for i in tones:
        item = ds[i]
        assert semitone_error(estimate_frequency(item["audio"], SR), item["params"]["freq_hz"]) < 0.1


def test_spectrogram_puts_a_tone_in_its_band():
    fb = log_frequency_filterbank(SR)
    assert torch.isfinite(fb).all() and (fb >= 0).all()
    torch.testing.assert_close(fb.sum(1), torch.ones(fb.shape[0]))
    t = torch.arange(SR // 2) / SR
    for k in (0, 17, 40):  # notes: A2, D4, C#6; the bands are half-semitones from 55 Hz
        f = NOTE_FREQUENCIES[k]
        spec = log_spectrogram((0.1 * torch.sin(2 * math.pi * f * t))[None, None].expand(1, 2, -1), SR)
        band = int(spec[0].mean(-1).argmax())
        assert abs(band - (24 + 2 * k)) <= 1, (f, band)
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        log_spectrogram(torch.zeros(2), SR)


def test_classifier_learns_kind_and_note_and_metrics_on_data():
    with torch_threads(1):
        length = 24576
        ds = procedural_dataset("train", length, SR, seed=11)
        audio, _, params = render(ds, range(48), length)
        spec = spectrograms(audio, SR)
        kind = torch.tensor([labels_of(p)[0] for p in params])
        semi = torch.tensor([labels_of(p)[1] for p in params])
        torch.manual_seed(0)
        clf = ProceduralAudioClassifier()
        clf.feat_mean.fill_(float(spec.mean()))
        clf.feat_std.fill_(float(spec.std()))
        opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
        for _ in range(60):
            loss, _, _ = classifier_loss(clf, spec, kind, semi)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out = classify(clf, spec)
        assert out["embedding"].shape == (48, 64) and out["semitone"].max() < NUM_SEMITONES
        assert (out["kind"] == kind).float().mean() >= 0.9  # fits its training set
        tonal = semi >= 0
        assert (out["semitone"][tonal] == semi[tonal]).float().mean() >= 0.8

        # The data scored against itself: no frequency error, FD 0, the kinds it was fitted on.
        m = audio_metrics(clf, audio, params, SR, out["embedding"])
        assert m["fd"] == pytest.approx(0.0, abs=1e-6)
        assert m["median_semitone_error"] < 0.1 and m["num_tones"] == int(tonal.sum())
        assert m["kind_accuracy"] == pytest.approx(float((out["kind"] == kind).float().mean()))
        # Every tone an octave up: the median error is 12 semitones.
        up = []
        for p, a in zip(params, audio):
            if p["kind"] == "tone":
                t = torch.arange(length) / SR
                a = torch.sin(2 * math.pi * 2 * p["freq_hz"] * t).expand(2, -1)
            up.append(a)
        m_up = audio_metrics(clf, torch.stack(up), params, SR, out["embedding"])
        assert m_up["median_semitone_error"] == pytest.approx(12.0, abs=0.1)
        with pytest.raises(ValueError, match="prompts"):
            audio_metrics(clf, audio[:3], params, SR, out["embedding"])
        bad = audio.clone()
        bad[0, 0, 0] = float("nan")
        with pytest.raises(FloatingPointError):
            audio_metrics(clf, bad, params, SR, out["embedding"])


def test_multi_resolution_stft_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 4096, generator=g)
    assert float(multi_resolution_stft_loss(x, x, (256, 64))) == pytest.approx(0.0, abs=1e-6)
    y = x + 0.3 * torch.randn(x.shape, generator=g)
    assert float(multi_resolution_stft_loss(y, x, (256, 64))) > 0.1
    y.requires_grad_(True)
    multi_resolution_stft_loss(y, x, (256, 64)).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="shape mismatch"):
        multi_resolution_stft_loss(x, x[..., :100])


def test_stft_loss_floor_ignores_what_is_inaudible_in_sparse_spectra():
    """A pure tone: hiss 100 dB below it costs (nearly) nothing with the -80 dB floor, yet
    dominated the old 1e-5 clamp (floor at -inf here), while the tone's level still counts."""
    g = torch.Generator().manual_seed(1)
    t = torch.arange(16384) / SR
    tone = (0.8 * torch.sin(2 * math.pi * (300 + 200 * torch.rand((), generator=g)) * t)).expand(1, 2, -1)
    hiss = tone + 1e-5 * torch.randn(tone.shape, generator=g)
    floored = float(multi_resolution_stft_loss(hiss, tone, (1024, 256)))
    unfloored = float(multi_resolution_stft_loss(hiss, tone, (1024, 256), floor_db=-400.0))
    assert floored < 0.02 and unfloored > 0.3
    assert float(multi_resolution_stft_loss(0.5 * tone, tone, (1024, 256))) > 0.3  # 6 dB too soft


def test_stft_loss_band_terms_rank_a_near_miss_above_a_far_one():
    """Per-bin terms see a tone one semitone off and one seven semitones off as equally wrong
    (all energy in other bins); the log-band terms rank the near miss better."""
    t = torch.arange(16384) / SR

    def sine(f):
        return (0.5 * torch.sin(2 * math.pi * f * t)).expand(1, 2, -1)

    target, near, far = sine(440.0), sine(440.0 * 2 ** (1 / 12)), sine(440.0 * 2 ** (7 / 12))

    def cost(x, bands):
        return float(multi_resolution_stft_loss(x, target, (4096,), bands=bands))

    assert cost(near, (12, 48)) - cost(near, ()) < cost(far, (12, 48)) - cost(far, ()) - 0.5


def test_labels_of_procedural_items():
    assert labels_of({"kind": "tone", "freq_hz": NOTE_FREQUENCIES[7]}) == (0, 7)
    assert labels_of({"kind": "noise", "count": 3}) == (2, -1)
    assert [labels_of({"kind": "tone", "freq_hz": f})[1] for f in NOTE_FREQUENCIES] == list(range(len(NOTE_FREQUENCIES)))
    assert labels_of({"kind": "tone", "freq_hz": 451})[1] == 24 and labels_of({"kind": "tone", "freq_hz": 425})[1] == 23
    assert np.all(np.diff(NOTE_FREQUENCIES) > 0)


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
    import audiox_engine.audiox.distill.recipe as recipe

    seen, scores = [], iter([5.0, 3.0, 4.0])  # steps 0, 2, 4: the EMA at step 2 must be kept

    def fake_score(cfg, model, dit, classifier, prompts):
        assert len(prompts["params"]) == cfg.student_select_items
        seen.append({k: v.clone() for k, v in dit.state_dict().items()})
        return {"score": next(scores), "median_semitone_error": 0.0, "kind_accuracy": 1.0, "fd": 0.0}

    evaluated = {}
    real_eval = recipe.run_eval

    def spy_eval(cfg, out, model, student_dit, *args, **kwargs):
        evaluated.update({k: v.clone() for k, v in student_dit.state_dict().items()})
        return real_eval(cfg, out, model, student_dit, *args, **kwargs)

    monkeypatch.setattr(recipe, "score_student", fake_score)
    monkeypatch.setattr(recipe, "run_eval", spy_eval)
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


def test_quality_markdown_table_and_bars():
    def m(fd, err):
        return {"fd": fd, "kind_accuracy": 0.75, "semitone_accuracy": 0.5, "median_semitone_error": err,
                "num_items": 32, "num_tones": 8, "seconds": 3.0}

    table = quality_markdown({"data": m(1.0, 0.0), "teacher_4": m(40.0, 3.0), "teacher_50": m(10.0, 0.5),
                              "student_4": m(12.0, 0.8)})
    lines = table.splitlines()
    assert lines[0].startswith("| system |") and len([l for l in lines if l.startswith("| ")]) == 2 + 4
    assert "| student_4 | 12.000 | 0.75 | 0.50 | 0.80 | 32 (8) | 3.0 |" in table
    assert "teacher_50 FD = 1.20 (bar <= 1.3: met)" in table
    assert "teacher_4 FD = 0.30 (bar <= 0.5: met)" in table
    assert "0.80 semitones (bar <= 1: met)" in table
    failing = quality_markdown({"teacher_4": m(10.0, None), "teacher_50": m(5.0, None), "student_4": m(8.0, 2.0)})
    assert "teacher_50 FD = 1.60 (bar <= 1.3: NOT met)" in failing and "(bar <= 0.5: NOT met)" in failing
    assert "2.00 semitones (bar <= 1: NOT met)" in failing and "| teacher_4 | 10.000 | 0.75 | 0.50 | - |" in failing


def test_vae_gate_stops_the_recipe_before_the_teacher(tmp_path):
    """A VAE that loses the pitch (the preset's Oobleck after 3 steps) stops the run with the
    numbers, and no later stage starts; the DDSP codec passes by construction (the micro run
    in test_recipe_end_to_end_interrupt_resume_export records its check)."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match=r"semitones off .* vae_max_tone_error=0.5"):
        run_recipe(RecipeConfig.micro(vae_max_tone_error=0.5, vae_type="preset"), str(out), progress=False)
    assert (out / "vae" / "state.json").is_file() and not (out / "latents").exists()
