import json

import pytest
import torch
from safetensors.torch import save_file

from ownlm.errors import StoreError
from ownlm.store import AdapterStore, Manifest


def _writer(value: float):
    def write(d):
        d.mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
        save_file({"w": torch.full((2, 2), value)}, d / "adapter_model.safetensors")

    return write


def _manifest(fp="base-1"):
    return Manifest(name="", stage="user/oppu", task="demo-tags", base_fingerprint=fp)


def test_save_verify_list_delete(tmp_path):
    store = AdapterStore(tmp_path)
    path = store.save("user:42", _writer(1.0), _manifest())
    assert path == tmp_path / "users" / "42"
    assert store.names("user") == ["user:42"]
    assert store.verify("user:42", "base-1") == path
    m = json.loads((path / "ownlm.json").read_text())
    assert m["name"] == "user:42" and set(m["sha256"]) == {"adapter_model.safetensors"}
    assert store.delete("user:42") and not store.exists("user:42") and not store.delete("user:42")


def test_wrong_base_and_corruption_are_refused(tmp_path):
    store = AdapterStore(tmp_path)
    path = store.save("user:1", _writer(1.0), _manifest())
    with pytest.raises(StoreError, match="trained for base base-1.*retrain"):
        store.verify("user:1", "other-base")
    (path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupt"):
        store.verify("user:1")


def test_failed_write_keeps_the_old_adapter(tmp_path):
    store = AdapterStore(tmp_path)
    store.save("user:1", _writer(1.0), _manifest())

    def broken(d):
        _writer(2.0)(d)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.save("user:1", broken, _manifest())
    store.verify("user:1", "base-1")  # old adapter intact and consistent
    assert [p.name for p in (tmp_path / "users").iterdir()] == ["1"]  # no temp left over


def test_overwrite_replaces_atomically(tmp_path):
    store = AdapterStore(tmp_path)
    store.save("user:1", _writer(1.0), _manifest())
    store.save("user:1", _writer(2.0), _manifest("base-2"))
    assert store.manifest("user:1").base_fingerprint == "base-2"


@pytest.mark.parametrize("name", ["user:../x", "user:", "nope:1", "../etc", ""])
def test_bad_names(tmp_path, name):
    with pytest.raises(StoreError, match="invalid"):
        AdapterStore(tmp_path).path(name)


def test_missing_adapter_message(tmp_path):
    with pytest.raises(StoreError, match="no adapter 'user:9'.*train it first"):
        AdapterStore(tmp_path).verify("user:9")
