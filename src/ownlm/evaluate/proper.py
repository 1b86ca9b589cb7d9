"""PROPER in the evaluation: its two methods next to OPPU, the active-level study and the
groups view.

| method       | model                                                 | prompt                      |
|--------------|-------------------------------------------------------|-----------------------------|
| proper-input | base + group experts + user LoRA, input-dependent router | profile + retrieved + input |
| proper-user  | base + group experts + user LoRA, user-only router       | profile + retrieved + input |

Prompts are OPPU's, so the comparison isolates the parametric part. Users without a
stored adapter follow `ownlm.train.proper.prepare_user` (new user: stage-2 routing from
the history embedding; no history: population model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ownlm.adapters.mixture import group_summary, uninstall_mixture
from ownlm.backbone.base import detach
from ownlm.data.splits import truncate_history
from ownlm.evaluate.report import MethodResult, plot_buckets
from ownlm.evaluate.runner import PRIMARY, _score, references, test_queries
from ownlm.personal import query_prompt, training_pairs, user_context
from ownlm.train.groups import groups_fingerprint, history_vectors, load_groups
from ownlm.train.loop import inject, train_pairs
from ownlm.train.proper import ROUTERS, fit_user, mean_gates, prepare_user, user_pairs
from ownlm.train.users import user_seed

console = Console(stderr=True)
PROPER_METHODS = {f"proper-{r}": f"PROPER: {label}" for r, label in ROUTERS.items()}


def _by_user(rows) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, (u, _) in enumerate(rows):
        out.setdefault(u.user_id, []).append(i)
    return out


def _vectors(run, rows, backbone) -> dict[str, object]:
    users = {u.user_id: u for u, _ in rows if u.history}
    vecs = history_vectors(run, list(users.values()), backbone) if users else []
    return dict(zip(users, vecs, strict=True))


def _predict(run, backbone, rows, contexts, name, setup) -> MethodResult:
    """Score `name`: for each user, `setup(user)` returns the model to answer with."""
    cfg, task = run.cfg, run.task
    start = time.perf_counter()
    out = [""] * len(rows)
    for uid, idx in _by_user(rows).items():
        user = rows[idx[0]][0]
        prompts = [
            query_prompt(task, contexts[uid], rows[i][1], cfg.retrieval_k, cfg.profile) for i in idx
        ]
        for i, p in zip(idx, backbone.predict(setup(user), task, prompts), strict=True):
            out[i] = p
    return _score(run, name, rows, out, time.perf_counter() - start)


def evaluate_proper(
    run, rows=None, contexts=None, routers=("input", "user"), backbone=None
) -> list[MethodResult]:
    """One MethodResult per PROPER router from the stored adapters (train them first with
    `train_proper_users`), on the same rows as `evaluate.runner.evaluate_run`."""
    rows = rows if rows is not None else test_queries(run)
    contexts = contexts or {u.user_id: user_context(run.task, u) for u, _ in rows}
    backbone = backbone or run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())
    vectors = _vectors(run, rows, backbone)
    gm = load_groups(run, backbone)
    results, how = [], {}
    try:
        for router in routers:
            store = run.store(f"proper-{router}")

            def setup(user, store=store, router=router):
                mode = prepare_user(gm, store, fp, user, router, vectors.get(user.user_id))
                how[mode] = how.get(mode, 0) + 1
                return backbone.model

            results.append(_predict(run, backbone, rows, contexts, f"proper-{router}", setup))
    finally:
        gm.reset()
        uninstall_mixture(backbone.model)
    console.print(f"PROPER users served by: {how}")
    return results


# -- active-level study ------------------------------------------------------------------
class _Unloading:
    """Calls `setup(user)` and unloads the previous user's PEFT wrapper first."""

    def __init__(self, backbone, setup):
        self.backbone, self.setup, self.last = backbone, setup, None

    def __call__(self, user):
        self.close()
        self.last = self.setup(user)
        return self.last

    def close(self):
        if self.last is not None and hasattr(self.last, "unload"):
            detach(self.backbone, self.last)
        self.last = None


def _proper_in_memory(run, backbone, rows, contexts, router: str) -> MethodResult:
    vectors = _vectors(run, rows, backbone)
    gm = load_groups(run, backbone)

    def setup(user):
        if router == "new" or not user.history:  # served untrained, as `prepare_user` does
            prepare_user(gm, None, None, user, router, vectors.get(user.user_id))
        else:
            gm.reset()
            fit_user(run, gm, user, vectors[user.user_id], router)
        return backbone.model

    try:
        return _predict(run, backbone, rows, contexts, f"proper-{router}", setup)
    finally:
        gm.reset()
        uninstall_mixture(backbone.model)


def active_level_study(
    run,
    buckets=(2, 5, 10, 50),
    routers=("input", "user"),
    out_dir: Path | None = None,
    max_users: int | None = None,
) -> dict[str, dict[str, float]]:
    """Test users' histories cut to the last `keep` items, OPPU and PROPER user stages
    trained on each cut (in memory, nothing stored), scored on the same queries, next to
    the user's own majority / mean over the cut history (the trivial reference), PAG and
    "proper-new" (the group model routed from the cut history's embedding, no
    user training: how PROPER serves a user it has not trained).
    `max_users` keeps the first N test users (each bucket trains 1 + len(routers) user
    stages per user). Returns {bucket: {method: primary metric}}; writes JSON and a plot."""
    primary = PRIMARY[run.task.kind]
    out_dir = out_dir or run.dir / "eval"
    rows0 = test_queries(run)
    keep_ids = list(dict.fromkeys(u.user_id for u, _ in rows0))[:max_users]
    rows0 = [(u, q) for u, q in rows0 if u.user_id in keep_ids]
    backbone = run.base()
    table: dict[str, dict[str, float]] = {}
    for keep in buckets:
        cut = {u.user_id: truncate_history(u, keep) for u, _ in rows0}
        rows = [(cut[u.user_id], q) for u, q in rows0]
        contexts = {uid: user_context(run.task, u) for uid, u in cut.items()}
        results = [r for r in references(run, rows) if r.method == "user-majority"]
        results.append(_predict(run, backbone, rows, contexts, "pag", lambda u: backbone.model))
        oppu = _Unloading(backbone, lambda u, c=contexts: _oppu_model(run, backbone, u, c))
        try:
            results.append(_predict(run, backbone, rows, contexts, "oppu", oppu))
        finally:
            oppu.close()
        results += [_proper_in_memory(run, backbone, rows, contexts, r) for r in routers]
        results.append(_proper_in_memory(run, backbone, rows, contexts, "new"))
        table[str(keep)] = {r.method: round(r.metrics[primary], 4) for r in results}
        console.print(f"active level {keep}: {table[str(keep)]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "active_levels.json").write_text(
        json.dumps({"task": run.task.name, "metric": primary, "table": table}, indent=2)
    )
    plot_buckets(out_dir / "active_levels.png", table, primary, f"{run.task.name}: {primary}")
    return table


def _oppu_model(run, backbone, user, contexts):
    if not user.history:
        return backbone.model
    cfg = run.cfg
    seed = user_seed(cfg.seed, user.user_id)
    model = inject(backbone, cfg.user, seed)
    pairs = training_pairs(run.task, contexts[user.user_id], cfg.retrieval_k, cfg.profile)
    train_pairs(backbone, model, pairs, cfg.user, seed)
    return model


# -- groups view ---------------------------------------------------------------------------
def groups_view(run, users=None, console_out: Console | None = None) -> dict:
    """Per user: mean stage-2 gate over their history prompts (all layers) and its argmax
    expert; per expert: share of users and mean gate. Train users use their learned
    embedding, others their projected history embedding. Also written to eval/groups.json."""
    backbone = run.base()
    users = [u for u in (users or run.split.train + run.split.test) if u.history]
    vectors = dict(
        zip([u.user_id for u in users], history_vectors(run, users, backbone), strict=True)
    )
    gm = load_groups(run, backbone)
    rows, means = [], []
    try:
        index = {uid: i for i, uid in enumerate(gm.meta["users"])}
        for u in users:
            i = index.get(u.user_id)
            emb = gm.user_table[i : i + 1] if i is not None else gm.embed(vectors[u.user_id])
            per_layer = mean_gates(gm, emb, user_pairs(run, u))
            g = sum(per_layer.values()) / len(per_layer)  # (G,)
            means.append(g)
            split = "train" if i is not None else "test"
            rows.append(
                {
                    "user": u.user_id,
                    "split": split,
                    "top": int(g.argmax()),
                    "gates": [round(float(x), 4) for x in g],
                }
            )
    finally:
        gm.reset()
        uninstall_mixture(backbone.model)
    G = gm.meta["groups"]
    summary = group_summary(torch.stack(means) if means else torch.zeros(0, G))
    share = summary["users"]
    mean = [round(sum(r["gates"][g] for r in rows) / max(1, len(rows)), 4) for g in range(G)]
    table = Table(title=f"{run.task.name}: users per group expert (stage-2 router)")
    for col in ("user", "split", "top expert", *[f"g{g}" for g in range(G)]):
        table.add_column(col)
    for r in rows:
        table.add_row(r["user"], r["split"], str(r["top"]), *[f"{x:.3f}" for x in r["gates"]])
    table.add_row("[bold]share[/]", "", "", *[f"{x:.2f}" for x in share])
    (console_out or Console()).print(table)
    top = summary["user_top_gate"]
    out = {"users": rows, "share": share, "mean_gate": mean, "user_top_gate": round(top, 4)}
    console.print(f"users' mean largest gate {top:.3f} (uniform {1 / G:.3f}, hard groups 1)")
    (run.dir / "eval").mkdir(parents=True, exist_ok=True)
    (run.dir / "eval" / "groups.json").write_text(json.dumps(out, indent=2))
    return out
