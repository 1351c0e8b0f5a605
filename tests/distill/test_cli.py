"""`audiox distill`: --toy end to end at tiny sizes (outputs written, resume continues),
--recipe micro end to end, and the errors of both."""
import json

import pytest

from audiox_engine.audiox.distill.cli import main


def test_toy_cli_end_to_end_and_resume(tmp_path, capsys):
    cfg = {"toy": {"teacher_steps": 60, "dmd_updates": 24, "dmd_batch": 64, "eval_samples": 300,
                   "reference_steps": 20}, "checkpoint_every": 12}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "out"
    assert main(["--config", str(path), "--out", str(out), "--toy", "--no-progress"]) == 0
    for name in ("teacher.safetensors", "metrics.json", "toy_result.png", "checkpoint/state.json",
                 "checkpoint/generator.safetensors", "checkpoint/optimizers.pt"):
        assert (out / name).is_file(), name
    assert (out / "toy_result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["student_4"]) >= {"mmd", "far_mass", "per_mode_mass", "spread_ratio", "class_accuracy"}

    cfg["toy"]["dmd_updates"] = 36
    path.write_text(json.dumps(cfg))
    assert main(["--config", str(path), "--out", str(out), "--toy", "--resume", "--no-progress"]) == 0
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 36


def test_cli_errors(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"toy": {}}))
    assert main(["--config", str(path)]) == 2  # no "recipe" object and no --toy: no run named
    assert 'no "recipe" object' in capsys.readouterr().err
    path.write_text(json.dumps({"dmdd": {}}))
    try:
        main(["--config", str(path), "--toy"])
    except SystemExit as e:
        assert "unknown top-level config keys" in str(e)
    else:
        raise AssertionError("unknown key accepted")


def test_config_with_recipe_runs_the_recipe(tmp_path, monkeypatch):
    """`--config` alone with a "recipe" object is the AudioX run, with the config's settings."""
    import audiox_engine.audiox.distill.cli as cli

    calls = []
    monkeypatch.setattr(cli, "run_recipe_cli", lambda *a: calls.append(a) or {})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"recipe": {"teacher_lr": 1e-4}}))
    assert main(["--config", str(path), "--out", str(tmp_path / "o"), "--resume", "--budget-minutes", "90"]) == 0
    name, cfg, out, resume, _, budget = calls[0]
    assert (name, cfg["recipe"], out, resume, budget) == ("tiny", {"teacher_lr": 1e-4}, str(tmp_path / "o"), True, 90.0)


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
