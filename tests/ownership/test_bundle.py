"""A user's ownership bundle: written whole, restored only into a run with the same base,
refused when any member was changed, added, or names a path outside the run."""

import io
import json
import tarfile
from types import SimpleNamespace

import pytest

from ownlm.data.loaders import load_jsonl
from ownlm.data.records import Dataset, Item, Query, User
from ownlm.data.tasks import get_task
from ownlm.errors import StoreError
from ownlm.ownership.bundle import INDEX, import_bundle, read_bundle, write_bundle
from ownlm.store import AdapterStore
from ownlm.testing import toy_run

SIZE = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "vocab": 300}


def _run(path, users=("u1", "u2"), seed=0):
    """A toy run (base + user adapters) and the run object `write_bundle` reads."""
    toy_run(path, list(users), seed=seed, **SIZE)
    items = [Item(f"h{i}", {"description": f"movie {i}", "tag": "comedy"}) for i in range(3)]
    user = User("u1", items, [Query("q0", "which tag?", "comedy", {"description": "x"})])
    return SimpleNamespace(
        dir=path,
        task=get_task("demo-tags"),
        dataset=Dataset("demo-tags", [user]),
        cfg=SimpleNamespace(data="users.jsonl"),
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One run, its user u1's bundle (with history), and a copy of the run without u1."""
    tmp = tmp_path_factory.mktemp("bundle")
    run = _run(tmp / "run")
    done = write_bundle(run, "u1", tmp / "u1.tar", with_history=True)
    return SimpleNamespace(tmp=tmp, run=run, done=done)


def _fresh_run(tmp_path, made):
    """Another directory with the same base: the run without user u1's adapter."""
    import shutil

    shutil.copytree(made.run.dir, tmp_path / "run")
    AdapterStore(tmp_path / "run" / "adapters").delete("user:u1")
    return tmp_path / "run"


def test_round_trip_restores_the_adapter_as_stored(tmp_path, made):
    assert made.done.adapters == ["oppu"]
    index, members = read_bundle(made.done.path)
    assert index["user"] == "u1" and index["base"]["sha256"]  # the base's checksums ride along
    assert set(members) == set(index["members"]) >= {"profile.json", "history.jsonl"}
    (tmp_path / "h.jsonl").write_bytes(members["history.jsonl"])
    assert load_jsonl(tmp_path / "h.jsonl", "demo-tags").users[0].history == (
        made.run.dataset.users[0].history
    )
    run_dir = _fresh_run(tmp_path, made)
    done = import_bundle(made.done.path, run_dir)
    assert done.adapters == ["oppu"] and done.history and not done.replaced
    store, original = AdapterStore(run_dir / "adapters"), AdapterStore(made.run.dir / "adapters")
    fp = json.loads((run_dir / "base" / "ownlm_base.json").read_text())["fingerprint"]
    path = store.verify("user:u1", fp)
    assert store.manifest("user:u1").sha256 == original.manifest("user:u1").sha256
    assert (path / "adapter_config.json").read_bytes() == (
        original.path("user:u1") / "adapter_config.json"
    ).read_bytes()


def _other_adapter_as_u1(run_dir, store="adapters"):
    """The run's user u1 holds u2's weights: an adapter other than the bundle's."""
    import shutil

    store = AdapterStore(run_dir / store)
    manifest = store.manifest("user:u2")
    src = store.path("user:u2")
    store.save(
        "user:u1",
        lambda d: shutil.copytree(src, d, ignore=shutil.ignore_patterns("ownlm.json")),
        manifest,
    )


def test_import_over_another_adapter_needs_replace_and_again_is_harmless(tmp_path, made):
    run_dir = _fresh_run(tmp_path, made)
    import_bundle(made.done.path, run_dir)
    again = import_bundle(made.done.path, run_dir)  # the same bytes: nothing to replace
    assert again.unchanged == ["oppu"] and not again.adapters
    _other_adapter_as_u1(run_dir)
    with pytest.raises(StoreError, match="already has user u1's oppu adapter.*--replace"):
        import_bundle(made.done.path, run_dir)
    assert import_bundle(made.done.path, run_dir, replace=True).replaced == ["oppu"]


def _rewrite(src, dst, change):
    """Copy a bundle, passing each (name, bytes) through `change` (None drops it)."""
    with tarfile.open(src) as tar:
        members = [(i.name, tar.extractfile(i).read()) for i in tar.getmembers()]
    with tarfile.open(dst, "w") as tar:
        for name, data in members:
            out = change(name, data)
            for n, d in [out] if isinstance(out, tuple) else out or []:
                info = tarfile.TarInfo(n)
                info.size = len(d)
                tar.addfile(info, io.BytesIO(d))
    return dst


def _flip(name, data):
    if name.endswith("adapter_model.safetensors"):
        data = data[:-1] + bytes([data[-1] ^ 1])
    return name, data


def test_a_tampered_byte_is_refused_and_nothing_is_written(tmp_path, made):
    run_dir = _fresh_run(tmp_path, made)
    bad = _rewrite(made.done.path, tmp_path / "bad.tar", _flip)
    with pytest.raises(StoreError, match="adapter_model.safetensors' does not match its sha256"):
        import_bundle(bad, run_dir)
    assert not AdapterStore(run_dir / "adapters").exists("user:u1")


def test_path_traversal_and_unlisted_members_are_refused(tmp_path, made):
    run_dir = _fresh_run(tmp_path, made)
    for evil in ("../evil.txt", "/tmp/evil.txt", "adapters/oppu/../../x"):

        def add(name, data, evil=evil):
            return [(name, data)] + ([(evil, b"x")] if name == INDEX else [])

        bad = _rewrite(made.done.path, tmp_path / "evil.tar", add)
        with pytest.raises(StoreError, match="unsafe path"):
            import_bundle(bad, run_dir)
    extra = _rewrite(
        made.done.path,
        tmp_path / "extra.tar",
        lambda n, d: [(n, d)] + ([("notes.txt", b"hi")] if n == INDEX else []),
    )
    with pytest.raises(StoreError, match="unexpected member 'notes.txt'"):
        import_bundle(extra, run_dir)
    assert not (tmp_path / "evil.txt").exists() and not (run_dir.parent / "evil.txt").exists()
    assert not AdapterStore(run_dir / "adapters").exists("user:u1")


def test_a_bundle_for_another_base_is_refused(tmp_path, made):
    _run(tmp_path / "other", users=("u2",), seed=1)  # same users, another base
    with pytest.raises(StoreError, match="refused: it belongs to base .* has base"):
        import_bundle(made.done.path, tmp_path / "other")
    assert not AdapterStore(tmp_path / "other" / "adapters").exists("user:u1")


def _resealed(src, dst, change_members, change_index=None, mode="w"):
    """A bundle as an attacker writes it: members changed by `change_members(dict)`, and
    the (unsigned) index re-sealed so every sha256 matches."""
    import hashlib

    with tarfile.open(src) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar.getmembers()}
    index = json.loads(members.pop(INDEX))
    change_members(members)
    index["members"] = {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}
    if change_index:
        change_index(index)
    with tarfile.open(dst, mode) as tar:
        for name, data in {INDEX: json.dumps(index).encode(), **members}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dst


def _manifest(members, change):
    """Change the oppu adapter's manifest in place, its sha256 table kept consistent."""
    import hashlib

    key = "adapters/oppu/ownlm.json"
    m = json.loads(members[key])
    change(m, members)
    for rel in list(m["sha256"]) if isinstance(m.get("sha256"), dict) else []:
        if f"adapters/oppu/{rel}" in members:
            m["sha256"][rel] = hashlib.sha256(members[f"adapters/oppu/{rel}"]).hexdigest()
    members[key] = json.dumps(m).encode()


def _as_user(user):
    def change(members):
        _manifest(members, lambda m, _: m.__setitem__("name", f"user:{user}"))

    return change, lambda index: index.__setitem__("user", user)


@pytest.mark.parametrize("user", ["a" * 300, "u1\nx", "bad user", "u1:x", "é", "-x"])
def test_a_user_id_no_data_file_could_hold_is_refused(tmp_path, made, user):
    run_dir = _fresh_run(tmp_path, made)
    bad = _resealed(made.done.path, tmp_path / "b.tar", *_as_user(user))
    with pytest.raises(StoreError, match="refused: .*user id"):
        import_bundle(bad, run_dir)
    assert [p.name for p in (run_dir / "adapters" / "users").iterdir()] == ["u2"]


@pytest.mark.parametrize(
    "extra", ["adapter_model.bin", "junk.txt", "config.json", "evil.py", "proper_router.json"]
)
def test_a_file_the_adapters_manifest_does_not_vouch_for_is_refused(tmp_path, made, extra):
    """The index is not signed: a crafted bundle re-seals it. A pickle (`.bin`, which
    loaders may unpickle) or any other file outside the manifest never reaches the store."""
    run_dir = _fresh_run(tmp_path, made)
    bad = _resealed(
        made.done.path,
        tmp_path / "b.tar",
        lambda m: m.__setitem__(f"adapters/oppu/{extra}", b"cos\nsystem\n(S'id'\ntR."),
    )
    with pytest.raises(StoreError, match=f"refused: .*{extra}"):
        import_bundle(bad, run_dir)
    assert not AdapterStore(run_dir / "adapters").exists("user:u1")


def _bad_weights(members):
    import struct

    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 4]}}
    ).encode()
    members["adapters/oppu/adapter_model.safetensors"] = (
        struct.pack("<Q", len(header)) + header + b"\0\0\0\0"
    )
    _manifest(members, lambda m, _: None)


@pytest.mark.parametrize(
    "change, change_index",
    [
        (lambda ms: _manifest(ms, lambda m, _: m.__setitem__("sha256", ["x"])), None),
        (lambda ms: _manifest(ms, lambda m, _: m.__setitem__("extra", "x")), None),
        (lambda ms: _manifest(ms, lambda m, _: m.__setitem__("name", 5)), None),
        (lambda ms: ms.__setitem__("adapters/oppu/ownlm.json", b"[]"), None),
        (lambda ms: None, lambda i: i.__setitem__("base", "x")),
        (lambda ms: None, lambda i: i.__setitem__("adapters", ["oppu"])),
        (_bad_weights, None),
    ],
)
def test_a_malformed_index_manifest_or_weight_file_is_one_clear_refusal(
    tmp_path, made, change, change_index
):
    run_dir = _fresh_run(tmp_path, made)
    bad = _resealed(made.done.path, tmp_path / "b.tar", change, change_index)
    with pytest.raises(StoreError, match="refused: "):
        import_bundle(bad, run_dir)
    assert not AdapterStore(run_dir / "adapters").exists("user:u1")


def test_a_bundle_that_inflates_past_the_limit_is_refused_before_it_is_read(
    tmp_path, made, monkeypatch
):
    """A gzip bomb (or a sparse member): the headers' sizes are summed before any member
    is read into memory."""
    import ownlm.ownership.bundle.archive as bundle_mod

    monkeypatch.setattr(bundle_mod, "MAX_BUNDLE_BYTES", 1 << 20)
    run_dir = _fresh_run(tmp_path, made)
    bad = _resealed(
        made.done.path,
        tmp_path / "b.tar.gz",
        lambda m: m.__setitem__("adapters/oppu/junk.txt", b"\0" * (4 << 20)),
        mode="w:gz",
    )
    assert bad.stat().st_size < 100_000
    with pytest.raises(StoreError, match="refused: .*larger than"):
        import_bundle(bad, run_dir)
    many = _resealed(
        made.done.path,
        tmp_path / "many.tar",
        lambda m: m.update({f"adapters/oppu/f{i}": b"" for i in range(5000)}),
    )
    with pytest.raises(StoreError, match="refused: .*members"):
        import_bundle(many, run_dir)


def test_a_bundle_path_that_is_a_device_or_directory_says_so(tmp_path, made):
    from ownlm.errors import NotFoundError

    for path, what in [("/dev/zero", "not a regular file"), (tmp_path, "not a regular file")]:
        with pytest.raises(NotFoundError, match=what):
            import_bundle(path, made.run.dir)
