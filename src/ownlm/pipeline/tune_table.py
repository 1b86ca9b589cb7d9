"""What `ownlm tune` prints: the table it chose from, and whether the choice beats the
trivial references on the same validation items (`pipeline.tune` says how it is made)."""

from __future__ import annotations

from rich.table import Table

from ownlm.log import console
from ownlm.scores.metrics import LOWER_IS_BETTER
from ownlm.train.budget import budget_keys

OWN = {"accuracy": "own majority", "mae": "own mean", "rouge-1": "own central output"}
POPULATION = {"accuracy": "population majority", "mae": "population mean"}


def print_table(variant: str, info: dict) -> Table:
    """One row per (lr, epochs) tried, the chosen one in bold and marked; then the
    model before user training (epoch 0) and the references. Printed (results) and
    returned."""
    metric, lr_key, epochs_key = info["metric"], *budget_keys(variant)
    n = len(info["dev_users"])
    table = Table(
        title=f"ownlm tune {variant}: {lr_key} and {epochs_key} on {n} dev "
        f"user{'s' if n != 1 else ''} ({info['val_items']} validation items)",
        caption=f"chosen: {lr_key}={info[lr_key]:.3g} {epochs_key}={info[epochs_key]:g} "
        f"(configured {info['configured'][lr_key]:.3g}, {info['configured'][epochs_key]:g}); "
        "users: reached that epoch / averaged (past an early stop, the last validation; "
        "chosen among budgets at least half reached)",
    )
    for name in ("lr", "epochs", f"val {metric}", "val loss", "users", "chosen"):
        table.add_column(name, justify="right")
    for i, r in enumerate(info["table"]):
        chosen = i == info["chosen"]
        if not (r["reached"] or chosen):
            continue  # every dev user had stopped before: nothing measured there
        table.add_row(
            f"{r['lr']:.3g}",
            f"{r['epochs']:g}",
            f"{r[metric]:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['reached']}/{r['users']}",
            "✓" if chosen else "",
            style="bold" if chosen else None,
        )
    table.add_section()
    u = info["untrained"]
    table.add_row("no user training", "0", f"{u[metric]:.4f}", f"{u['val_loss']:.4f}", "", "")
    refs = info["references"]
    table.add_row(f"user's {OWN.get(metric, 'own')}", "–", f"{refs['user']:.4f}", "–", "", "")
    pop = POPULATION.get(metric, "population frequent words")
    table.add_row(pop, "–", f"{refs['population']:.4f}", "–", "", "")
    console.print(table)
    return table


def verdict(variant: str, info: dict) -> str | None:
    """A warning when the chosen budget does not beat the dev users' own reference on
    their validation items (None when it does): the user stage then learns less of a
    user than their own majority/mean says."""
    metric = info["metric"]
    value = info["table"][info["chosen"]][metric]
    ref = info["references"]["user"]
    better = value < ref if metric in LOWER_IS_BETTER else value > ref
    if better:
        return None
    return (
        f"tune {variant}: the best budget's validation {metric} {value:.4f} does not beat the "
        f"dev users' {OWN.get(metric, 'own reference')} ({ref:.4f}) on the same items: the "
        "user stage has not learned more of a user than their history's plain statistics. "
        "Try a wider grid (--set tune.lr_factors=[0.1,1,10] --set tune.max_epochs=20), "
        "more dev users (validation.dev_frac) or another backbone"
    )
