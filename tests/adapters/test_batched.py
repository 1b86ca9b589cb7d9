"""Batched multi-user LoRA must equal PEFT's own output on the same adapters, on a Llama
(nn.Linear) and on a GPT-2 (Conv1D, weight transposed)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from ownlm.adapters.batched import install_batched_lora
from ownlm.adapters.peft_io import read_peft_adapter
from ownlm.errors import StoreError
from ownlm.serve.engine import Engine, Request
from ownlm.store import AdapterStore
from ownlm.testing import toy_run

USERS = ["u0", "u1", "u2", "u3"]
RANKS = [8, 4, 8, 2]  # different ranks: zero-padded to the largest


@pytest.fixture(scope="module", params=[None, "gpt2"], ids=["llama", "gpt2"])
def run(tmp_path_factory, request):
    run_dir = tmp_path_factory.mktemp("run")
    backbone = toy_run(run_dir, USERS, ranks=RANKS, family=request.param)
    return backbone, AdapterStore(run_dir / "adapters")


def _batch(backbone, prompts):
    tok = backbone.tokenizer
    rows = tok(prompts, add_special_tokens=False)["input_ids"]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _peft_alone(backbone, store, user):
    return PeftModel.from_pretrained(
        copy.deepcopy(backbone.model), store.path(f"user:{user}")
    ).eval()


def test_mixed_batch_logits_equal_peft_alone(run):
    backbone, store = run
    model = copy.deepcopy(backbone.model)
    lora = install_batched_lora(model, 4, 8, backbone.default_targets)
    for slot, user in enumerate(USERS):
        lora.load(slot, store.path(f"user:{user}"))
    prompts = ["the user likes movies", "news", "a good answer about sports", "books music", "tags"]
    slots = [2, 0, -1, 3, 1]  # row -> slot; -1 = the bare base
    ids, mask = _batch(backbone, prompts)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), lora.use(slots):
        mixed = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    for row, slot in enumerate(slots):
        alone = backbone.model if slot < 0 else _peft_alone(backbone, store, USERS[slot])
        with torch.no_grad():
            ref = alone(
                input_ids=ids[row : row + 1],
                attention_mask=mask[row : row + 1],
                position_ids=pos[row : row + 1],
            ).logits
        keep = mask[row].bool()
        assert torch.allclose(mixed[row][keep], ref[0][keep], atol=1e-4), (row, slot)


def test_engine_greedy_tokens_equal_peft_generate(run):
    backbone, store = run
    engine = Engine(
        copy.deepcopy(backbone.model), backbone.tokenizer, n_slots=4, max_len=backbone.max_len
    )
    for slot, user in enumerate(USERS):
        engine.lora.load(slot, store.path(f"user:{user}"))
    prompts = ["the user likes", "news about science and a long tail of words", "rating", "music"]
    reqs = [
        Request(
            ids=backbone.tokenizer(p, add_special_tokens=False)["input_ids"], slot=s, max_tokens=12
        )
        for p, s in zip(prompts, [3, 1, 0, -1], strict=True)
    ]
    outs = engine.generate(reqs)
    for req, out in zip(reqs, outs, strict=True):
        alone = backbone.model if req.slot < 0 else _peft_alone(backbone, store, USERS[req.slot])
        ref = alone.generate(
            input_ids=torch.tensor([req.ids]),
            attention_mask=torch.ones(1, len(req.ids), dtype=torch.long),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=backbone.tokenizer.pad_token_id,
        )[0, len(req.ids) :].tolist()
        assert out.tokens == ref


def test_users_differ_and_base_row_unchanged(run):
    backbone, store = run
    model = copy.deepcopy(backbone.model)
    lora = install_batched_lora(model, 2, 8, backbone.default_targets)
    lora.load(0, store.path("user:u0"))
    lora.load(1, store.path("user:u1"))
    ids, mask = _batch(backbone, ["the user likes movies"] * 3)
    with torch.no_grad(), lora.use([0, 1, -1]):
        out = model(input_ids=ids, attention_mask=mask).logits
    with torch.no_grad():
        base = backbone.model(input_ids=ids[:1], attention_mask=mask[:1]).logits
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    assert torch.allclose(out[2], base[0], atol=1e-5)


def test_rank_above_max_is_refused(run):
    backbone, store = run
    lora = install_batched_lora(copy.deepcopy(backbone.model), 1, 4, backbone.default_targets)
    with pytest.raises(StoreError, match="max_rank"):
        lora.load(0, read_peft_adapter(store.path("user:u0")))
