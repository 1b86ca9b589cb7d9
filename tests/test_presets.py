"""Budgets by backbone size (`preset`, issue #24): what fills the keys nobody set."""

from __future__ import annotations

import json

import pytest

from ownlm.config import ExperimentConfig, load_config, training_values
from ownlm.config.presets import PRESETS, SMALL_PARAMS, estimated_params, preset_for
from ownlm.errors import ConfigError


def _budget(cfg):
    return (cfg.population.lr, cfg.population.epochs, cfg.user.lr, cfg.user.epochs)


def test_the_tiny_backbone_gets_the_small_preset_not_the_7b_paper_values():
    cfg = load_config(None, ["backbone=tiny"])
    small = PRESETS["small"]
    assert _budget(cfg) == (
        small["population.lr"],
        small["population.epochs"],
        small["user.lr"],
        small["user.epochs"],
    )
    assert cfg.population.targets == ["all-linear"]
    assert cfg.user.lr > ExperimentConfig().user.lr  # the paper's 1e-4 is the dataclass's


def test_minilm_gets_the_encoder_preset_and_paper_keeps_the_dataclass_defaults():
    enc = load_config(None, ["backbone=minilm"])
    assert (enc.population.lr, enc.user.lr) == (
        PRESETS["encoder"]["population.lr"],
        PRESETS["encoder"]["user.lr"],
    )
    paper = load_config(None, ["backbone=minilm", "preset=PAPER"])  # any case
    defaults = ExperimentConfig()
    assert _budget(paper) == _budget(defaults)


def test_a_key_a_person_sets_wins_over_the_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("backbone: tiny\nuser: {lr: 5.0e-4}\npopulation: {targets: [q_proj]}\n")
    cfg = load_config(f, ["user.epochs=3"])
    assert (cfg.user.lr, cfg.user.epochs, cfg.population.targets) == (5e-4, 3.0, ["q_proj"])
    assert cfg.population.lr == PRESETS["small"]["population.lr"]  # unset: the preset's


def test_a_recorded_config_reloads_to_the_same_values_under_another_preset(tmp_path):
    """config.yaml records every resolved value: reopened, nothing is filled again."""
    from ownlm.config import save_config

    cfg = load_config(None, ["backbone=tiny"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml", ["preset=paper"])
    assert training_values(again) == training_values(cfg)


def test_the_preset_itself_is_no_training_key():
    assert "preset" not in training_values(load_config(None, []))


def test_an_unknown_preset_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["preset=huge"])
    assert "\n" not in str(err.value) and "auto, small, encoder, paper" in str(err.value)


def test_an_hf_model_takes_its_preset_by_its_size(tmp_path):
    small, big = tmp_path / "small", tmp_path / "big"
    for path, d, layers in ((small, 64, 2), (big, 2048, 16)):
        path.mkdir()
        (path / "config.json").write_text(
            json.dumps({"hidden_size": d, "num_hidden_layers": layers, "vocab_size": 32000})
        )
    assert estimated_params(small / "config.json") < SMALL_PARAMS
    assert estimated_params(big / "config.json") > SMALL_PARAMS
    assert (preset_for(str(small)), preset_for(str(big))) == ("small", "paper")
    assert preset_for("some-org/a-hub-id") == "paper"  # unreadable here: a pretrained LLM
    assert estimated_params(tmp_path / "none.json") is None
