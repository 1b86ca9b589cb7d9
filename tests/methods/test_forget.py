"""forget_user deletes a user's adapters in every store and their tokens, nothing else."""

import json
import os

import pytest
import torch

from ownlm.errors import NotFoundError
from ownlm.methods.forget import forget_user
from ownlm.store import AdapterStore, Manifest, TokenStore


def _adapter(store: AdapterStore, name: str) -> None:
    from safetensors.torch import save_file

    def write(d):
        d.mkdir(parents=True)
        save_file({"w": torch.zeros(1)}, str(d / "adapter_model.safetensors"))

    store.save(name, write, Manifest(name="", stage="user", task="t", base_fingerprint="fp"))


def test_forget_removes_adapters_and_tokens_only_of_that_user(tmp_path):
    for folder in ("adapters", "adapters-peft"):
        for user in ("u1", "u2"):
            _adapter(AdapterStore(tmp_path / folder), f"user:{user}")
    tokens = TokenStore(tmp_path)
    mine, theirs = tokens.create("u1"), tokens.create("u2")
    done = forget_user(tmp_path, "u1")
    assert done.removed == ["adapters", "adapters-peft", "tokens"]
    assert not done.stage2_train_user
    for folder in ("adapters", "adapters-peft"):
        assert AdapterStore(tmp_path / folder).names("user") == ["user:u2"]
    fresh = TokenStore(tmp_path)
    assert fresh.check(mine) is None and fresh.check(theirs).user == "u2"
    assert os.stat(tmp_path / "tokens.json").st_mode & 0o777 == 0o600  # still private
    assert forget_user(tmp_path, "u1").removed == []  # nothing left: says so


def test_forget_names_stage_2_train_users_and_missing_runs(tmp_path):
    router = tmp_path / "adapters" / "router"
    router.mkdir(parents=True)
    (router / "router.json").write_text(json.dumps({"users": ["u7"]}))
    assert forget_user(tmp_path, "u7").stage2_train_user
    assert not (tmp_path / "tokens.json").exists()  # no token store created on the way
    with pytest.raises(NotFoundError, match="does not exist"):
        forget_user(tmp_path / "nope", "u7")
