"""The context length (`backbone.context`): the model's own by default, a long prompt
whole under a longer setting, and under a short one the task instruction and input
kept, personal context given up, and the cut counted (training, evaluation)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ownlm.backbone.base import CausalBackbone
from ownlm.backbone.context import DEFAULT_MAX_CONTEXT, context_length, counting_cuts, fit_ids
from ownlm.backbone.prompt_format import ANSWER_SEP
from ownlm.config import ExperimentConfig
from ownlm.data.demo import make_demo_tags
from ownlm.data.records import Item
from ownlm.data.tasks import get_task
from ownlm.errors import ConfigError
from ownlm.evaluate.report import MethodResult, print_cuts
from ownlm.evaluate.scoring import predict_by_user
from ownlm.retrieval.prompts import user_context
from ownlm.testing import WORDS, family_backbone

TASK = get_task("demo-tags")
QUERY = TASK.query_prompt({"description": "a quiet film about the sea"})


def _items(n: int, words: int) -> list[Item]:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    return [Item(f"i{j}", {"description": f"item{j} {text}", "tag": "comedy"}) for j in range(n)]


def test_context_length_is_the_models_own_up_to_the_memory_bound():
    assert context_length(SimpleNamespace(max_position_embeddings=256)) == 256
    long = SimpleNamespace(max_position_embeddings=131072)
    assert context_length(long) == DEFAULT_MAX_CONTEXT
    assert context_length(long, 32768) == 32768  # asked for: the model allows it
    with pytest.raises(ConfigError, match="context_length=512 is over the model's 256"):
        context_length(SimpleNamespace(max_position_embeddings=256), 512)


def test_a_2000_token_prompt_fits_a_longer_context():
    backbone = family_backbone("llama", max_len=4096)  # max_position_embeddings 4096
    assert backbone.max_len == 4096  # its own, no setting: not 384
    long_query = TASK.query_prompt({"description": " ".join(WORDS * 70)}, max_chars=None)
    prompt = TASK.build_prompt(long_query, _items(3, 600), "likes comedy")
    n = len(backbone.prompt_format.prompt_ids(prompt))
    assert 2000 < n < 4000
    with counting_cuts() as cuts:
        ids, _, labels = backbone.encode_pairs([prompt], ["comedy"])
        loss = backbone.loss(backbone.model, [prompt], ["comedy"])
        backbone.generate(backbone.model, [prompt], max_new_tokens=2)
    assert int((labels[0] == -100).sum()) == n and torch.isfinite(loss)
    assert cuts.counts == (0, 1)


def test_a_short_context_keeps_instruction_and_query_and_drops_the_least_relevant_first():
    bb = family_backbone("llama", max_len=4096)
    prompt = TASK.build_prompt(QUERY, _items(3, 25), "likes comedy")
    one_item = prompt.shorter[1]  # the fallbacks: 2 items, 1 item, the profile, the task
    assert "item0" in one_item and "item1" not in one_item
    answer = len(bb.prompt_format.answer_ids("comedy"))
    room = len(bb.prompt_format.prompt_ids(one_item)) + answer  # fits 1 item, not 2
    short = CausalBackbone(bb.model, bb.tokenizer, "llama", max_len=room)
    with counting_cuts() as cuts:
        ids, _, labels = short.encode_pairs([prompt], ["comedy"])
        kept = short.tokenizer.decode(ids[0][labels[0] == -100])
    assert kept == one_item + ANSWER_SEP  # the least relevant items went first
    assert kept.endswith(QUERY + ANSWER_SEP) and kept.startswith("User profile: likes comedy")
    assert cuts.counts == (1, 1)
    # too short for any item or the profile: the instruction and query stay whole
    fmt = short.prompt_format
    bare = short.tokenizer.decode(fit_ids(fmt, prompt, len(fmt.prompt_ids(QUERY))))
    assert bare == QUERY + ANSWER_SEP


def test_a_task_input_longer_than_the_context_keeps_its_head_and_tail():
    bb = family_backbone("llama", max_len=4096)
    fmt = CausalBackbone(bb.model, bb.tokenizer, "llama", max_len=128).prompt_format
    long_input = "Which tag? description: " + " ".join(WORDS * 40) + " the end"
    ids = fit_ids(fmt, long_input, 100)
    text = bb.tokenizer.decode(ids)
    assert len(ids) == 100 and text.startswith("Which tag?") and text.endswith(ANSWER_SEP)


def test_evaluation_reports_how_many_prompts_were_cut():
    bb = family_backbone("llama", max_len=4096)
    short = CausalBackbone(bb.model, bb.tokenizer, "llama", max_len=96)
    ds = make_demo_tags(seed=0)
    task = get_task(ds.task)
    users = ds.users[:2]
    rows = [(u, q) for u in users for q in u.queries[:2]]
    contexts = {u.user_id: user_context(task, u) for u in users}
    run = SimpleNamespace(cfg=ExperimentConfig(retrieval_k=2), task=task)
    with_model = lambda user: _Model(short.model)  # noqa: E731
    result = predict_by_user(run, short, rows, contexts, "pag", with_model, 2, True)
    cut, seen = result.prompts_cut
    assert seen == len(rows) and 0 < cut <= seen
    line = print_cuts([result, MethodResult("user-majority", {}, is_reference=True)], 96)
    assert line == (
        f"prompts cut to fit the context of 96 tokens: pag {cut}/{seen} "
        "(retrieved items, then the profile, left out)"
    )
    result.prompts_cut = [0, seen]
    assert print_cuts([result], 96) == "prompts cut to fit the context of 96 tokens: none"


class _Model:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self.model

    def __exit__(self, *exc):
        return False
