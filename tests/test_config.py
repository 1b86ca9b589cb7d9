from pathlib import Path

import pytest

from ownlm.config import ExperimentConfig, describe_fields, load_config
from ownlm.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_yaml_in_configs_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig) and cfg.name


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        None, ["user.lr=1e-3", "methods=base,oppu", "tiny.layers=2", "task=null", "profile=false"]
    )
    assert cfg.user.lr == 1e-3 and cfg.user.r == 8  # untouched nested defaults survive
    assert (
        cfg.methods == ["base", "oppu"]
        and cfg.tiny.layers == 2
        and cfg.task is None
        and cfg.profile is False
    )


def test_paper_defaults():
    u = ExperimentConfig().user
    assert (u.r, u.alpha, u.dropout, u.lr, u.epochs, u.batch_size) == (8, 8, 0.05, 1e-4, 2.0, 16)


@pytest.mark.parametrize(
    "override, message",
    [
        (["usr.lr=1"], "unknown config key.*usr"),
        (["user.lr=fast"], "user.lr.*not a valid float"),
        (["retrieval_k"], "key=value"),
        (["profile=maybe"], "profile"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_field_has_help():
    assert all(help_ for _, _, help_ in describe_fields())
