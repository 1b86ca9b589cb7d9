"""How PROPER's users reach the group experts: the user vectors, their projection, the
stage-2 token routers and their stored state, and how a user stage 2 has no row for is
placed (`proper.new_user`).

User vectors: the mean all-MiniLM-L6-v2 embedding of a user's history items (the
backbone's mean hidden state if the encoder cannot load), projected to `user_dim` by a
standardised PCA of the train users; stage 2 starts its learned user table there.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ownlm.adapters.layers import layer_dims
from ownlm.adapters.mixture import TokenUserRouter
from ownlm.backbone.device import model_device
from ownlm.errors import ConfigError
from ownlm.log import get_logger

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
NEW_USER = ("projection", "neighbours")


def check_new_user(mode: str) -> str:
    """`proper.new_user` checked before stage 2 trains: a ConfigError naming the modes."""
    if mode not in NEW_USER:
        raise ConfigError(f"proper.new_user must be one of {list(NEW_USER)}, got {mode!r}")
    return mode


def router_factory(user_dim: int, groups: int, top_k: int):
    """Builds each wrapped layer's stage-2 router: softmax(W [x ; e_u])."""
    return lambda lin: TokenUserRouter(layer_dims(lin)[0], user_dim, groups, top_k)


# -- user vectors --------------------------------------------------------------------
def history_vectors(run: Run, users, backbone=None) -> np.ndarray:
    """(N, D) one vector per user: the mean all-MiniLM-L6-v2 embedding of their history
    items, or, if that encoder cannot be loaded, the backbone's mean hidden state."""
    texts = [[run.task.item_text(it) for it in u.history] or [""] for u in users]
    emb = embed(run, [t for ts in texts for t in ts], backbone)
    out, i = [], 0
    for ts in texts:
        out.append(emb[i : i + len(ts)].mean(0))
        i += len(ts)
    return np.stack(out).astype(np.float32)


def embed(run: Run, texts: list[str], backbone=None) -> np.ndarray:
    """(N, D) all-MiniLM-L6-v2 embeddings of `texts`, or, if that encoder cannot be
    loaded, the backbone's mean last hidden state."""
    try:
        from ownlm.retrieval.dense import embed_texts

        return embed_texts(texts, device=str(run.device))
    except (ImportError, OSError) as e:
        log.warning(f"[yellow]MiniLM unavailable ({e}); using backbone hidden states[/]")
        return _backbone_embed(backbone or run.base(), texts)


@torch.no_grad()
def _backbone_embed(backbone, texts: list[str]) -> np.ndarray:
    """(N, d) the backbone's last hidden state of `texts`, averaged over real tokens."""
    enc = backbone.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    device = model_device(backbone.model)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    hidden = backbone.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    h = hidden.hidden_states[-1]  # (N, T, d)
    m = mask[..., None].float()
    return ((h * m).sum(1) / m.sum(1).clamp_min(1)).float().cpu().numpy()


def fit_projection(vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), P (D, dim)): standardised PCA, so projected users are ~N(0, 1)."""
    mu = vectors.mean(0)
    _, sv, vt = np.linalg.svd(vectors - mu, full_matrices=False)
    k = min(dim, vt.shape[0])
    std = sv[:k] / math.sqrt(max(1, len(vectors) - 1))
    p = np.zeros((vectors.shape[1], dim), dtype=np.float32)
    p[:, :k] = vt[:k].T / np.maximum(std, 1e-6)
    return mu.astype(np.float32), p


def token_router_tensors(layers, table, mu, proj, vectors, new_user: str) -> dict:
    """`assignment: token`'s routing state: each layer's router, the learned user table,
    the PCA projection (and with new_user='neighbours' the train users' vectors)."""
    tensors = {
        f"{n}.{k}": v.detach().cpu().contiguous()
        for n, layer in layers.items()
        for k, v in layer.router.state_dict().items()
    }
    tensors.update(
        user_table=table.detach().cpu().contiguous(),
        proj_mean=torch.from_numpy(mu),
        proj_matrix=torch.from_numpy(proj),
    )
    if new_user == "neighbours":  # train users' history vectors, to find neighbours
        tensors["train_vectors"] = torch.from_numpy(vectors).contiguous()
    return tensors
