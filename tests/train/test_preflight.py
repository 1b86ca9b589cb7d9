"""Every LoRA a training command will inject is placed before any work: on a skeleton of
the backbone, in one line naming the model type and the setting when it cannot be."""

from __future__ import annotations

import time

import pytest

from ownlm.config import load_config
from ownlm.errors import ConfigError
from ownlm.testing import save_family
from ownlm.train.preflight import check_targets

ALL = (["population", "groups", "users"], ["oppu", "peft", "proper-user"])


def _cfg(*sets):
    return load_config(None, ["data=demo-tags", *sets])


@pytest.mark.parametrize("family", ["gpt2", "phi"])
def test_defaults_place_every_lora_of_a_family(tmp_path, family):
    path = save_family(tmp_path / family, family, hidden=32, layers=1, heads=2, intermediate=48)
    check_targets(_cfg(f"backbone={path}"), *ALL)


def test_the_tiny_default_is_checked_without_pretraining_it():
    start = time.perf_counter()
    check_targets(_cfg("backbone=tiny"), *ALL)
    assert time.perf_counter() - start < 5  # a skeleton on the meta device, no training
    with pytest.raises(ConfigError, match="user.targets"):
        check_targets(_cfg("backbone=tiny", "user.targets=[embed_tokens]"), *ALL)


def test_a_type_peft_has_no_default_for_is_refused_until_targets_are_named(tmp_path):
    path = save_family(tmp_path / "phi3", "phi3", hidden=32, layers=1, heads=2, intermediate=48)
    with pytest.raises(ConfigError) as e:
        check_targets(_cfg(f"backbone={path}"), *ALL)
    assert "'phi3'" in str(e.value) and "--set population.targets=" in str(e.value)
    named = ("population.targets=[qkv_proj,o_proj]", "user.targets=[qkv_proj]")
    check_targets(_cfg(f"backbone={path}", *named), *ALL)
    with pytest.raises(ConfigError, match="proper.targets"):
        check_targets(_cfg(f"backbone={path}", *named, "proper.targets=[wte]"), *ALL)
