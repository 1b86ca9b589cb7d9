"""The decode loop's sampling: any temperature and top_p the protocol accepts is
sampled without error, so that one request cannot fail a batch of other users'; its KV
cache passed as transformers supports it, with no deprecation warning."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from ownlm.serve.engine import Request, _pick, _Row


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i % 26) for i in ids)


def _rows(*reqs: Request) -> list[_Row]:
    return [_Row(r, _Tok()) for r in reqs]


def test_tiny_temperature_samples_like_greedy():
    logits = torch.tensor([[0.1, 3.0, -2.0, 2.9], [1.0, 0.0, 5.0, 4.0]])
    rows = _rows(Request([1], temperature=1e-300, seed=0), Request([1], temperature=1e-45))
    assert _pick(logits.clone(), rows, eos=99) == [1, 2]


def test_tiny_top_p_keeps_the_most_likely_token():
    logits = torch.tensor([[0.1, 3.0, -2.0, 2.9]])
    rows = _rows(Request([1], temperature=1.0, top_p=1e-300, seed=0))
    assert _pick(logits.clone(), rows, eos=99) == [1]


def test_extreme_logits_still_sample():
    logits = torch.tensor([[float("-inf"), 1e30, -1e30, float("-inf")]])
    rows = _rows(Request([1], temperature=2.0, top_p=0.5, seed=1))
    assert _pick(logits.clone(), rows, eos=99) == [1]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decode_uses_transformers_supported_cache_api_without_warnings(family):
    """transformers deprecates `past_key_values=` (removed in 5.40) and the older
    gradient-checkpointing names: the engine's prefill and decode steps raise none of
    its deprecation warnings, here made errors."""
    from ownlm.serve.engine import Engine, cache_argument
    from ownlm.testing import family_backbone

    backbone = family_backbone(family, hidden=32, layers=1, heads=2, intermediate=48)
    engine = Engine(backbone.model, backbone.tokenizer, n_slots=2, max_len=64)
    ids = backbone.tokenizer("the user likes", add_special_tokens=False)["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        out = engine.generate([Request(ids, max_tokens=5), Request(ids[:2], max_tokens=3)])
    assert [len(o.tokens) for o in out] == [5, 3] or any(o.finish_reason == "stop" for o in out)
    if "cache" in inspect.signature(backbone.model.forward).parameters:
        assert cache_argument(backbone.model) == "cache"
