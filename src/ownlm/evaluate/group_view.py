"""The groups view: which users PROPER's stage-2 router puts on which group expert."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch
from rich.table import Table

from ownlm.adapters.mixture import group_summary
from ownlm.data.planted import group_agreement, planted_groups
from ownlm.evaluate.coverage import require_groups
from ownlm.log import console, get_logger
from ownlm.proper import group_model, history_vectors
from ownlm.proper.users import mean_gates, proper_pairs

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def groups_view(run: Run, users=None) -> dict:
    """Per user: their stage-2 gates and its argmax expert; per expert: share of users
    and mean gate. With `assignment: user` (one fact per user): a train user's stored
    gates, another user's untrained routing (the posterior of their history under each
    expert). With `assignment: token`: the mean gate over their history prompts and all
    layers, train users on their learned embedding, others on their projected history
    embedding. Also written to eval/groups.json. Refuses (naming the fix) stage-2 groups
    that are missing, stale or corrupt."""
    backbone = run.base()
    require_groups(run, backbone.fingerprint())
    users = [u for u in (users or run.split.train + run.split.test) if u.history]
    rows, means = [], []
    with group_model(run, backbone) as gm:
        gates_of = _gates_by_user(run, gm, users)
        index = {uid: i for i, uid in enumerate(gm.meta["users"])}
        for u in users:
            i = index.get(u.user_id)
            g = gates_of(u)  # (G,)
            means.append(g)
            rows.append(
                {
                    "user": u.user_id,
                    "split": "train" if i is not None else "test",
                    "top": int(g.argmax()),
                    "gates": [round(float(x), 4) for x in g],
                }
            )
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
    console.print(table)
    top = summary["user_top_gate"]
    out = {"users": rows, "share": share, "mean_gate": mean, "user_top_gate": round(top, 4)}
    log.info(f"users' mean largest gate {top:.3f} (uniform {1 / G:.3f}, hard groups 1)")
    (run.paths.eval).mkdir(parents=True, exist_ok=True)
    out["assignment"] = gm.meta["assignment"]
    out["planted"] = _planted_agreement(rows, users)
    (run.paths.eval / "groups.json").write_text(json.dumps(out, indent=2))
    return out


def _planted_agreement(rows, users) -> dict | None:
    """The adjusted Rand index between the groups shown (top expert) and the data's
    planted groups (items' `group` field), for train and for test users; None when the
    data carries no groups."""
    planted = planted_groups(users)
    if not planted:
        return None
    out = {}
    for split in ("train", "test"):
        assigned = {r["user"]: r["top"] for r in rows if r["split"] == split}
        agreement = group_agreement(assigned, planted)
        out[split] = agreement
        if agreement["ari"] is not None:
            log.info(
                f"{split} users' groups vs the planted ones: adjusted Rand index "
                f"{agreement['ari']:.3f} over {agreement['users']} users (1 = the same partition, "
                "0 = chance)"
            )
    return out


def _gates_by_user(run: Run, gm, users):
    """`gates(user)` -> (G,) as the groups view shows them (`groups_view`)."""
    if gm.by_user:

        def by_user(u):
            stored = gm.train_gates(u.user_id)
            return (
                stored if stored is not None else gm.history_gates(proper_pairs(run, u), u.history)
            )

        return by_user
    vectors = dict(
        zip([u.user_id for u in users], history_vectors(run, users, gm.backbone), strict=True)
    )
    index = {uid: i for i, uid in enumerate(gm.meta["users"])}

    def by_token(u):
        i = index.get(u.user_id)
        emb = gm.user_table[i : i + 1] if i is not None else gm.embed(vectors[u.user_id])
        per_layer = mean_gates(gm, emb, proper_pairs(run, u))
        return sum(per_layer.values()) / len(per_layer)  # mean over layers

    return by_token
