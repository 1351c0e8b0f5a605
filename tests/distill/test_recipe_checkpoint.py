"""The recipe's resumable-stage plumbing (audiox.distill.recipe.checkpoint): random streams,
the global-RNG guard, stage checkpoints and the step loop's resume, budget and NaN check."""
import json
import os

import pytest
import torch

from audiox_engine.audiox.distill.recipe import RecipeConfig
from audiox_engine.audiox.distill.recipe.checkpoint import (RNG_STREAMS, read_state, seeded_global_rng, stage_rng,
                                                            train_stage, write_json)


def test_random_streams_are_fixed_and_distinct():
    # The stream id is part of every seed: reordering these would change every stage's draws.
    assert RNG_STREAMS == ("vae", "latents", "text", "teacher", "student", "classifier", "eval", "export", "select")
    draw = lambda *key: torch.randn(4, generator=stage_rng(*key))  # noqa: E731
    torch.testing.assert_close(draw(0, "teacher", 7), draw(0, "teacher", 7), rtol=0, atol=0)
    others = [draw(1, "teacher", 7), draw(0, "student", 7), draw(0, "teacher", 8)]
    assert all(not torch.equal(draw(0, "teacher", 7), o) for o in others)
    with pytest.raises(ValueError):
        stage_rng(0, "no-such-stage", 0)


def test_seeded_global_rng_repeats_draws_and_restores_the_callers_stream():
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    with seeded_global_rng(0, "teacher", 3):
        a = torch.rand(3)
    with seeded_global_rng(0, "teacher", 3):
        b = torch.rand(3)
    with seeded_global_rng(0, "teacher", 4):
        c = torch.rand(3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    torch.testing.assert_close(torch.rand(3), expected_next, rtol=0, atol=0)


def test_write_json_replaces_whole_and_leaves_no_temporary(tmp_path):
    write_json(str(tmp_path / "state.json"), {"step": 1})
    write_json(str(tmp_path / "state.json"), {"step": 2, "xs": [1, 2]}, indent=1)
    assert read_state(str(tmp_path)) == {"step": 2, "xs": [1, 2]}
    assert os.listdir(tmp_path) == ["state.json"]
    assert read_state(str(tmp_path / "absent")) is None


class _Stop(Exception):
    pass


def _linear_stage(tmp_path, cfg, total, on_step=None):
    """A linear fit whose every draw comes from the stage's stream, run as stage "teacher"."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)

    def step(k):
        g = stage_rng(cfg.seed, "teacher", k)
        x = torch.randn(8, 3, generator=g)
        loss = (lin(x).squeeze(-1) - x.sum(-1)).square().mean() + 0 * torch.rand(())  # global draw, seeded
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    state = train_stage("teacher", str(tmp_path), cfg, {"lin": lin}, opt, step, total, False, on_step)
    return state, lin


def test_train_stage_resumes_exactly_and_skips_a_finished_stage(tmp_path):
    cfg = RecipeConfig.micro(checkpoint_every=2)

    def stop_at_3(stage, step):
        if step == 3:
            raise _Stop

    with pytest.raises(_Stop):
        _linear_stage(tmp_path / "a", cfg, 5, stop_at_3)
    assert json.loads((tmp_path / "a" / "teacher" / "state.json").read_text())["step"] == 2
    seen = []
    state, resumed = _linear_stage(tmp_path / "a", cfg, 5, lambda s, k: seen.append(k))
    assert seen == [3, 4, 5] and (state["step"], state["done"], state["stopped_by"]) == (5, True, "steps")
    _, straight = _linear_stage(tmp_path / "b", cfg, 5)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    seen.clear()
    again, _ = _linear_stage(tmp_path / "a", cfg, 9, lambda s, k: seen.append(k))
    assert not seen and again["step"] == 5, "a finished stage ran again"


def test_train_stage_stops_on_its_time_share_and_on_non_finite_logs(tmp_path):
    state, _ = _linear_stage(tmp_path / "t", RecipeConfig.micro(teacher_minutes=0.0), 5)
    assert (state["step"], state["done"], state["stopped_by"]) == (0, True, "time")
    cfg = RecipeConfig.micro()
    lin = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="step 0: loss is nan"):
        train_stage("vae", str(tmp_path / "n"), cfg, {"lin": lin}, opt, lambda k: {"loss": float("nan")}, 3, False)
