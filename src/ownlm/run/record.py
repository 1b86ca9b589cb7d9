"""run.json: what a run was trained from, and how two records differ.

`data_record` digests the data user by user, `config_changes` and `data_changes` say in
words what changed, `recorded_roles` reads the split recorded by id when the run was
first trained. Every write of run.json replaces it whole (`write_json`), under the
record lock when it is a read-modify-write (`Run.edit_record`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ownlm import paths
from ownlm.config import ExperimentConfig, renamed_key, renamed_values, training_values
from ownlm.data.records import Dataset
from ownlm.data.splits import ROLES, UserSplit
from ownlm.files import write_file
from ownlm.safe_yaml import load_yaml

RECORD = paths.RECORD


def recorded_roles(record: dict | None) -> dict[str, list[str]] | None:
    """run.json's split, {"train": [ids], "dev": [...], "test": [...]}; None without one."""
    split = record.get("split") if isinstance(record, dict) else None
    if not isinstance(split, dict):
        return None
    roles = {r: split.get(r) for r in ROLES}
    if not all(isinstance(v, list) and all(isinstance(u, str) for u in v) for v in roles.values()):
        return None
    return roles


def split_record(split: UserSplit) -> dict[str, list[str]]:
    return {r: [u.user_id for u in getattr(split, r)] for r in ROLES}


def data_record(ds: Dataset) -> dict:
    """The data a run is trained from, as loaded (after max_users, max_history): per user
    [id, history digest, queries digest] (16 hex digits each), and one sha256 of it all."""
    users = [[u.user_id, u.history_digest()[:16], _queries_digest(u)] for u in ds.users]
    blob = json.dumps([ds.task, users], ensure_ascii=False).encode()
    return {"task": ds.task, "sha256": hashlib.sha256(blob).hexdigest(), "users": users}


def _queries_digest(user) -> str:
    rows = [[q.id, q.input, q.gold, q.fields] for q in user.queries]
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def data_changes(old: dict, new: dict) -> str | None:
    """What differs between two data records, in words ("3 users added, 1 history
    changed"); None when they are the same."""
    if old.get("sha256") == new["sha256"]:
        return None
    before = {u[0]: u[1:] for u in old.get("users", [])}
    after = {u[0]: u[1:] for u in new["users"]}
    both = before.keys() & after.keys()
    counts = [
        (len(after.keys() - before.keys()), "user added", "users added"),
        (len(before.keys() - after.keys()), "user removed", "users removed"),
        (sum(before[u][0] != after[u][0] for u in both), "history changed", "histories changed"),
        (sum(before[u][1] != after[u][1] for u in both), "query set changed", "query sets changed"),
    ]
    parts = [f"{n} {one if n == 1 else many}" for n, one, many in counts if n]
    if old.get("task") != new["task"]:
        parts.insert(0, f"task {old.get('task')} -> {new['task']}")
    return ", ".join(parts) or "the users' order changed (the train/test split moves)"


# training keys added to ownlm since some runs were made, with the value such a run was
# trained with (its behaviour before the key existed), when that is not the default
ABSENT = {"tiny.copy_share": 0.0, "tiny.copy_steps": 0, "tiny.copy_random": 0.0}


def config_changes(old: dict, new: dict) -> list[str]:
    """`key old -> new` for each training key whose value differs. A key the record lacks
    (added to ownlm since the run was made) is compared with the value the run was
    trained with (`ABSENT`), else with its default; a key recorded
    under a name since renamed (`config.RENAMED`) is read under its new name."""
    old = renamed_values(old)
    defaults = training_values(ExperimentConfig())
    changes = []
    for key, value in new.items():
        before = old.get(key, ABSENT.get(key, defaults.get(key)))
        if before != value:
            changes.append(f"{key} {before!r} -> {value!r}")
    return changes


def given_keys(config: str | Path | None, overrides: list[str]) -> set[str]:
    """The dotted keys a person set, in the YAML `config` and in `overrides`."""

    def leaves(tree, prefix: str) -> set[str]:
        if not isinstance(tree, dict):
            return {prefix.rstrip(".")}
        return {k for key, v in tree.items() for k in leaves(v, f"{prefix}{key}.")}

    text = Path(config).read_bytes().decode("utf-8-sig") if config else ""
    keys = leaves(load_yaml(text, f"config file {config}") or {}, "")
    for item in overrides:
        key, _, raw = item.partition("=")
        value = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
        keys |= leaves(value, key.strip() + ".")
    return {renamed_key(k, "config") for k in keys - {""}}


def get_key(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_key(cfg, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def write_json(path: Path, data: dict) -> None:
    """Write `path` whole or not at all (a killed run leaves the old file)."""
    write_file(path, json.dumps(data, indent=1, ensure_ascii=False))
