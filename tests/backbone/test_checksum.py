"""The merged base's checksums: recorded when it is written, checked when it is loaded."""

import json

import pytest

from ownlm.backbone.base import write_base_meta
from ownlm.backbone.checksum import file_sha256
from ownlm.backbone.load import load_base
from ownlm.errors import StoreError
from ownlm.testing import toy_backbone


@pytest.fixture
def base_dir(tmp_path):
    backbone = toy_backbone(hidden=32, layers=1, heads=2, intermediate=64)
    backbone.save(tmp_path / "base")
    write_base_meta(tmp_path / "base", backbone, max_len=backbone.max_len)
    return tmp_path / "base"


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a weight value deep in the file, not the header
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_refused_not_used(base_dir):
    meta = json.loads((base_dir / "ownlm_base.json").read_text())
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(meta["sha256"])
    load_base(base_dir)
    _flip_a_byte(base_dir / "model.safetensors")
    with pytest.raises(StoreError, match="model.safetensors does not match") as e:
        load_base(base_dir)
    assert "retrain from stage 1" in str(e.value) and "restore the file" in str(e.value).lower()


def test_a_missing_file_is_refused(base_dir):
    (base_dir / "tokenizer.json").unlink()
    with pytest.raises(StoreError, match="tokenizer.json is missing"):
        load_base(base_dir)


def test_a_base_written_before_checksums_still_loads(base_dir):
    meta_file = base_dir / "ownlm_base.json"
    meta = json.loads(meta_file.read_text())
    del meta["sha256"]
    meta_file.write_text(json.dumps(meta))
    _flip_a_byte(base_dir / "model.safetensors")  # unverifiable: loaded, with a warning
    # the recorded fingerprint still vouches for it: the gap the checksums close
    assert load_base(base_dir).fingerprint() == meta["fingerprint"]


def test_a_digest_is_remembered_only_while_the_file_is_unchanged(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100)
    first = file_sha256(f)
    assert file_sha256(f) == first
    f.write_bytes(b"b" * 100)  # same size, new content
    assert file_sha256(f) != first


@pytest.mark.parametrize(
    "change",
    [
        lambda m: [],
        lambda m: {k: v for k, v in m.items() if k != "name"},
        lambda m: m | {"kind": "pickle"},
        lambda m: m | {"sha256": "x"},
        lambda m: m | {"sha256": {"../../../etc/passwd": "00"}},
    ],
)
def test_a_malformed_base_meta_is_one_clear_error(base_dir, change):
    """ownlm_base.json edited by hand: `ownlm serve`/`eval` stopped with a KeyError or
    AttributeError traceback; now a StoreError naming the file and the fix."""
    from ownlm.backbone.checksum import read_base_meta

    meta_file = base_dir / "ownlm_base.json"
    meta_file.write_text(json.dumps(change(json.loads(meta_file.read_text()))))
    with pytest.raises(StoreError, match="ownlm_base.json is corrupt .*retrain from stage 1"):
        load_base(base_dir)
    with pytest.raises(StoreError, match="ownlm_base.json is corrupt"):
        read_base_meta(base_dir)
    meta_file.write_text("{bad")
    with pytest.raises(StoreError, match="ownlm_base.json is corrupt \\(not JSON"):
        read_base_meta(base_dir)


def test_a_base_meta_that_is_not_json_is_one_clear_error_at_load(base_dir):
    (base_dir / "ownlm_base.json").write_text("{bad")
    with pytest.raises(StoreError, match="ownlm_base.json is corrupt \\(not JSON"):
        load_base(base_dir)  # eval, serve: was a JSONDecodeError traceback
