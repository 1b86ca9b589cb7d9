"""A user's right to be forgotten: after `forget_user`, no file under the run names the
user or holds their history, and what their history trained is named together with the
command that retrains without them.

What a run keeps of a user, and what becomes of it:

  adapters*/users/<id>/     their adapter in every store (variant)     deleted
  .tmp-/.old-/.del-<id>-…   what a killed writer left of it            swept
  tokens.json               their API tokens                           revoked (stays mode 600)
  updates/<id>.jsonl        the history items `ownlm update` added      deleted
  scratch files             a killed writer's copy of run.json,         swept (any whose
                            tokens.json or their updates                writer is dead)
  adapters/router/          stage-2 id, learned embedding, history     taken out of it
                            vector (train users)
  eval/                     scores, predictions, groups view that      deleted: re-run
                            include them                               `ownlm eval`
  base/, adapters/population, adapters/groups/   weights a train user's   named, with the
                            history trained (stages 1 and 2)            retrain command

The data the run was trained from lives outside the run (its config's `data`); forget
never edits it, and says to remove the user there before retraining or evaluating.

Forget holds the user's lock (`ownlm.store.guard.user_lock`) throughout, waiting for a
command that writes them (an update, an import, a token being made, a user stage saving
them) to finish first; and it writes its one-way mark in run.json before it deletes
anything, so a command that reaches the user afterwards finds them forgotten and writes
nothing, and a forget cut short and run again still knows what the user was. Their
place in the run's split is taken out and nobody else's moves (`Run.split`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ownlm.errors import DataError, NotFoundError, StoreError
from ownlm.files import write_file
from ownlm.ownership.membership import (
    FORGOTTEN_ROLES,
    Membership,
    membership,
    record_rows,
    row_user,
    run_record,
)
from ownlm.ownership.mentions import names_user
from ownlm.paths import CONTROL_BASE, RunPaths, variant_of
from ownlm.proper.experts import ROUTER, forget_stage2_user
from ownlm.run import RECORD, forgotten_key, recorded_roles, recover
from ownlm.store import AdapterStore, TokenStore
from ownlm.store.guard import FORGET_WAIT, LOCKS, record_lock, user_lock


@dataclass
class Forgotten:
    user: str
    removed: list[str] = field(default_factory=list)  # what was deleted or rewritten
    trained_on: list[str] = field(default_factory=list)  # weights their history trained
    retrain: str = ""  # the command that retrains those without them
    notes: list[str] = field(default_factory=list)  # what the person must do besides
    remaining: list[str] = field(default_factory=list)  # files still naming them

    @property
    def stage2_train_user(self) -> bool:
        return any(t.startswith("stage 2") for t in self.trained_on)

    def report(self) -> list[tuple[str, str | None]]:
        """(line, rich style) to print: what was removed, what their history trained and
        how to retrain it, what is left to do."""
        lines = [(f"user {self.user}: removed {'; '.join(self.removed) or 'nothing'}", None)]
        if self.trained_on:
            lines.append(
                (f"user {self.user}'s history trained: {'; '.join(self.trained_on)}", "yellow")
            )
        if self.retrain:
            lines.append((f"to take that out, retrain without them: {self.retrain}", "yellow"))
        lines += [(n, "yellow") for n in self.notes]
        if self.remaining:
            lines.append(
                (
                    f"still naming user {self.user}: {', '.join(self.remaining)} (not written "
                    "by ownlm, or being written by a running process: stop it, remove these "
                    "by hand, or forget again)",
                    "bold red",
                )
            )
        return lines


def retrain_command(run_dir: Path) -> str:
    """`ownlm train` over every stage and variant the run holds: stage 1 always retrains,
    so every later stage and user adapter is trained again on the new base."""
    stage2 = AdapterStore(RunPaths(run_dir).store()).exists(ROUTER)
    stages = ["population", *(["groups"] * stage2), "users"]
    if (run_dir / CONTROL_BASE).is_dir():  # the control is trained on the train users too
        stages.insert(-1, "control")
    stages = ",".join(stages)
    variants = [variant_of(s) for s in RunPaths(run_dir).stores() if (s / "users").is_dir()]
    flag = f" --variants {','.join(variants)}" if variants else ""
    return f"ownlm train -c {run_dir / 'config.yaml'} --stages {stages}{flag}"


def _delete_adapters(run_dir: Path, user: str) -> tuple[list[str], list[str]]:
    """(what was removed, notes). A user folder that is a symbolic link (put there by
    hand) loses the link; what it points to is outside the store and is named instead."""
    removed, notes = [], []
    for store_dir in RunPaths(run_dir).stores():
        store = AdapterStore(store_dir)
        store.sweep()  # a killed writer's scratch copy of their adapter goes too
        path = store.path(f"user:{user}")
        link = os.readlink(path) if path.is_symlink() else None
        if store.delete(f"user:{user}"):
            rel = f"{store_dir.name}/users/{user}"
            if link is None:
                removed.append(f"{rel} ({variant_of(store_dir)} adapter)")
                continue
            removed.append(f"{rel} (a symbolic link to {link}: the link)")
            notes.append(
                f"{rel} was a symbolic link to {link}, outside ownlm's store: only the link "
                f"was removed; delete {link} yourself if it holds user {user}'s adapter"
            )
    return removed, notes


def _scrub_record(run_dir: Path, user: str, m: Membership) -> list[str]:
    """Take the user out of run.json under its lock: their row of the data record
    ([id, history digest, queries digest] per user, its sha256 re-sealed when it is the
    one `ownlm.run.record.data_record` computes) and their id from the recorded split (no one
    else's role moves). When the run knew them, also keep `forgotten_key(user)` (a
    one-way hash, not the id) and their role under it: the run leaves them out of its
    data from now on, so the record describes the data without them and `ownlm train`
    resumes, retraining only the stages they were part of, even before they are removed
    from the data file; and a forget cut short and run again still knows their role.
    Returns what it changed, in words ([] when nothing)."""
    with record_lock(run_dir, "forget"):
        record = run_record(run_dir)
        if not record:
            return []
        marked = _mark_forgotten(record, user, m) if (m.in_data or m.in_record) else False
        changed = []
        users = record_rows(record)
        keep = [row for row in users if row_user(row) != user]
        if len(keep) != len(users):
            data = record["data"]
            if data.get("sha256") == _data_sha256(data.get("task"), users):
                data["sha256"] = _data_sha256(data.get("task"), keep)
            data["users"] = keep
            changed.append("their row of the data record")
        roles = recorded_roles(record)
        if roles and any(user in ids for ids in roles.values()):
            record["split"] = {r: [u for u in ids if u != user] for r, ids in roles.items()}
            changed.append(f"their place in the split ({m.role} user; no one else's role moved)")
        if marked or changed:
            write_file(run_dir / RECORD, json.dumps(record, indent=1, ensure_ascii=False))
        return changed or (["a one-way mark that the run has forgotten them"] if marked else [])


def _mark_forgotten(record: dict, user: str, m: Membership) -> bool:
    key = forgotten_key(user)
    keys = [k for k in record.get("forgotten") or [] if isinstance(k, str)]
    roles = record.get(FORGOTTEN_ROLES)
    roles = roles if isinstance(roles, dict) else {}
    if key in keys and (m.role is None or roles.get(key) == m.role):
        return False
    record["forgotten"] = [*(k for k in keys if k != key), key]
    if m.role is not None:
        record[FORGOTTEN_ROLES] = {**roles, key: m.role}
    return True


def _data_sha256(task, users: list) -> str:
    """`ownlm.run.record.data_record`'s seal of a data record."""
    return hashlib.sha256(json.dumps([task, users], ensure_ascii=False).encode()).hexdigest()


def _drop_eval(run_dir: Path, user: str) -> bool:
    """Delete eval/ when any file there names the user: its tables, predictions and
    charts were computed together, with them (deleting is honest; a rewrite is not)."""
    ev = RunPaths(run_dir).eval
    if not ev.is_dir() or not any(names_user(f, user) for f in ev.rglob("*") if f.is_file()):
        return False
    trash = run_dir / f".del-eval-{uuid.uuid4().hex[:8]}"
    ev.rename(trash)  # readers see the old eval/ or none, never half of it
    shutil.rmtree(trash)
    return True


def _trained_on(run_dir: Path, m: Membership, stage2: bool) -> list[str]:
    if m.role == "dev" and not stage2:
        return [
            "the validation of stages 1 and 2 (a dev user: their history chose the epoch "
            "each stage kept, and the user stage's tuned budget)"
        ]
    if not (m.train or stage2):
        return []
    out = ["stage 1 (the population LoRA, adapters/population, merged into base/)"]
    if m.backbone == "tiny":
        out.append(
            "the tiny backbone and its tokenizer (pre-trained on the train users' text: "
            "base/, and a copy cached under .cache/ownlm/tiny-* where `ownlm train` ran; "
            "delete that cache)"
        )
    if stage2 or AdapterStore(RunPaths(run_dir).store()).exists(ROUTER):
        out.append(
            "stage 2 (the group experts and routers, adapters/groups and adapters/router: "
            "retrain stage 2 without them to take that out)"
        )
    if (run_dir / CONTROL_BASE).is_dir():
        out.append(
            f"the OPPU control ({CONTROL_BASE}/ and adapters-oppu-control/control: stage 2's "
            "pass without groups, on the train users' history)"
        )
    return out


def forget_user(run_dir: str | Path, user: str) -> Forgotten:
    """Delete or scrub everything `run_dir` stores of `user` (see the module docstring);
    NotFoundError when the run holds nothing of them and its data does not know them.
    Holds the user's lock throughout, waiting up to `FORGET_WAIT` seconds for a command
    that writes them to finish."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(f"run directory {run_dir} does not exist")
    with user_lock(run_dir, user, "forget", wait=FORGET_WAIT):
        return _forget(run_dir, user)


def _forget(run_dir: Path, user: str) -> Forgotten:
    m = membership(run_dir, user)
    swept = recover(run_dir)  # killed writers' scratch (it may hold the user's data)
    scrubbed = _scrub_record(run_dir, user, m)  # first: from now on every writer skips them
    removed, notes = _delete_adapters(run_dir, user)
    out = Forgotten(user, removed=removed)
    try:
        tokens = TokenStore(run_dir).revoke_user(user)
    except StoreError as e:  # tokens.json unreadable: the rest is still forgotten
        tokens = 0
        notes.append(
            f"their tokens could not be revoked: {e}; then forget again (meanwhile a server "
            "accepts no token of this run)"
        )
    if tokens:
        out.removed.append(f"tokens.json ({tokens} token{'s' * (tokens > 1)} revoked)")
    stage2 = forget_stage2_user(AdapterStore(RunPaths(run_dir).store()), user)
    if stage2:
        out.removed.append("adapters/router (their stage-2 id, embedding and history vector)")
    if scrubbed:
        out.removed.append(f"run.json ({'; '.join(scrubbed)})")
    if _drop_eval(run_dir, user):
        out.removed.append("eval/ (its scores and predictions included them)")
    if _drop_updates(run_dir, user):
        out.removed.append(f"updates/{user}.jsonl (the history items `ownlm update` added)")
    if swept:
        out.removed.append(f"{len(swept)} scratch file(s) of killed writers")
    out.remaining = sorted(str(p.relative_to(run_dir)) for p in mentions(run_dir, user))
    if not (out.removed or out.remaining or m.in_data or m.in_record or stage2):
        raise NotFoundError(not_known(run_dir, user, m))
    _advise(run_dir, user, m, stage2, out)
    out.notes += notes
    return out


def _drop_updates(run_dir: Path, user: str) -> bool:
    """Delete the user's updates file and an update's journal (`ownlm.data.updates`)."""
    from ownlm.data.updates import pending_path, updates_path

    try:
        paths = [updates_path(run_dir, user), pending_path(run_dir, user)]
    except DataError:  # no file can be named after an id that is not valid
        return False
    found = [p for p in paths if p.is_file()]
    for path in found:
        path.unlink()
    return bool(found)


def _advise(run_dir: Path, user: str, m: Membership, stage2: bool, out: Forgotten) -> None:
    out.trained_on = _trained_on(run_dir, m, stage2)
    if out.trained_on:
        out.retrain = retrain_command(run_dir)
        if m.in_data is not False and not m.in_record:
            out.retrain = f"remove user {user} from {m.data or 'the data'}, then {out.retrain}"
    elif not (m.in_data or m.in_record):
        why = m.why_unknown or (
            f"they are not in its data ({m.data}) and it has no record of the data it was "
            "trained on"
        )
        out.notes.append(
            f"cannot tell whether user {user}'s history trained stage 1: {why}. If it did, "
            f"take them out of the data, then {retrain_command(run_dir)}"
        )
    if m.in_data:
        out.notes.append(
            f"user {user} is still in the run's data ({m.data}), which ownlm does not edit: "
            "the run leaves them out from now on (run.json keeps a one-way hash of their "
            "id, not the id); remove them from the data file too"
        )
    if any(r.startswith("eval/") for r in out.removed):
        out.notes.append(
            f"re-run `ownlm eval -c {run_dir / 'config.yaml'}` for the other users' scores"
        )


def not_known(run_dir: Path, user: str, m: Membership) -> str:
    data = (
        f"its data ({m.data}) does not hold them"
        if m.in_data is False
        else f"whether its data holds them is unknown: {m.why_unknown}"
    )
    return (
        f"run {run_dir} never knew user {user!r} or has forgotten them: no adapter, token, "
        f"group-router entry or evaluation output names them, and {data}. Check the id; if they "
        "were in the data when the run was trained, its base still learned from them: "
        f"retrain without them: {retrain_command(run_dir)}"
    )


def mentions(run_dir: Path, user: str) -> list[Path]:
    """Files under the run, outside base/ (the model itself), that still name the user:
    in their path below a `users` folder, or in their text (`names_user`). PEFT's model
    card beside a stored adapter (`README.md` next to its manifest) is boilerplate that
    holds no one's data: its text is not read (an id such as "Model" would match it)."""
    found = []
    for f in sorted(run_dir.rglob("*")):
        rel = f.relative_to(run_dir).parts
        if rel[0] in ("base", LOCKS) or not f.is_file():  # the model; pids and command names
            continue
        card = f.name == "README.md" and (f.parent / "ownlm.json").is_file()
        if _user_path(rel, user) or (not card and names_user(f, user)):
            found.append(f)
    return found


def _user_path(parts: tuple[str, ...], user: str) -> bool:
    scratch = tuple(f"{p}{user}-" for p in (".tmp-", ".old-", ".del-", ".new-", ".prev-"))
    return any(
        prev == "users" and (part == user or part.startswith(scratch))
        for prev, part in zip(parts, parts[1:], strict=False)
    )
