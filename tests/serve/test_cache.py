"""The adapter LRU cache: eviction, reload, refusal of corrupt or foreign adapters."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ownlm.errors import StoreError
from ownlm.serve.cache import AdapterCache, AdapterRemoved
from ownlm.serve.engine import Engine, Request
from ownlm.store import AdapterStore
from ownlm.testing import add_user_adapter, toy_backbone


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    backbone = toy_backbone()
    store = AdapterStore(tmp_path_factory.mktemp("adapters"))
    for i, u in enumerate(["a", "b", "c"]):
        add_user_adapter(backbone, store, u, seed=i)
    return backbone, store


def make_cache(backbone, store, slots=2):
    fp = backbone.fingerprint()
    engine = Engine(
        copy.deepcopy(backbone.model), backbone.tokenizer, slots, max_len=backbone.max_len
    )
    return engine, AdapterCache(engine.lora, store, fp)


def test_lru_evicts_oldest_but_not_rows_of_the_batch(setup):
    engine, cache = make_cache(*setup)
    with cache.lock:
        assert cache.slots_for(["a", "b", None]) == [0, 1, -1]
        cache.slots_for(["a"])  # a is now the most recent: b goes first
        assert cache.slots_for(["c"]) == [1]
        assert cache.loaded() == ["a", "c"]
        with pytest.raises(StoreError, match="cache_size"):
            cache.slots_for(["a", "c", "b"])  # three users, two slots


def test_cached_slot_computes_what_a_fresh_load_computes(setup):
    backbone, store = setup
    engine, cache = make_cache(backbone, store)
    ids = backbone.tokenizer("the user likes", add_special_tokens=False)["input_ids"]
    with cache.lock:
        cache.slots_for(["a", "b"])
        cache.slots_for(["c"])  # evicts a
        slot = cache.slots_for(["a"])[0]  # a back, into b's old slot
        out = engine.generate([Request(ids=ids, slot=slot, max_tokens=6)])[0].tokens
    fresh, _ = make_cache(backbone, store, slots=1)
    fresh.lora.load(0, store.path("user:a"))
    assert fresh.generate([Request(ids=ids, slot=0, max_tokens=6)])[0].tokens == out


def test_remove_then_reload(setup):
    _, cache = make_cache(*setup)
    with cache.lock:
        cache.slots_for(["a"])
    assert cache.remove("a") and not cache.servable("a")
    with cache.lock, pytest.raises(AdapterRemoved):
        cache.slots_for(["a"])
    assert cache.reload("a") in (0, 1) and cache.servable("a")
    assert (
        torch.count_nonzero(cache.lora.layers[next(iter(cache.lora.layers))].A[cache.slots["a"]])
        > 0
    )


def test_corrupt_or_foreign_adapter_is_refused(setup, tmp_path):
    backbone, store = setup
    _, cache = make_cache(backbone, store)
    cache.fingerprint = "0" * 20  # as if the base had changed
    with pytest.raises(StoreError, match="trained for base"):
        cache.reload("a")
    other = AdapterStore(tmp_path)
    add_user_adapter(backbone, other, "x", seed=5)
    (other.path("user:x") / "adapter_model.safetensors").write_bytes(b"garbage")
    _, cache = make_cache(backbone, other)
    with pytest.raises(StoreError, match="corrupt"):
        cache.reload("x")
    assert json.loads((other.path("user:x") / "ownlm.json").read_text())["sha256"]


def test_unknown_user_cannot_be_removed(setup):
    from ownlm.errors import NotFoundError

    _, cache = make_cache(*setup)
    with pytest.raises(NotFoundError, match="'zed' has no adapter"):
        cache.remove("zed")
    assert "zed" not in cache.removed


def test_adapter_deleted_from_the_store_is_dropped_at_its_next_use(setup, tmp_path):
    backbone, _ = setup
    store = AdapterStore(tmp_path)
    add_user_adapter(backbone, store, "x", seed=5)
    _, cache = make_cache(backbone, store)
    with cache.lock:
        slot = cache.slots_for(["x"])[0]
    layer = cache.lora.layers[next(iter(cache.lora.layers))]
    assert torch.count_nonzero(layer.A[slot]) > 0
    store.delete("user:x")  # `ownlm forget`, from another process
    with cache.lock, pytest.raises(AdapterRemoved, match="no longer in the store"):
        cache.slots_for(["x"])
    assert cache.loaded() == [] and torch.count_nonzero(layer.A[slot]) == 0
