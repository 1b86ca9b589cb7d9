"""PROPER's groups by preference (`proper.assignment: user`): each user is in one group,
the one whose expert best explains their history.

Why likelihood: a group is "users who answer alike", and the LoRA expert of a group is
the model of how they answer, so the group that explains a user's history best (the
highest likelihood of their answers, i.e. the lowest summed LM loss) is their group.
Stage 2 (`ownlm.proper.em`) alternates, as hard EM (k-means' logic with experts as
centroids): M, train each expert on its members' history pairs; E, reassign each user
to argmax_g [log prior_g - sum_items loss_g(item)]. New and sparse users join with no
training by the same E-step (posterior over groups, the train-group sizes as prior).

The start: k-means over what a user *answers* (in LaMP-style data the inputs are
shared or random content and the habits live in the outputs), compared on alike
inputs: each user's row of the answer-agreement matrix (`answer_vectors`); optionally
with the history embedding (what they were asked) too.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ownlm.adapters.mixture import UserRouter, mixture_layers, routing
from ownlm.log import get_logger

log = get_logger(__name__)
OFF = -1e4  # a gate logit that softmax turns into an exact 0 (e^-1e4 underflows)


# -- the start: k-means over what users answer ----------------------------------------------
def answer_vectors(task, users, embed) -> np.ndarray:
    """(U, D) per user, what they answer given what they were asked. `embed(texts)` ->
    (N, D) (all-MiniLM-L6-v2 in stage 2).

    Label task: row u of the answer-agreement matrix, A[u, v] = the mean over u's items i
    of [u's label for i == v's label for v's item most similar to i] (inputs compared by
    embedding). Users who share a habit answer alike *to alike inputs*, so their rows
    agree; a label histogram misses habits that differ in which input gets which label
    (groups sharing labels). Cost: one (N, n_v) similarity block per user v.
    Other tasks: the mean of (answer embedding - input embedding), unit vectors, over
    the user's items, standardised: what the user adds to their input (a style), with
    the content their inputs share taken off."""
    items = [it for u in users for it in u.history]
    owner = np.array([row for row, u in enumerate(users) for _ in u.history], dtype=np.int64)
    if not items:
        return np.zeros((len(users), max(1, len(users))), dtype=np.float32)
    x = _unit(embed([task.item_text(it) for it in items]))  # (N, D) inputs
    answers = [it.fields.get(task.output_field, "") for it in items]
    counts = np.maximum(np.bincount(owner, minlength=len(users)), 1)[:, None]  # (U, 1)
    if not task.labels:
        shift = _unit(embed(answers)) - x  # (N, D)
        sums = np.zeros((len(users), x.shape[1]), dtype=np.float32)
        np.add.at(sums, owner, shift)
        return standardise(sums / counts)
    codes = np.unique(answers, return_inverse=True)[1]
    out = np.zeros((len(users), len(users)), dtype=np.float32)
    for v in range(len(users)):
        mine = np.flatnonzero(owner == v)
        if len(mine):
            nearest = mine[(x @ x[mine].T).argmax(1)]  # (N,) v's item closest to each item
            agree = (codes == codes[nearest]).astype(np.float32)  # (N,)
            out[:, v] = np.bincount(owner, weights=agree, minlength=len(users)) / counts[:, 0]
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def standardise(x: np.ndarray) -> np.ndarray:
    """Each column to mean 0, std 1 (constant columns to 0), so no feature dominates."""
    std = x.std(0)
    return (x - x.mean(0)) / np.where(std > 1e-8, std, 1.0)


def kmeans_groups(features: np.ndarray, groups: int, seed: int) -> np.ndarray:
    """(U,) a group per user by scikit-learn's k-means (seeded, 10 restarts). With fewer
    users than groups, one user per group and the remaining groups empty."""
    from sklearn.cluster import KMeans

    k = min(groups, len(features))
    if k <= 1:
        return np.zeros(len(features), dtype=np.int64)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(features)
    return km.labels_.astype(np.int64)


# -- new users of a label task: the groups' answers -----------------------------------------
class GroupAnswers:
    """How a group's members answer, as a model a new user's few items are scored under
    (`proper.route_new: answers`, the default for label tasks).

    p_g(y | x): a TF-IDF logistic regression (scikit-learn) fitted on the items of group
    g's members, input text -> their label, mixed with a uniform 1/L at weight `EPS` so
    that one surprising item cannot veto a group. It is the criterion the k-means start
    clusters train users on (`answer_vectors`: do you label these inputs as they do?),
    made a likelihood; a linear model picks the words a group's labels follow (one
    group tags by genre, another by mood), which nearest neighbours over whole-text
    embeddings mixed up. Why not the experts' likelihood for label tasks: from 2-5
    items a label's loss under G experts differs by less than its noise when the
    experts share most of what they learned (measured on demo-tags, MiniLM: test users
    vs planted groups, ARI -0.27 from 2 items, 0.49 from 5). Fitted on first use from
    the train users stage 2 placed (a forgotten user is no longer among them)."""

    EPS = 0.1

    def __init__(self, task, users, groups_of: dict[str, int], n_groups: int):
        self.task, self.n_groups = task, n_groups
        self._users = [u for u in users if u.user_id in groups_of and u.history]
        self._groups_of = groups_of
        self._models = None  # per group: (vectorizer, classifier) or {label: frequency}

    def _label(self, item) -> str:
        return str(item.fields.get(self.task.output_field, ""))

    def _fit(self):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        self._models = []
        for g in range(self.n_groups):
            items = [it for u in self._users if self._groups_of[u.user_id] == g for it in u.history]
            labels = [self._label(it) for it in items]
            if len(set(labels)) < 2:  # an empty or one-label group: its label frequencies
                self._models.append({y: labels.count(y) / len(labels) for y in set(labels)})
                continue
            vec = TfidfVectorizer(sublinear_tf=True)
            x = vec.fit_transform([self.task.item_text(it) for it in items])
            self._models.append((vec, LogisticRegression(max_iter=1000, C=10.0).fit(x, labels)))

    def log_likelihood(self, items) -> np.ndarray:
        """(G,) sum over `items` of log p_g(label | input); zeros without items."""
        return self.item_log_likelihood(items).sum(0)

    def item_log_likelihood(self, items) -> np.ndarray:
        """(n, G) log p_g(label | input) of each of `items`."""
        out = np.zeros((len(items), self.n_groups))
        if not items:
            return out
        if self._models is None:
            self._fit()
        texts = [self.task.item_text(it) for it in items]
        ys = [self._label(it) for it in items]
        n_labels = max(len(self.task.labels or ()), len(set(ys)), 2)
        for g, model in enumerate(self._models):
            if isinstance(model, dict):
                p = np.array([model.get(y, 0.0) for y in ys])
            else:
                vec, clf = model
                proba = clf.predict_proba(vec.transform(texts))  # (n, classes)
                col = {c: i for i, c in enumerate(clf.classes_)}
                p = np.array([proba[i, col[y]] if y in col else 0.0 for i, y in enumerate(ys)])
            out[:, g] = np.log((1 - self.EPS) * p + self.EPS / n_labels)
        return out


def answer_gates(answers: GroupAnswers, items, prior: torch.Tensor) -> torch.Tensor:
    """(G,) posterior over groups of a user's `items` under the groups' answers, the
    train-group sizes as `prior`; the prior without items."""
    if not items:
        return prior.clone()
    ll = torch.as_tensor(answers.log_likelihood(items), dtype=torch.float32, device=prior.device)
    return responsibilities(-ll[None], prior)[0]


# -- E-step: which expert explains each user -------------------------------------------------
def group_prior(assign: torch.Tensor, groups: int) -> torch.Tensor:
    """(G,) the groups' sizes, Laplace-smoothed (+1 each): an empty group stays possible."""
    counts = torch.bincount(assign.cpu(), minlength=groups).double()
    return ((counts + 1) / (counts.sum() + groups)).float()


def responsibilities(loss: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """(U, G) posterior over groups: p(g | u) ∝ prior_g * exp(-loss[u, g]), where
    loss[u, g] is the summed per-item LM loss (minus log-likelihood) of u's items under
    expert g. An all-zero row (a user with no items) gets the prior."""
    logits = prior.to(loss).clamp_min(1e-12).log()[None] - loss  # (U, G)
    return logits.softmax(-1)


def centred(item_loss: torch.Tensor, centre: torch.Tensor | None) -> torch.Tensor:
    """(N, G) each item's loss under each expert minus that expert's mean loss over the
    train items (`centre`, (G,)). Without it, hard EM collapses: an expert with more
    members learns more of what every user shares (the task's format, the population's
    answers), explains every user better, takes them, and trains on still more. Centred,
    a user goes to the expert that explains *them* better than it explains the average
    train user; new users are compared with the same stored centre."""
    return item_loss if centre is None else item_loss - centre.to(item_loss)[None]


def confident_moves(item: torch.Tensor, rows, assign: torch.Tensor, proposal, z: float = 2.0):
    """(U,) `assign`, with each user moved to their `proposal` group only where their
    items say so with confidence: the paired per-item gains d_i = loss(i, own group) -
    loss(i, proposed) have mean > z * standard error (a one-sided paired test at ~98%
    for z = 2). Experts that have not learned what sets groups apart differ by noise,
    and hard EM would then scatter a good start; a real habit lowers the loss of most of
    a user's items alike and moves them. A user with one item stays."""
    rows_t = torch.as_tensor(list(rows), dtype=torch.long, device=item.device)
    out = assign.clone()
    for u in torch.nonzero(proposal.cpu() != assign.cpu()).flatten().tolist():
        mine = item[rows_t == u]  # (n_u, G)
        if len(mine) < 2:
            continue
        d = mine[:, int(assign[u])] - mine[:, int(proposal[u])]  # (n_u,) > 0: better there
        if d.mean() > z * d.std() / math.sqrt(len(d)):
            out[u] = proposal[u]
    return out


def reseed_empty(assign: torch.Tensor, loss: torch.Tensor, items: torch.Tensor, groups: int):
    """Hard assignment with no empty group where it can be helped: each empty group takes
    the worst-explained user (highest mean loss per item under their own group) among
    groups of two or more. Returns (assign, [(user row, from group, to group), ...])."""
    assign = assign.clone()
    moved = []
    own = loss.gather(1, assign[:, None])[:, 0] / items.clamp_min(1)  # (U,) mean loss
    for g in range(groups):
        counts = torch.bincount(assign, minlength=groups)
        if counts[g] > 0:
            continue
        donors = counts[assign] >= 2  # users whose group would not empty
        if not donors.any():
            break  # fewer users than groups: some stay empty
        worst = int(torch.where(donors, own, torch.full_like(own, -math.inf)).argmax())
        moved.append((worst, int(assign[worst]), g))
        assign[worst] = g
        own[worst] = -math.inf  # a re-seeded user is not taken again
    return assign, moved


def expert_router(groups: int, device) -> UserRouter:
    """A `UserRouter` with one row per expert: row g routes everything to expert g."""
    router = UserRouter(groups, groups).to(device)
    with torch.no_grad():
        router.logits.fill_(OFF).fill_diagonal_(0.0)
    return router.requires_grad_(False)


@contextmanager
def one_router(model, router):
    """Every mixture layer of `model` routes through `router` for this block."""
    layers = mixture_layers(model)
    saved = {n: layer.router for n, layer in layers.items()}
    for layer in layers.values():
        layer.router = router
    try:
        yield
    finally:
        for n, layer in layers.items():
            layer.router = saved[n]


@torch.no_grad()
def item_expert_losses(backbone, state, pairs, groups: int, batch_size: int = 16) -> torch.Tensor:
    """(N, G) each pair's mean LM loss under each expert alone (gate one-hot on g), in
    eval mode, batched. `pairs`: (prompt, target, ...)."""
    model = backbone.model
    device = next(iter(mixture_layers(model).values())).A.device
    router = expert_router(groups, device)
    out = torch.zeros(len(pairs), groups, device=device)
    was_training = model.training
    model.eval()
    with one_router(model, router):
        for g in range(groups):
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                ids = torch.full((len(chunk),), g, dtype=torch.long, device=device)
                with routing(state, user_ids=ids):
                    loss = backbone.item_losses(model, [c[0] for c in chunk], [c[1] for c in chunk])
                out[i : i + len(chunk), g] = loss.to(out)
    model.train(was_training)
    return out


def per_user(item_loss: torch.Tensor, rows, n_users: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((U, G) summed loss per user, (U,) item counts) from per-pair losses and each
    pair's user row."""
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=item_loss.device)
    sums = item_loss.new_zeros(n_users, item_loss.shape[1]).index_add(0, idx, item_loss)
    counts = torch.bincount(idx, minlength=n_users).to(item_loss)
    return sums, counts


def user_gates_from_history(backbone, state, pairs, groups: int, prior, centre=None):
    """(G,) the untrained routing of one user: the posterior over groups of their history
    pairs (the E-step: centred losses, the train-group sizes as `prior`); the prior
    without pairs."""
    if not pairs:
        return prior.clone()
    item = centred(item_expert_losses(backbone, state, pairs, groups), centre)
    return responsibilities(item.sum(0, keepdim=True), prior)[0]  # (1, G) -> (G,)


def set_user_gates(router: UserRouter, gates: torch.Tensor) -> None:
    """Make a one-row `UserRouter` give exactly `gates` (G,): logits = log gates."""
    with torch.no_grad():
        g = gates.to(router.logits)
        router.logits.copy_(torch.where(g > 0, g.clamp_min(1e-30).log(), OFF)[None])
