"""Stage 2's number of groups G chosen on held-out users (`proper.groups_choices`).

Criterion: for each candidate G, the whole of stage 2 (k-means start, `proper.em_rounds`
rounds of hard EM, the same `proper.epochs` of expert training) is fitted, and the G whose
kept round validates best on the dev users is chosen: their items scored with gates from
their *other* items (leave one out, `em.loo_validator`), which is how a user stage 2
never saw is routed. This is the quantity a group must improve, measured on users no
candidate trained on; a bigger G cannot win by fitting train users more closely, since
the dev users' routing must find their group from their own few items. Proxies (the
silhouette of the k-means start, one M-step's likelihood) are cheaper but judge the start,
not the experts EM ends with. Cost: len(choices) stage 2s; only the best candidate so far
is written to the store, so the stored router (router.json `groups`) is the chosen G, and
every later step (stage 3, the untrained routing, export, the control) reads G from it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.table import Table

from ownlm.data.planted import group_agreement, planted_groups
from ownlm.errors import ConfigError
from ownlm.log import console, get_logger
from ownlm.proper.em import fit_groups_em
from ownlm.proper.experts import proper_settings
from ownlm.scores.metrics import LOWER_IS_BETTER

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def best_value(record: dict | None) -> float:
    """The validated figure a candidate is judged by (its kept round's monitor), signed
    so that lower is better; inf without a record."""
    if record is None:
        return math.inf
    monitor = record["monitor"]
    value = record["records"][record["kept"]][monitor]
    return value if monitor == "val_loss" or monitor in LOWER_IS_BETTER else -value


def pick(candidates: list[dict]) -> dict:
    """The candidate of best `score` (lower is better); on a tie the smaller G (fewer
    experts explain the dev users as well)."""
    return min(candidates, key=lambda c: (c["score"], c["groups"]))


def choose_groups(run: Run, backbone, users, pairs, vset) -> dict:
    """Fit stage 2 for every G in `proper.groups_choices`, keep (store) the best on the dev
    users. Returns the chosen candidate's stats with "choice": the table of candidates."""
    choices = sorted(set(proper_settings(run).groups_choices))
    if vset is None:
        raise ConfigError(
            f"proper.groups_choices={choices} chooses G on dev users, and this run has none; "
            "hold some out, e.g. --set validation.dev_frac=0.2, or set proper.groups_choices=[]"
        )
    planted = planted_groups(users)
    candidates, kept = [], {}

    def save_if(record) -> bool:  # store a candidate only while it is the best so far
        return not candidates or best_value(record) < pick(candidates)["score"]

    for g in choices:  # ascending: on a tie the smaller G stays stored, as `pick` chooses
        log.info(f"[bold]stage 2[/] choosing G: candidate G={g} of {choices}")
        stats = fit_groups_em(run, backbone, users, pairs, vset, groups=g, save_if=save_if)
        candidates.append(candidate_row(g, stats, users, planted))
        kept[g] = stats
    chosen = pick(candidates)["groups"]
    table = {"chosen": chosen, "criterion": "dev users' validation (leave one out)"}
    table["candidates"] = candidates
    print_choice(table)
    log.info(f"stage 2: chose G={chosen} of {choices} on the dev users")
    return {**kept[chosen], "choice": table}


def candidate_row(g: int, stats: dict, users, planted) -> dict:
    """One candidate: G, its kept validation (monitor, value, round), its train users'
    agreement with planted groups when the data has them."""
    record = stats["validation"]
    kept = record["records"][record["kept"]] if record else {}
    ari = None
    if planted:
        assigned = {u.user_id: a for u, a in zip(users, stats["assignment"], strict=True)}
        ari = group_agreement(assigned, planted)["ari"]
    return {
        "groups": g,
        "monitor": record["monitor"] if record else None,
        "value": kept.get(record["monitor"]) if record else None,
        "val_loss": kept.get("val_loss"),
        "kept_epoch": kept.get("epoch"),
        "score": best_value(record),
        "train_ari": None if ari is None else round(ari, 4),
        "users": stats["users"],
    }


def print_choice(table: dict) -> Table:
    """The candidates, the chosen G in bold. Printed on the console (results), returned."""
    out = Table()
    for name in ("G", "dev val loss", "dev monitor", "kept epoch", "train ARI", "users/group"):
        out.add_column(name, justify="right")
    for c in table["candidates"]:
        out.add_row(
            str(c["groups"]),
            _num(c["val_loss"]),
            f"{c['monitor']} {_num(c['value'])}",
            "–" if c["kept_epoch"] is None else f"{c['kept_epoch']:g}",
            _num(c["train_ari"]),
            " ".join(f"{x:.2f}" for x in c["users"]),
            style="bold" if c["groups"] == table["chosen"] else None,
        )
    console.print("stage 2: number of groups chosen on dev users", markup=False, highlight=False)
    console.print(out)
    return out


def _num(x) -> str:
    return "–" if x is None else f"{x:.4f}"
