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
    assert m["name"] == "user:42"
    assert set(m["sha256"]) == {"adapter_config.json", "adapter_model.safetensors"}
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


def _save_in_child(root, name, value, kill_at):
    """Save `name` in a child process that is SIGKILLed at `kill_at` ("write:1", ...)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, 'tests/store'); "
        "from test_store import _writer, _manifest; from ownlm.store import AdapterStore; "
        f"AdapterStore({str(root)!r}).save({name!r}, _writer({value}), _manifest())"
    )
    env = {**os.environ, "OWNLM_TEST_KILL_AT": kill_at}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=".").returncode


def _scratch(root):
    return [p.name for p in root.rglob(".*") if p.name.startswith((".tmp-", ".old-", ".del-"))]


def test_killed_write_is_never_loadable_and_is_swept(tmp_path):
    store = AdapterStore(tmp_path)
    assert _save_in_child(tmp_path, "user:1", 1.0, "write:1") == -9  # SIGKILLed
    assert _scratch(tmp_path) and not store.exists("user:1") and store.names("user") == []
    store.save("user:2", _writer(2.0), _manifest())  # the next write sweeps
    assert _scratch(tmp_path) == [] and store.names("user") == ["user:2"]


def test_swap_killed_midway_restores_the_old_version(tmp_path):
    store = AdapterStore(tmp_path)
    store.save("user:1", _writer(1.0), _manifest())
    assert _save_in_child(tmp_path, "user:1", 2.0, "swap:1") == -9
    assert not store.exists("user:1")  # old moved aside, new not yet in: neither loadable
    assert any(s.startswith(".old-1-") for s in _scratch(tmp_path))
    assert any("restored" in done for done in AdapterStore(tmp_path).sweep())
    store.verify("user:1", "base-1")
    assert _scratch(tmp_path) == []


def test_a_live_writers_scratch_is_left_alone(tmp_path):
    import os

    from ownlm.files import HOST as _HOST

    live = tmp_path / "users" / f".tmp-7-{os.getpid()}-{_HOST}-abcd1234"
    live.mkdir(parents=True)
    AdapterStore(tmp_path).sweep()
    assert live.exists()


def test_stale_reason_names_why_and_checks_the_files(tmp_path):
    store = AdapterStore(tmp_path)
    path = store.save("user:1", _writer(1.0), _manifest())
    manifest = json.loads((path / "ownlm.json").read_text())
    assert set(manifest["sha256"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert store.stale_reason("user:2", "base-1") == "missing"
    assert store.stale_reason("user:1", "base-2") == "other base"
    assert store.current("user:1", "base-1")
    manifest["extra"]["history_sha256"] = "h1"
    (path / "ownlm.json").write_text(json.dumps(manifest))
    assert store.stale_reason("user:1", "base-1", "h2") == "history changed"
    assert store.current("user:1", "base-1", "h1")
    (path / "adapter_config.json").write_text('{"r": 64}')  # a config edited by hand
    assert store.stale_reason("user:1", "base-1", "h1").startswith("corrupt:")


def test_delete_removes_a_symlinked_adapter_link_never_its_target(tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.save("user:1", _writer(1.0), _manifest())
    outside = tmp_path / "outside"
    store.path("user:1").rename(outside)
    store.path("user:1").symlink_to(outside)
    assert store.delete("user:1") and not store.path("user:1").is_symlink()
    assert (outside / "ownlm.json").exists()  # the target is not the store's to delete
    store.path("user:2").parent.mkdir(parents=True, exist_ok=True)
    store.path("user:2").symlink_to(tmp_path / "gone")  # dangling
    assert store.delete("user:2") and not store.path("user:2").is_symlink()
    from ownlm.files import HOST as _HOST

    link = store.path("user:1").parent / f".del-1-999999999-{_HOST}-abcd1234"  # writer gone
    link.symlink_to(outside)
    assert store.sweep() == [f"removed {link}"] and not link.is_symlink()
    assert (outside / "ownlm.json").exists()
