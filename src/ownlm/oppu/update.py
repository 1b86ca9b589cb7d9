"""Incremental updates (issue #11, item 1): a user's stored OPPU adapter continued on
their new history items, without retraining it from scratch (OPPU Sec. 4: the
adapter "adapts to user behavior shifts").

    ownlm update --run-dir R --user U --history new.jsonl [--lr X] [--epochs N]

Where the new items live: the run reads its users from its data file, which ownlm never
edits, so the items are appended to `R/updates/<user>.jsonl` (`ownlm.data.updates`).
`Run.dataset` adds them after the user's history, so every reader of the run (eval, serve, export,
a resumed `ownlm train`) sees the updated history: the retrieval index and profile
are rebuilt over all of it, and the adapter's recorded `history_sha256` matches it.
The run's data record (run.json) stays that of the data file: an update is not a
"data changed" refusal.

Training: the stored adapter is loaded trainable and fitted by the one loop
(`train_pairs`) on the new items only, each prompted as the user stage prompts it
(retrieval over every item before it, old ones included, and the profile of the whole
updated history). Budget (`update_budget`): `update.lr` and `update.epochs` over the new
items, each empty by default: the user stage's lr and epochs (tuned on the dev users
when they were), unless given on the command line. Issue #24 measured the former
default (1 epoch) moving the adapter not at all (training loss 1.456 -> 1.455). The manifest keeps the
budget the adapter was first trained with (so a resumed `ownlm train` does not retrain it) and records the update: new items, lr, epochs, when,
and `updated_from`, the previous weights' sha256.

Concurrency: the whole update holds the user's lock (`ownlm.store.guard.user_lock`), so
a second update of the same user is refused at once, naming the first's pid, and a
`forget` of them waits for it and then removes all of it; an update that finds the user
forgotten writes nothing.

Crash safety: the items go to a journal first (`updates/pending/<user>.jsonl`), then the
adapter is swapped in, then the items are appended to the history file and the journal
removed. The next command that writes the run (`Run.recover`) finishes a journal whose
adapter landed and drops one whose adapter did not, so the stored history and the
adapter always agree; running the same `ownlm update` again then says it had landed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.data.records import User
from ownlm.data.updates import read_items, updates_path, write_pending, write_updates
from ownlm.errors import DataError, NotFoundError, StoreError
from ownlm.store import Manifest
from ownlm.store.guard import user_lock

if TYPE_CHECKING:
    from ownlm.run import Run

WEIGHTS = "adapter_model.safetensors"


@dataclass
class Updated:
    user: str
    new_items: int
    items: int
    path: Path
    manifest: Manifest
    resumed: bool = False  # only the history file was written (an update cut short)

    def summary(self) -> str:
        if self.resumed:
            return (
                f"user {self.user}: the adapter was already updated on these {self.new_items} "
                f"items (a cut-short update); wrote {self.path}"
            )
        u = self.manifest.extra["update"]
        return (
            f"updated user {self.user}'s adapter on {self.new_items} new items (lr {u['lr']:.3g}, "
            f"{u['epochs']:g} epochs; history now {self.items} items, in {self.path}); "
            f"loss {self.manifest.extra['loss_first']:.3f} -> {self.manifest.extra['loss_last']:.3f}"
        )


def _target(run: Run, user_id: str):
    """(user, store, base fingerprint) for an update; errors name the fix."""
    user = next((u for u in run.dataset.users if u.user_id == user_id), None)
    if user is None or run.current_history(user_id) is None:  # absent, or forgotten since
        raise NotFoundError(
            f"user {user_id!r} is not in the data of run {run.dir}; `ownlm token users "
            f"--run-dir {run.dir}` lists its users"
        )
    return user, run.store("oppu"), run.base_fingerprint()


def update_user(run: Run, user_id: str, history: Path, lr: float | None = None, epochs=None):
    """Continue `user_id`'s OPPU adapter on the items of `history` (see module doc).
    `lr`, `epochs`: default the run's `update.lr` (else the user stage's) and `update.epochs`."""
    with user_lock(run.dir, user_id, "update"):
        if run.recover():  # a cut-short update or swap, finished or rolled back first
            run.refresh()
        return _update(run, user_id, history, lr, epochs)


def update_budget(run: Run, fp: str, lr: float | None = None, epochs=None) -> tuple[float, float]:
    """The (lr, epochs) an update of an adapter on the base `fp` trains with: those given,
    else `update.lr` and `update.epochs`, else the user stage's lr (tuned on the dev users
    when `ownlm tune` or `ownlm train` chose it: `train.budget.user_budget`) and the
    epochs a simulated update on the dev users chose for it (`pipeline.tune_update`),
    else the user stage's epochs: the new items weigh as the whole history did at first."""
    from ownlm.train.budget import user_budget

    lr = lr if lr is not None else run.cfg.update.lr
    epochs = epochs if epochs is not None else run.cfg.update.epochs
    if lr is None or epochs is None:
        stage = user_budget(run, "oppu", fp)
        tuned = ((run.recorded() or {}).get("tuned") or {}).get("update") or {}
        if tuned.get("fingerprint") == fp and tuned.get("user") == [stage.lr, stage.epochs]:
            epochs = epochs or tuned["epochs"]  # chosen by a simulated update on dev users
        lr, epochs = lr or stage.lr, epochs or stage.epochs
    return lr, epochs


def _update(run: Run, user_id: str, history: Path, lr, epochs) -> Updated:
    lr = lr if lr is not None else run.cfg.update.lr
    epochs = epochs if epochs is not None else run.cfg.update.epochs
    user, store, fp = _target(run, user_id)
    items = read_items(Path(history), run.task, user_id)
    if not items:
        raise DataError(f"{history} holds no history item; give one JSON object per line")
    if _landed(store, user, items, fp):  # a cut-short update of these items, finished since
        path = updates_path(run.dir, user_id)
        return Updated(
            user_id, len(items), len(user.history), path, store.manifest(user.name), True
        )
    items = read_items(Path(history), run.task, user_id, {it.id for it in user.history})
    if (epochs is not None and epochs <= 0) or (lr is not None and lr <= 0):
        raise DataError(f"--lr and --epochs must be > 0, got lr={lr}, epochs={epochs}")
    updated = replace(user, history=user.history + items)
    reason = store.stale_reason(user.name, fp, user.history_digest())
    if reason is not None:
        raise StoreError(
            f"user {user_id}'s OPPU adapter cannot be updated ({reason}); train it first: "
            f"`ownlm train -c {run.dir / 'config.yaml'} --stages users --variants oppu`"
        )
    journal = write_pending(run.dir, user_id, items)  # a kill from here on: `Run.recover`
    manifest = _fit_and_save(run, store, updated, len(items), fp, lr, epochs)
    path = write_updates(run.dir, user_id, items)
    journal.unlink()
    return Updated(user_id, len(items), len(updated.history), path, manifest)


def _landed(store, user: User, items, fp: str) -> bool:
    """These items are the last of `user`'s history and their adapter stands for it."""
    ids = [it.id for it in user.history[len(user.history) - len(items) :]]
    return ids == [it.id for it in items] and store.current(user.name, fp, user.history_digest())


def continue_user(
    run: Run, backbone, model, user: User, n_new: int, lr: float, epochs: float, ctx=None
) -> list[float]:
    """Train `model` (the user's trainable OPPU adapter on `backbone`) further on the
    last `n_new` items of `user`'s history, each prompted over every item before it and
    the profile of the whole history (`ctx`: its `user_context`, built when None).
    Returns the step losses. In memory: `ownlm update` calls it on the stored adapter,
    the behaviour-shift study (`ownlm.studies.shift`) on one it has just trained."""
    from ownlm.oppu.model import user_pairs
    from ownlm.train.loop import train_pairs
    from ownlm.train.per_user import user_seed

    s = replace(run.cfg.user, lr=lr, epochs=epochs)
    pairs = user_pairs(run, user, "oppu", ctx)[-n_new:]  # prompts over the whole updated history
    seed = user_seed(run.cfg.seed, user.user_id) + len(user.history)
    return train_pairs(backbone, model, pairs, s, seed)


def _fit_and_save(run: Run, store, user: User, n_new: int, fp: str, lr, epochs) -> Manifest:
    from ownlm.adapters.lora import detach
    from ownlm.adapters.methods import load_trainable

    prev = store.manifest(user.name)
    lr, epochs = update_budget(run, fp, lr, epochs)
    backbone = run.base()
    path = store.verify(user.name, fp)
    model = load_trainable(backbone, path)  # LoRA, IA3 or prompt tuning (`user.method`)
    try:
        losses = continue_user(run, backbone, model, user, n_new, lr, epochs)
        update = {
            "new_items": n_new,
            "lr": lr,
            "epochs": epochs,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "updated_from": prev.sha256.get(WEIGHTS),
        }
        extra = {
            **prev.extra,
            "items": len(user.history),
            "history_sha256": user.history_digest(),
            "loss_first": losses[0],
            "loss_last": losses[-1],
            "update": update,
            "updates": [*prev.extra.get("updates", []), update],
        }
        manifest = Manifest(user.name, prev.stage, prev.task, fp, extra=extra)
        store.save(user.name, model.save_pretrained, manifest)
    finally:
        detach(backbone, model)
    return manifest
