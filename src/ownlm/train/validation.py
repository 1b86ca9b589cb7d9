"""Validation inside the stages that learn (#12): stage 1, stage 2 and the tiny backbone's
pre-training are judged, epoch by epoch, on dev users they never train on.

Dev users are held out by user (`Run.split`, `validation.dev_frac`): a stage exists to
serve users it never saw, so it is judged on users it never saw. A stage's validation
set is the same kind of pairs it trains on, built from the dev users' history items (a
seeded sample of at most `validation.max_items`). Each validation measures:

- `val_loss`: the LM loss (the encoder's cross-entropy) on every validation pair;
- the task's primary metric (accuracy, mae or rouge-1) of `backbone.predict` on the
  pairs' prompts, labels picked by the run's `decode` as the evaluation picks them
  (generation on at most GENERATED items: decoding is the slow part);
- `reference`: the population majority/mean (`scores.references`) on the same scored
  items, computed once: the figure a stage that learned the task must beat.

`loop.fit` runs the validations (`EarlyStopping`), stops on the patience rule and keeps
the best state. `finish` prints the stage's table, says which epoch it kept, warns
once when the kept state loses to the reference (the guard), and records it all in
run.json. Without dev users the stages train their fixed epochs, and say so once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.table import Table

from ownlm.backbone.base import ANSWER_SEP
from ownlm.backbone.decode import decode_rule
from ownlm.log import console, get_logger
from ownlm.scores.metrics import LOWER_IS_BETTER, PRIMARY, compute_metrics, scale
from ownlm.scores.references import population_majority
from ownlm.train.loop import EarlyStopping

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
GENERATED = 40  # generated answers scored per validation (label tasks score every item)
_SAID_NONE: set[str] = set()  # runs already told that they have no dev users


@dataclass
class ValidationSet:
    """What a stage is validated on: `pairs` as the stage trains on them (prompt,
    target, ...); the first `scored` are also predicted and scored with `metric`, on
    which the population reference scores `reference`."""

    pairs: list[tuple]
    metric: str
    reference: float
    scored: int
    users: int
    decode: str = "argmax"  # how labels are picked (`backbone.decode`), as evaluation does


# -- the dev users and their items ----------------------------------------------------------
def dev_users(run: Run) -> list:
    """The run's dev users with history. None (said once per run): the stages train
    their fixed epochs, unvalidated."""
    users = [u for u in run.split.dev if u.history]
    if not users and str(run.dir) not in _SAID_NONE:
        _SAID_NONE.add(str(run.dir))
        v, n = run.cfg.validation, len(run.split.train)
        why = (
            "validation.dev_frac=0"
            if v.dev_frac == 0
            else f"{n} train users are too few for validation.dev_frac={v.dev_frac} to hold one out"
        )
        log.info(
            f"no dev users ({why}): stages 1, 2 and the pre-training train their fixed "
            "epochs without validation or early stopping"
        )
    return users


def sample(items: list, max_items: int, seed: int) -> list:
    """At most `max_items` of `items`, a seeded sample kept in their order."""
    if len(items) <= max_items:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), max_items))
    return [items[i] for i in keep]


def dev_corpus(run: Run, users) -> list[str]:
    """The dev users' items as pre-training text, written as `Run.corpus` writes the
    train users' (prompt, separator, answer), at most `validation.max_items` of them."""
    texts = []
    for user in users:
        for item in user.history:
            prompt, answer = run.task.item_pair(item)
            texts.append(f"{prompt}{ANSWER_SEP}{answer}")
    return sample(texts, run.cfg.validation.max_items, run.cfg.seed)


def validation_set(run: Run, pairs: list[tuple]) -> ValidationSet | None:
    """A stage's validation set from its dev `pairs` (None when there are none), with
    the population reference's score on the items that will be scored."""
    if not pairs:
        return None
    task = run.task
    pairs = sample(pairs, run.cfg.validation.max_items, run.cfg.seed)
    scored = len(pairs) if task.labels else min(len(pairs), GENERATED)
    metric = PRIMARY[task.kind]
    train_outputs = [
        it.fields.get(task.output_field, "") for u in run.split.train for it in u.history
    ]
    majority = population_majority(train_outputs, task.kind, task.labels)
    golds = [p[1] for p in pairs[:scored]]
    lo, hi = scale(task)
    ref = compute_metrics(task.kind, [majority] * scored, golds, task.labels, lo, hi)[metric]
    users = len(run.split.dev)
    return ValidationSet(pairs, metric, ref, scored, users, decode_rule(run.cfg.decode, task))


# -- validate() and early stopping ------------------------------------------------------------
def pair_validator(backbone, model, task, vset: ValidationSet, wrap=None, batch_size: int = 16):
    """`validate()` for `loop.fit`: {"val_loss", <metric>, "reference", "seconds"} of
    `model` on `vset`. `wrap(pairs)` is entered around each batch (stage 2 routes the
    batch's dev users with it); the default wraps nothing."""
    wrap = wrap or (lambda pairs: nullcontext())
    lo, hi = scale(task)

    def validate() -> dict:
        start = time.perf_counter()
        total, preds = 0.0, []
        for i in range(0, len(vset.pairs), batch_size):
            chunk = vset.pairs[i : i + batch_size]
            with wrap(chunk):
                loss = backbone.loss(model, [c[0] for c in chunk], [c[1] for c in chunk])
            total += loss.item() * len(chunk)
            chunk = chunk[: max(0, vset.scored - i)]
            if chunk:
                with wrap(chunk):
                    prompts = [c[0] for c in chunk]
                    preds += backbone.predict(model, task, prompts, len(chunk), vset.decode)
        golds = [c[1] for c in vset.pairs[: vset.scored]]
        value = compute_metrics(task.kind, preds, golds, task.labels, lo, hi)[vset.metric]
        return {
            "val_loss": total / len(vset.pairs),
            vset.metric: value,
            "reference": vset.reference,
            "seconds": round(time.perf_counter() - start, 3),
        }

    return validate


def early_stopping(
    run: Run, vset: ValidationSet, validate: Callable[[], dict], watch: str | None = None
) -> EarlyStopping:
    """`validation.monitor` (or `watch`, a stage's own choice) as `loop.EarlyStopping`
    reads it: "loss" watches val_loss (lower is better), "metric" the task's metric on
    `vset` in its own direction."""
    v = run.cfg.validation
    monitor = vset.metric if (watch or v.monitor) == "metric" else "val_loss"
    mode = "min" if monitor == "val_loss" or monitor in LOWER_IS_BETTER else "max"
    return EarlyStopping(validate, patience=v.patience, monitor=monitor, mode=mode)


def settings_record(run: Run, vset: ValidationSet | None) -> dict | None:
    """What a stage's validation depends on, for its resume digest (None: no validation)."""
    if vset is None:
        return None
    v = run.cfg.validation
    record = {"patience": v.patience, "monitor": v.monitor, "pairs": vset.pairs}
    if v.monitor == "metric" and vset.decode != "argmax":  # the metric, so the epoch kept
        record["decode"] = vset.decode
    return record


# -- after a stage: the record, the table, the guard ------------------------------------------
def summary(stopper: EarlyStopping | None, vset: ValidationSet | None) -> dict | None:
    """The stage's validation as run.json and the manifest keep it (None: unvalidated)."""
    if stopper is None or vset is None or stopper.best_record is None:
        return None
    return {
        "monitor": stopper.monitor,
        "metric": vset.metric,
        "reference": vset.reference,
        "items": len(vset.pairs),
        "scored": vset.scored,
        "dev_users": vset.users,
        "kept_epoch": stopper.best_record["epoch"],
        "kept": stopper.best,
        "stopped_early": stopper.stopped_early,
        "seconds": round(sum(r.get("seconds", 0.0) for r in stopper.records), 2),
        "records": stopper.records,
    }


def guard(title: str, record: dict | None, hints: dict[str, str]) -> str | None:
    """One warning when the kept state's validation metric loses to the population
    reference on the same items (None when it does not, or nothing was validated).
    `hints`: what to try, as `--set` flags ({"epochs": "--set population.epochs=4"})."""
    if not record or record["metric"] not in record["records"][0]:
        return None
    metric, ref = record["metric"], record["reference"]
    value = record["records"][record["kept"]][metric]
    worse = value > ref if metric in LOWER_IS_BETTER else value < ref
    if not worse:
        return None
    tries = ", ".join(f"{what} ({flag})" for what, flag in hints.items())
    return (
        f"{title}: validation {metric} {value:.4f} is worse than the population reference "
        f"{ref:.4f} on the same {record['scored']} dev items (epoch {record['kept_epoch']:g} "
        f"kept): the stage has not learned the task. Try {tries}"
    )


def tuning_hints(section: str, epochs: float, lr: float) -> dict[str, str]:
    """The guard's advice for a stage configured under `section` (population, proper)."""
    return {
        "more epochs": f"--set {section}.epochs={epochs * 2:g}",
        "a higher learning rate": f"--set {section}.lr={lr * 4:g}",
        "another backbone": "--set backbone=...",
    }


def print_table(title: str, record: dict) -> Table:
    """Epoch by epoch: train loss, validation loss and, for a task stage, the metric and
    the reference; the kept row in bold. Printed on the console (results), returned."""
    metric = record.get("metric")
    columns = ["epoch", "train loss", "val loss"]
    if metric:
        columns += [f"val {metric}", "reference"]
    table = Table()
    for name in columns:
        table.add_column(name, justify="right")
    for i, r in enumerate(record["records"]):
        cells = [f"{r['epoch']:g}", _num(r.get("train_loss")), _num(r.get("val_loss"))]
        if metric:
            cells += [_num(r.get(metric)), _num(r.get("reference"))]
        table.add_row(*cells, style="bold" if i == record["kept"] else None)
    console.print(title, markup=False, highlight=False, soft_wrap=True)  # not padded, not wrapped
    console.print(table)
    return table


def _num(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def finish(
    run: Run, stage: str, title: str, record: dict | None, hints: dict[str, str]
) -> list[str]:
    """After a stage: its table and the epoch kept, the guard's warning, and both in the
    stage's run.json record (next to what `train.resume` keeps there). Returns the
    warnings."""
    warnings = []
    if record is not None:
        print_table(f"{title}: validation on {record['dev_users']} dev users", record)
        why = "stopped early" if record["stopped_early"] else "ran its epochs"
        log.info(
            f"{title}: kept epoch {record['kept_epoch']:g} ({why}; best {record['monitor']}); "
            f"validation took {record['seconds']:.1f} s"
        )
        warning = guard(title, record, hints)
        if warning:
            log.warning(f"[bold yellow]warning[/] {warning}")
            warnings.append(warning)
    kept = run.stage_record(stage) or {}
    run.record_stage(stage, {**kept, "validation": record, "warnings": warnings})
    return warnings
