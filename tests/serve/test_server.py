"""The Server: personal prompts switchable per request, slots on exactly the modules the
stored adapters adapt (answers equal PEFT's own), settings checked."""

from __future__ import annotations

import asyncio
import copy

import openai
import pytest
import torch
from peft import PeftModel

from ownlm.backbone.load import load_base
from ownlm.config import ServeSettings
from ownlm.errors import ConfigError, StoreError
from ownlm.serve.errors import status_of
from ownlm.serve.launch import serve_in_thread
from ownlm.serve.protocol import CompletionBody
from ownlm.serve.server import build_server, stored_targets
from ownlm.store import AdapterStore, TokenStore
from ownlm.testing import add_user_adapter, toy_run

PROMPT, NEW = "the user likes", 8


class _Stub:
    """A personalizer with a short profile: the toy tokenizer makes demo prompts too long."""

    def has(self, user):
        return user == "alice"

    def prompt(self, user, text):
        return "User profile: likes news\n" + text


def test_server_applies_personalization_switchably(live):
    text = "the user likes"
    server = live.server
    old, server.personalizer = server.personalizer, _Stub()
    try:
        body = CompletionBody(model="toy:alice", prompt=text, max_tokens=4)
        personal = server.build(body, "alice", text, chat=False)
        body.ownlm_personalize = False
        bare = server.build(body, "alice", text, chat=False)
    finally:
        server.personalizer = old
    assert len(personal.ids) > len(bare.ids)
    assert server.backbone.tokenizer.decode(bare.ids) == text


def test_cache_smaller_than_a_batch_is_refused(toy_run_dir):
    with pytest.raises(ConfigError, match="cache_size=2 must be >= max_batch_size=4"):
        build_server(toy_run_dir, ServeSettings(cache_size=2, max_batch_size=4))


def test_empty_store_batches_the_backbones_default_targets(tmp_path):
    assert stored_targets(AdapterStore(tmp_path), ("q_proj", "v_proj")) == ("q_proj", "v_proj")


# users -> the modules their LoRA adapts: none is the default q/v pair
TARGETS = {
    "dora": ("k_proj", "o_proj"),
    "eve": ("k_proj", "o_proj"),
    "finn": ("q_proj", "k_proj", "v_proj"),
}


@pytest.fixture(scope="module")
def other_targets_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("other-targets")
    backbone = toy_run(run_dir, ["dora", "eve"], targets=TARGETS["dora"])
    add_user_adapter(
        backbone, AdapterStore(run_dir / "adapters"), "finn", 7, targets=TARGETS["finn"]
    )
    return run_dir


def peft_answer(run_dir, user: str) -> str:
    """The user's greedy answer from PEFT itself, on a fresh copy of the base."""
    base = load_base(run_dir / "base")
    path = AdapterStore(run_dir / "adapters").path(f"user:{user}")
    model = PeftModel.from_pretrained(copy.deepcopy(base.model), path).eval()
    ids = base.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=base.tokenizer.pad_token_id,
        )
    return base.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_adapters_on_other_modules_are_served_as_peft_computes_them(other_targets_run):
    run_dir = other_targets_run
    server = build_server(run_dir, ServeSettings(cache_size=4, max_batch_size=4, max_wait_ms=50))
    batched = {name.rsplit(".", 1)[-1] for name in server.engine.lora.layers}
    assert batched == {"q_proj", "k_proj", "v_proj", "o_proj"}  # the union of the users'
    admin = TokenStore(run_dir).create(admin=True)
    uv, thread, port = serve_in_thread(server)

    async def together():
        c = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=admin, max_retries=0)
        rs = await asyncio.gather(
            *(
                c.completions.create(model=f"toy:{u}", prompt=PROMPT, max_tokens=NEW, temperature=0)
                for u in TARGETS
            )
        )
        return {u: r.choices[0].text for u, r in zip(TARGETS, rs, strict=True)}

    try:
        got = asyncio.run(together())
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
    expected = {u: peft_answer(run_dir, u) for u in TARGETS}
    assert got == expected
    assert len(set(expected.values())) == len(TARGETS)  # each user's adapter matters


def test_adapter_on_a_module_not_batched_is_refused(tmp_path):
    backbone = toy_run(tmp_path, ["hal"], targets=("o_proj",))
    server = build_server(tmp_path, ServeSettings(cache_size=2, max_batch_size=2))
    add_user_adapter(backbone, server.store, "ivy", 3, targets=("gate_proj",))
    with pytest.raises(StoreError, match="not batched here") as e:
        server.cache.reload("ivy")
    assert status_of(e.value) == 409  # refused, not missing
    assert server.cache.reload("hal") == 0


def test_server_generates_with_a_bfloat16_base(toy_run_dir):
    """`ownlm serve --dtype bfloat16`: the base in bf16, the LoRA slots in float32 (as PEFT
    keeps a LoRA over a bf16 base); a short greedy answer (a tiny model, a short run)."""
    from ownlm.serve.engine import Request

    bf16 = build_server(toy_run_dir, ServeSettings(4, 4, 5, device="cpu", dtype="bfloat16"))
    assert next(bf16.backbone.model.parameters()).dtype == torch.bfloat16
    assert bf16.engine.lora.layers and all(
        layer.A.dtype == torch.float32 for layer in bf16.engine.lora.layers.values()
    )
    ids = bf16.backbone.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    slot = bf16.cache.slots_for(["alice"])[0]
    out = bf16.engine.generate([Request(ids=ids, slot=slot, max_tokens=4)])[0]
    assert len(out.tokens) >= 1 and out.prompt_tokens == len(ids)


def _corrupt_weights(store: AdapterStore, user: str) -> None:
    """A weight file that does not parse, its manifest's sha256 updated to match (as a
    store edited by hand, or written by an older import, could hold)."""
    import hashlib
    import json
    import struct

    path = store.path(f"user:{user}")
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**5, 10**5], "data_offsets": [0, 4]}})
    blob = struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4
    (path / "adapter_model.safetensors").write_bytes(blob)
    manifest = json.loads((path / "ownlm.json").read_text())
    manifest["sha256"]["adapter_model.safetensors"] = hashlib.sha256(blob).hexdigest()
    (path / "ownlm.json").write_text(json.dumps(manifest))


def test_an_unreadable_adapter_neither_stops_the_server_nor_gets_a_500(tmp_path):
    toy_run(tmp_path, ["hal", "ivy"])
    store = AdapterStore(tmp_path / "adapters")
    _corrupt_weights(store, "ivy")
    server = build_server(tmp_path, ServeSettings(cache_size=2, max_batch_size=2))
    with pytest.raises(StoreError, match="cannot be read") as e:
        server.cache.reload("ivy")
    assert status_of(e.value) == 409
    assert server.cache.reload("hal") == 0  # the others are served


def test_an_adapter_of_other_shapes_is_refused_and_leaves_no_half_written_slot(tmp_path):
    backbone = toy_run(tmp_path, ["hal"])
    server = build_server(tmp_path, ServeSettings(cache_size=2, max_batch_size=2))
    other = toy_run(tmp_path / "other", ["ivy"], hidden=48)  # another model's shapes
    import shutil

    shutil.copytree(
        AdapterStore(tmp_path / "other" / "adapters").path("user:ivy"),
        server.store.path("user:ivy"),
    )
    manifest = server.store.path("user:ivy") / "ownlm.json"
    import json

    m = json.loads(manifest.read_text())
    m["base_fingerprint"] = backbone.fingerprint()
    manifest.write_text(json.dumps(m))
    del other
    with pytest.raises(StoreError, match="does not fit this base") as e:
        server.cache.reload("ivy")
    assert status_of(e.value) == 409 and "ivy" not in server.cache.loaded()
    for layer in server.engine.lora.layers.values():  # every slot but hal's is all zeros
        assert all(not layer.A[s].any() for s in range(2) if s != server.cache.slots.get("hal"))
