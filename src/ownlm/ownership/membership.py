"""What a run's own records say of a user: in its data, in the record of the data it was
trained on, and in which role (train, dev, test). `forget` asks before it deletes, to
name what the user's history trained."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ownlm.data.records import Dataset, User
from ownlm.errors import OwnlmError
from ownlm.paths import RunPaths
from ownlm.run import RECORD, forgotten_key, recorded_roles

FORGOTTEN_ROLES = "forgotten_roles"  # run.json: forgotten_key -> role, for a forget rerun


@dataclass
class Membership:
    """What the run's own data says of the user (None: the data could not be read)."""

    in_data: bool | None = None  # in the data file as it is now
    in_record: bool = False  # in run.json's record of the data the run was trained on
    role: str | None = None  # train, dev or test, as the run's split recorded it
    train: bool = False  # a train user: their history trained stage 1 (and stage 2)
    data: str = ""  # the config's data source
    backbone: str = ""
    why_unknown: str = ""


def membership(run_dir: Path, user: str) -> Membership:
    """Whether the run's data holds `user`, and in which role: from run.json's split (or,
    when a forget of them was cut short, the role it kept), else from the data as it is
    now, else from the record of the data it was trained on."""
    if not RunPaths(run_dir).config.exists():
        return Membership(why_unknown=f"{run_dir} has no config.yaml")
    from ownlm.run import Run

    try:
        run = Run.open(run_dir)
    except (OwnlmError, OSError) as e:
        return Membership(why_unknown=f"its config could not be read ({e})")
    m = Membership(data=str(run.cfg.data), backbone=run.cfg.backbone)
    record = run_record(run_dir)
    recorded = recorded_ids(run_dir)
    m.in_record = user in recorded
    roles = recorded_roles(record)
    m.role = next((r for r, ids in (roles or {}).items() if user in ids), None)
    m.role = m.role or (record.get(FORGOTTEN_ROLES) or {}).get(forgotten_key(user))
    m.in_record = m.in_record or m.role is not None  # the run recorded them
    try:
        m.in_data = user in {u.user_id for u in run.loaded_dataset.users}
        if m.role is None and roles is None and m.in_data:  # a run from before the record
            split = run.split
            m.role = next((r for r in ("train", "dev", "test") if _has(split, r, user)), None)
    except (OwnlmError, OSError) as e:
        m.why_unknown = f"its data could not be read ({e})"
    if m.role is None and roles is None and m.in_record:  # as trained, before they left
        run.__dict__["dataset"] = Dataset(run.cfg.task or "", [User(i, []) for i in recorded])
        run.__dict__.pop("split", None)
        m.role = next((r for r in ("train", "dev", "test") if _has(run.split, r, user)), None)
    m.train = m.role == "train"
    return m


def _has(split, role: str, user: str) -> bool:
    return user in {u.user_id for u in getattr(split, role)}


def run_record(run_dir: Path) -> dict:
    """run.json as a dict; {} when it is missing or unreadable (edited by hand, cut
    short): forget still deletes what it can, and `mentions` then names the file."""
    path = run_dir / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def record_rows(record: dict) -> list:
    """The rows ([id, history digest, queries digest]) of a record's data, [] when the
    record has none of that shape."""
    data = record.get("data")
    users = data.get("users") if isinstance(data, dict) else None
    return users if isinstance(users, list) else []


def row_user(row) -> str | None:
    return row[0] if isinstance(row, list) and row and isinstance(row[0], str) else None


def recorded_ids(run_dir: Path) -> list[str]:
    """The user ids of run.json's data record, in the data's order ([] without one)."""
    return [u for u in map(row_user, record_rows(run_record(run_dir))) if u is not None]
