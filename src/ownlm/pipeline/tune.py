"""User-stage budgets chosen on held-out users: `ownlm tune` (#12, item 2).

A user has too few items to validate alone, so the user stage's learning rate and
number of epochs are chosen on the dev users (`Run.split.dev`, held out of stages 1-2):

- Each dev user's history is split in history order: the last `tune.val_frac` of it
  (at least 1 item, at most `validation.max_items`) validates, the rest trains; dev
  users with fewer than `tune.min_items` items are left out. Their retrieval index and
  profile are built from the train part only, so a validation prompt is the prompt a
  query would get from a user with that history.
- Every learning rate of the grid (`tune.lr_factors` times the configured one) trains
  one user model per dev user exactly as the user stage would (`fit_user`: the same
  seed, initialisation and batches) for up to `tune.max_epochs`, validated before
  training and after each epoch (`loop.EarlyStopping`; `validation.patience` and
  `validation.monitor`). `loop.fit` validates at the very step where training k epochs
  ends, so one training per (user, lr) gives every budget up to its stop: nothing is
  retrained per epoch count. A user whose training stopped early counts with their
  last validation at the longer budgets; a budget fewer than half the dev users
  reached is shown, not chosen.
- Each (lr, epochs) scores the task's primary metric (`scores.metrics.PRIMARY`, labels
  picked by the run's `decode`), each dev user's own on their validation items,
  averaged over the dev users; the best wins
  (ties: the lower mean validation loss, then fewer epochs, then the lr nearest the
  configured). It is written into run.json ("tuned", per variant, with its table and
  the base it was chosen on), where every user stage reads it (`train.budget`).

The table shows beside the grid the model before any user training (epoch 0) and, on
the same validation items, the dev users' own majority/mean and the population's: the
user stage earns its cost only where it beats them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ownlm.adapters.lora import detach
from ownlm.backbone.decode import decode_rule
from ownlm.data.records import Item, User
from ownlm.errors import ConfigError
from ownlm.log import get_logger, progress
from ownlm.oppu.model import prompt_settings
from ownlm.pipeline.tune_table import print_table, verdict
from ownlm.retrieval.prompts import personal_prompt, user_context
from ownlm.scores.metrics import LOWER_IS_BETTER, PRIMARY, compute_metrics, scale
from ownlm.scores.references import population_majority, user_majority
from ownlm.train.budget import Budget, budget_keys, configured
from ownlm.train.loop import EarlyStopping
from ownlm.train.validation import ValidationSet, pair_validator
from ownlm.variants import names
from ownlm.variants import variant as variant_info

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
TUNABLE = names(tunable=True)


@dataclass
class DevUser:
    """A dev user as tuning sees them: `user` holds the train part of their history
    (no queries), `val` the items that validate it."""

    user: User
    val: list[Item]


def tunable_dev_users(run: Run) -> list[User]:
    """The dev users with at least `tune.min_items` history items, in split order."""
    return [u for u in run.split.dev if len(u.history) >= run.cfg.tune.min_items]


def dev_split(run: Run) -> list[DevUser]:
    """The dev users tuned on, each split into train and validation items."""
    t, cap = run.cfg.tune, run.cfg.validation.max_items
    users = tunable_dev_users(run)[: t.max_users or None]
    out = []
    for u in users:
        n_val = min(max(1, round(len(u.history) * t.val_frac)), len(u.history) - 1, cap)
        train = dataclasses.replace(u, history=u.history[:-n_val], queries=[])
        out.append(DevUser(train, u.history[-n_val:]))
    if not out:
        raise ConfigError(
            f"no dev user with at least {t.min_items} history items to tune on ({len(run.split.dev)} "
            f"dev users, validation.dev_frac={run.cfg.validation.dev_frac}): train a run with "
            "dev users (--set validation.dev_frac=0.15 --set name=...) or lower tune.min_items"
        )
    return out


def grid(run: Run, variant: str) -> tuple[list[float], int]:
    """The learning rates and the longest budget (epochs) tried."""
    base, t = configured(run, variant), run.cfg.tune
    lrs = sorted({base.lr * f for f in t.lr_factors})
    return lrs, t.max_epochs or max(4, math.ceil(2 * base.epochs))


def dev_validation_set(run: Run, dev: DevUser, variant: str, population: str) -> ValidationSet:
    """The dev user's validation items as the variant's prompts (retrieval and profile
    from the train part), with their own majority/mean's score as the reference."""
    task, metric = run.task, PRIMARY[run.task.kind]
    proper = variant_info(variant).is_proper
    if proper:  # PROPER users read OPPU's prompts
        k, use_profile = run.cfg.retrieval_k, run.cfg.profile
    else:
        k, use_profile = prompt_settings(run, variant)
    ctx = user_context(task, dev.user)
    pairs = []
    for item in dev.val:
        task_input, target = task.item_pair(item)
        prompt = personal_prompt(task, ctx, task_input, k, use_profile, task.item_text(item))
        pairs.append((prompt, target, 0) if proper else (prompt, target))
    outputs = [it.fields.get(task.output_field, "") for it in dev.user.history]
    own = user_majority(outputs, task.kind, task.labels, fallback=population)
    decode = decode_rule(run.cfg.decode, task)  # labels picked as the evaluation picks them
    return ValidationSet(pairs, metric, _score(run, own, pairs), len(pairs), 1, decode)


def _score(run: Run, prediction: str, pairs) -> float:
    """The primary metric of answering `prediction` to every pair."""
    task, lo, hi = run.task, *scale(run.task)
    golds = [p[1] for p in pairs]
    return compute_metrics(task.kind, [prediction] * len(golds), golds, task.labels, lo, hi)[
        PRIMARY[task.kind]
    ]


# -- one training per (dev user, lr) ----------------------------------------------------------
def oppu_curves(run: Run, variant, devs, vsets, lrs, max_epochs) -> tuple[dict, str]:
    """{(dev index, lr): EarlyStopping records} of OPPU's user LoRA, and the base's
    fingerprint."""
    from ownlm.oppu.sequential import fit_user

    backbone = run.base()
    curves, metric = {}, PRIMARY[run.task.kind]
    for i, lr in progress(_jobs(devs, lrs), desc=f"tune {variant}", unit="run"):
        stoppers: list = []
        watch = _watcher(run, backbone, vsets[i], metric, stoppers)
        budget = Budget(lr, max_epochs, "search", (lr, max_epochs))
        model, _ = fit_user(run, backbone, devs[i].user, variant, budget=budget, watch=watch)
        detach(backbone, model)
        curves[i, lr] = stoppers[0].records
    return curves, backbone.fingerprint()


def _watcher(run: Run, backbone, vset, metric: str, stoppers: list):
    """`fit_user`'s `watch`: an EarlyStopping validating the freshly injected model on
    `vset`, also put in `stoppers` for its records."""

    def watch(model):
        stoppers.append(_stopper(run, pair_validator(backbone, model, run.task, vset), metric))
        return stoppers[-1]

    return watch


def _stopper(run: Run, validate, metric: str) -> EarlyStopping:
    """Early stopping per (dev user, lr) as the stages have it: `validation.patience`,
    watching the validation loss or (`validation.monitor=metric`) the task's metric."""
    v = run.cfg.validation
    monitor = metric if v.monitor == "metric" else "val_loss"
    mode = "min" if monitor == "val_loss" or monitor in LOWER_IS_BETTER else "max"
    return EarlyStopping(validate, patience=v.patience, monitor=monitor, mode=mode)


def proper_curves(run: Run, variant, devs, vsets, lrs, max_epochs) -> tuple[dict, str]:
    """`oppu_curves` for a PROPER router: the user's residual LoRA and routing on the
    frozen stage-2 groups, at each lr (`proper.router_lr` stays as configured)."""
    from ownlm.proper import group_model, groups_fingerprint, history_vectors
    from ownlm.proper.user_stage import fit_proper_user

    backbone = run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())  # refuses a run without stage 2
    vectors = history_vectors(run, [d.user for d in devs], backbone)
    curves, metric = {}, PRIMARY[run.task.kind]
    with group_model(run, backbone) as gm:
        for i, lr in progress(_jobs(devs, lrs), desc=f"tune {variant}", unit="run"):
            gm.reset()
            validate = pair_validator(backbone, backbone.model, run.task, vsets[i])
            stopper = _stopper(run, validate, metric)
            budget = Budget(lr, max_epochs, "search", (lr, max_epochs))
            router = variant_info(variant).router
            fit_proper_user(run, gm, devs[i].user, vectors[i], router, budget, stopper)
            curves[i, lr] = stopper.records
    return curves, fp


def _jobs(devs, lrs) -> list[tuple[int, float]]:
    return [(i, lr) for i in range(len(devs)) for lr in lrs]


# -- from curves to the table -----------------------------------------------------------------
def at_epochs(records: list[dict], n: int, batch_size: int, max_epochs: int) -> list[tuple]:
    """(record, reached) for k = 0..max_epochs epochs: the validation at the step where
    training k epochs ends (`batch_plan`: ceil(n * k / batch_size)); past an early stop,
    the last validation (reached False)."""
    by_step = {r["step"]: r for r in records}
    out = []
    for k in range(max_epochs + 1):
        record = by_step.get(math.ceil(n * k / batch_size))
        out.append((record, True) if record is not None else (records[-1], False))
    return out


def summarize(curves, devs, lrs, max_epochs, batch_size, metric) -> tuple[list[dict], dict]:
    """One row per (lr, epochs): the mean validation metric and loss over the dev users,
    how many, and how many reached that epoch; and the row of the untrained model."""
    points = {
        key: at_epochs(records, len(devs[key[0]].user.history), batch_size, max_epochs)
        for key, records in curves.items()
    }

    def row(lr, k, pts) -> dict:
        return {
            "lr": lr,
            "epochs": k,
            metric: _mean(r[metric] for r, _ in pts),
            "val_loss": _mean(r["val_loss"] for r, _ in pts),
            "users": len(pts),
            "reached": sum(ok for _, ok in pts),
        }

    rows = [
        row(lr, k, [points[i, lr][k] for i in range(len(devs))])
        for lr in lrs
        for k in range(1, max_epochs + 1)
    ]
    return rows, row(None, 0, [points[i, lrs[0]][0] for i in range(len(devs))])


def choose(rows: list[dict], metric: str, configured_lr: float) -> int:
    """The index of the best row among those that at least half the dev users' training
    reached (past a user's early stop the table carries their last validation on; it
    does not measure it): its metric first, then the lower validation loss, fewer
    epochs, the lr nearest the configured one."""
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    measured = [i for i, r in enumerate(rows) if 2 * r["reached"] >= r["users"]]

    def key(i):
        r = rows[i]
        near = abs(math.log(r["lr"] / configured_lr))
        return (round(sign * r[metric], 9), round(r["val_loss"], 9), r["epochs"], near)

    return min(measured or range(len(rows)), key=key)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# -- the command ------------------------------------------------------------------------------
def require_base(run: Run, config: str | None = None) -> None:
    """Refuse a run without its stage-1 base, naming the command that trains it."""
    if not (run.base_dir / "ownlm_base.json").exists():
        how = f"-c {config} " if config else ""
        raise ConfigError(
            f"{run.dir} has no trained base (stage 1) to tune the user stage on; train it "
            f"first: ownlm train {how}--stages population (with the same --set flags)"
        )


def open_for_tuning(config, overrides: list[str]):
    """The run `config` names, as it was trained (`Run.reopen`: a training key given
    with another value, or changed data, is refused; tune.* keys apply), once it has
    its stage-1 base."""
    from ownlm.config import load_config
    from ownlm.run import Run

    require_base(Run(load_config(config, overrides), write=False), config)
    return Run.reopen(config, overrides)


def tune_settings(run: Run) -> dict:
    """What a tune depends on besides the base: a recorded tune with other settings is
    not reused by `train --tune`. The label decode joins them unless it is argmax: the
    metric the budget was chosen by depends on it."""
    decode = decode_rule(run.cfg.decode, run.task)
    tune = dataclasses.asdict(run.cfg.tune)
    return tune if decode == "argmax" else {**tune, "decode": decode}


def tune_run(run: Run, variants: list[str], reuse: bool = False, config: str | None = None) -> dict:
    """Tune each of `variants`' user stage on the run's dev users, record the choice in
    run.json and print its table; {variant: record}. `reuse` (train --tune) keeps a
    recorded tune of the same base and settings instead of searching again."""
    unknown = [v for v in variants if v not in TUNABLE]
    if unknown:
        raise ConfigError(f"cannot tune variant(s) {unknown}; choose from {', '.join(TUNABLE)}")
    require_base(run, config)
    out = {variant: tune_variant(run, variant, reuse) for variant in variants}
    if "oppu" in out:
        out["update"] = update_tune(run, out["oppu"], reuse)
    return out


def update_tune(run: Run, chosen: dict, reuse: bool) -> dict | None:
    """`ownlm update`'s epochs chosen on the dev users for the OPPU budget `chosen`
    (`pipeline.tune_update`); a recorded choice for the same base, settings and user
    budget is kept when `reuse`."""
    from ownlm.pipeline.tune_update import UPDATE, tune_update

    lr_key, epochs_key = budget_keys("oppu")
    budget = Budget(
        chosen[lr_key], chosen[epochs_key], "tuned", (chosen[lr_key], chosen[epochs_key])
    )
    old = ((run.recorded() or {}).get("tuned") or {}).get(UPDATE)
    same = (
        old
        and old.get("settings") == tune_settings(run)
        and old.get("user") == [budget.lr, budget.epochs]
    )
    if reuse and same and old.get("fingerprint") == chosen["fingerprint"]:
        return old
    population = population_majority(_train_outputs(run), run.task.kind, run.task.labels)

    def validation_set(user, items):
        return dev_validation_set(run, DevUser(user, items), "oppu", population)

    return tune_update(run, budget, validation_set, {"settings": tune_settings(run)})


def tune_variant(run: Run, variant: str, reuse: bool = False) -> dict:
    """Search, choose, record and print the budget of one variant's user stage."""
    old = ((run.recorded() or {}).get("tuned") or {}).get(variant)
    if reuse and old and old.get("settings") == tune_settings(run):
        fp = _fingerprint(run, variant)
        if old.get("fingerprint") == fp:
            log.info(f"tune {variant}: kept the budget tuned on this base with these settings")
            print_table(variant, old)
            return old
    start = time.perf_counter()
    devs, metric = dev_split(run), PRIMARY[run.task.kind]
    population = population_majority(_train_outputs(run), run.task.kind, run.task.labels)
    vsets = [dev_validation_set(run, d, variant, population) for d in devs]
    lrs, max_epochs = grid(run, variant)
    proper = variant_info(variant).is_proper
    search = proper_curves if proper else oppu_curves
    curves, fp = search(run, variant, devs, vsets, lrs, max_epochs)
    batch_size = run.cfg.proper.batch_size if proper else run.cfg.user.batch_size
    rows, untrained = summarize(curves, devs, lrs, max_epochs, batch_size, metric)
    best = choose(rows, metric, configured(run, variant).lr)
    info = _record(run, variant, devs, vsets, rows, untrained, best, fp, population)
    info["seconds"] = round(time.perf_counter() - start, 1)
    message = verdict(variant, info)
    info["warning"] = message  # `ownlm eval` repeats it under its table
    run.record_tuned(variant, info)
    print_table(variant, info)
    if message:
        log.warning(f"[bold yellow]warning[/] {message}")
    return info


def _record(run: Run, variant, devs, vsets, rows, untrained, best, fp, population) -> dict:
    """The run.json entry of a tune: the choice under its config keys, and its table."""
    lr_key, epochs_key = budget_keys(variant)
    base = configured(run, variant)
    return {
        lr_key: rows[best]["lr"],
        epochs_key: float(rows[best]["epochs"]),
        "configured": {lr_key: base.lr, epochs_key: base.epochs},
        "metric": PRIMARY[run.task.kind],
        "fingerprint": fp,
        "settings": tune_settings(run),
        "dev_users": [d.user.user_id for d in devs],
        "val_items": sum(len(d.val) for d in devs),
        "table": rows,
        "chosen": best,
        "untrained": untrained,
        "references": {
            "user": _mean(v.reference for v in vsets),
            "population": _mean(_score(run, population, v.pairs) for v in vsets),
        },
    }


def _fingerprint(run: Run, variant: str) -> str:
    """The base the variant's users stand on, without loading it."""
    if variant_info(variant).is_proper:
        from ownlm.proper import groups_fingerprint

        return groups_fingerprint(run, run.base_fingerprint())
    return run.base_fingerprint()


def _train_outputs(run: Run) -> list[str]:
    field = run.task.output_field
    return [it.fields.get(field, "") for u in run.split.train for it in u.history]
