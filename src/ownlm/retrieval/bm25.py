"""BM25 over one user's own history (OPPU's non-parametric knowledge).

OPPU retrieves from the user's history only, with BM25, and for the i-th training
item only among the items before it, so that no future output leaks into the prompt
(OPPU Sec. 3; k=1 in the paper's code). The index is built once per user; the
position and id filters are applied to the scores, which is cheap for 10-400 items.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import bm25s
import numpy as np

from ownlm.data.records import Item
from ownlm.errors import ConfigError, DataError

# bm25s sets its own logger to DEBUG at import; once any handler exists that floods
# the output with one line per index built. Keep only its warnings.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class _ItemTextTask(Protocol):
    def item_text(self, item: Item) -> str: ...


def _tokenize(texts: list[str]) -> list[list[str]]:
    # bm25s's default: lowercase, words of 2+ word characters, English stopwords removed.
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def rank_candidates(
    scores: np.ndarray,
    items: Sequence[Item],
    k: int,
    before: int | None = None,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
) -> list[Item]:
    """The k best items by `scores` (N,) among items[:before] whose id is not excluded.

    Ties go to the more recent item (the later position), as `rank_bm25`'s
    `argsort()[::-1]` in OPPU's code does; items with zero score still fill k, as there.
    """
    if k < 0:
        raise ConfigError(f"k must be >= 0 but the value passed is {k}")
    limit = len(items) if before is None else max(0, min(before, len(items)))
    positions = [i for i in range(limit) if items[i].id not in exclude_ids]
    if k == 0 or not positions:
        return []
    pos = np.asarray(positions)
    # lexsort: last key is primary -> score descending, then position descending.
    order = np.lexsort((-pos, -scores[pos]))
    return [items[int(pos[j])] for j in order[:k]]


class RankedIndex:
    """What every per-user index shares: `items` and a `scores(query) -> (N,)` method;
    `top_k` ranks with `rank_candidates` (position and exclusion filters included)."""

    items: list[Item]

    def scores(self, query: str) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def top_k(
        self,
        query: str,
        k: int,
        before: int | None = None,
        exclude_ids: set[str] | frozenset[str] = frozenset(),
    ) -> list[Item]:
        """The k best items for `query` among items[:before], skipping `exclude_ids`."""
        if k == 0 or not self.items:
            return []
        return rank_candidates(self.scores(query), self.items, k, before, exclude_ids)


class UserIndex(RankedIndex):
    """BM25 index over one user's history; `texts[i]` is the searchable text of `items[i]`."""

    def __init__(self, items: Sequence[Item], texts: Sequence[str]) -> None:
        if len(items) != len(texts):
            raise DataError(
                f"UserIndex got {len(items)} items but {len(texts)} texts; pass one text per item"
            )
        self.items = list(items)
        tokens = _tokenize(list(texts))
        # bm25s cannot index a corpus without a single token: scores are then all zero.
        self._bm25: bm25s.BM25 | None = None
        if any(tokens):
            self._bm25 = bm25s.BM25()
            self._bm25.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every item for `query`, shape (N,)."""
        if self._bm25 is None:
            return np.zeros(len(self.items), dtype=np.float32)
        ids = self._bm25.get_tokens_ids(_tokenize([query])[0])
        if not ids:
            return np.zeros(len(self.items), dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)


def retrieve_for(
    task: _ItemTextTask,
    user_history: Sequence[Item],
    query_text: str,
    k: int,
    before: int | None = None,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
) -> list[Item]:
    """One-shot retrieval with a task's `item_text`; build a `UserIndex` to query many times."""
    if k == 0 or not user_history:
        return []
    index = UserIndex(user_history, [task.item_text(it) for it in user_history])
    return index.top_k(query_text, k, before=before, exclude_ids=exclude_ids)
