"""Presets and the official model-config JSON format."""

import json

import pytest

from audiox_engine.audiox.config import ConfigError, get_preset, load_model_config, parse_model_config


def official_like_config() -> dict:
    """The fields of the release's inference config that the model structure depends on."""
    vae = {"type": "autoencoder", "config": {"latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2}}
    return {
        "model_type": "diffusion_cond",
        "sample_size": 485100,
        "sample_rate": 44100,
        "conditioning_seconds": 10,
        "video_fps": 5,
        "audio_channels": 2,
        "model": {
            "pretransform": vae,
            "conditioning": {"configs": [], "cond_dim": 768},
            "diffusion": {
                "cross_attention_cond_ids": ["video_prompt", "text_prompt", "audio_prompt"],
                "type": "mmdit",
                "gate": True,
                "gate_type": "MAF",
                "gate_type_config": {"num_experts_per_modality": 64, "num_heads": 24, "num_fusion_layers": 8},
                "diffusion_objective": "rectified_flow",
                "config": {
                    "io_channels": 64, "embed_dim": 1536, "depth": 24, "num_heads": 24,
                    "cond_token_dim": 768, "global_cond_dim": 768, "project_cond_tokens": False,
                    "transformer_type": "continuous_transformer",
                },
            },
        },
        "training": {"dmd_sample_steps": 4},
    }


def test_official_json_equals_full_preset(tmp_path):
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(official_like_config()))
    cfg = load_model_config(path)
    full = get_preset("audiox-turbo")
    assert cfg.dit == full.dit and cfg.maf == full.maf
    assert cfg.latent_length == 236 and cfg.student_steps == 4


def test_round_trip_through_dict(tmp_path):
    tiny = get_preset("tiny")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny.to_dict()))
    assert load_model_config(path) == tiny


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda c: c.update(model_type="autoencoder"), "model_type"),
        (lambda c: c["model"]["diffusion"].update(type="dit"), "mmdit"),
        (lambda c: c["model"]["diffusion"]["config"].update(num_heads=7), "not divisible"),
        (lambda c: c.update(sample_size=44100), "latent frames|num_cond_tokens"),
        (lambda c: c["model"]["diffusion"].update(cross_attention_cond_ids=["text_prompt"]), "cross_attention"),
        (lambda c: c["model"].pop("diffusion"), "missing 'model.diffusion'"),
    ],
)
def test_bad_configs_are_named(mutate, match):
    cfg = official_like_config()
    mutate(cfg)
    with pytest.raises(ConfigError, match=match):
        parse_model_config(cfg)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="not found"):
        load_model_config(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model_config(tmp_path / "bad.json")
