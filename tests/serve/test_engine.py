"""The decode loop's sampling: any temperature and top_p the protocol accepts is
sampled without error, so that one request cannot fail a batch of other users'."""

from __future__ import annotations

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
