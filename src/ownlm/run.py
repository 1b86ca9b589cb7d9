"""A run directory: where one experiment's data split, base model and adapters live.

runs/<name>/
  config.yaml          the resolved ExperimentConfig
  run.json             what the run was trained from: its training keys, a digest of its
                       data (user by user), and what each finished stage was trained from
  base/                backbone with the population LoRA merged (HF directory)
  adapters/            AdapterStore: population/, users/<id>/ (OPPU: PEFT + retrieval + profile)
  adapters-peft/       AdapterStore of the "PEFT only" ablation (trained on bare prompts)
  base-control/        OPPU's control base: base/ + the control pass merged (docs/proper.md)
  eval/                tables, JSON, official-format predictions, charts
  updates/             history items `ownlm update` added, one JSONL per user
  .locks/              the run's locks (`ownlm.store.guard`: per user, and run.json's)

A run is never silently overwritten or mixed: `Run(cfg)` (train, prepare) refuses a
directory trained from other data or other training keys, unless `overwrite` moves it
aside first; `Run.reopen` (eval, export) reads it as it was trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from ownlm.backbone.base import ANSWER_SEP
from ownlm.backbone.load import load_base
from ownlm.config import ExperimentConfig, load_config, save_config, training_values
from ownlm.data.demo import make_demo_headlines, make_demo_tags
from ownlm.data.loaders import load_dataset
from ownlm.data.records import Dataset
from ownlm.data.splits import ROLES, UserSplit, split_by_roles, split_users, truncate_history
from ownlm.data.task_file import resolve_task
from ownlm.errors import ConfigError, DataError, OwnlmError, StoreError
from ownlm.files import sweep_files, write_file
from ownlm.log import get_logger
from ownlm.store import AdapterStore
from ownlm.store.guard import (  # noqa: F401  (forgotten_key: ownlm.run's name for it)
    FORGET_WAIT,
    forgotten_key,
    forgotten_keys,
    record_lock,
    user_lock,
)

log = get_logger(__name__)
DEMOS = {"demo-tags": make_demo_tags, "demo-headlines": make_demo_headlines}
CACHE_DIR = Path(".cache") / "ownlm"
RECORD = "run.json"


class Run:
    def __init__(self, cfg: ExperimentConfig, write: bool = True, overwrite: bool = False):
        """`write` (train, prepare): claim the directory for this config and data, refusing
        one trained from others unless `overwrite` moves it aside to <dir>.old-<time>."""
        self.cfg = cfg
        self.dir = cfg.run_dir
        if write:
            _claim(self, overwrite)

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        """An existing run, read-only: its saved config, nothing rewritten (serving, export)."""
        run_dir = Path(run_dir)
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.exists():
            raise ConfigError(
                f"{run_dir} is not a run directory (no config.yaml); train a run first"
            )
        cfg = load_config(cfg_file)
        cfg.output_dir, cfg.name = str(run_dir.parent), run_dir.name
        run = cls(cfg, write=False)
        recorded = run.recorded()
        trained = recorded.get("config") if isinstance(recorded, dict) else None
        changes = config_changes(trained, training_values(cfg)) if trained else []
        if changes:  # config.yaml edited by hand: not what the adapters were trained with
            raise ConfigError(
                f"{cfg_file} differs from what the run was trained with ({', '.join(changes[:3])}"
                f"; run.json records the training settings): restore config.yaml, or train "
                "again with those settings (`ownlm train --overwrite`)"
            )
        return run

    @classmethod
    def reopen(cls, config: str | Path | None = None, overrides: list[str] = ()) -> Run:
        """The run that `config` and `overrides` name, as it was trained (`ownlm eval`,
        `export`): its saved config with only the eval and runtime keys given applied.
        A training key given with another value is refused, as is data that changed
        since: the adapters were trained with the run's own. Nothing is written."""
        asked = load_config(config, overrides)
        run = cls.open(asked.run_dir)
        trained, wanted = training_values(run.cfg), training_values(asked)
        given = given_keys(config, overrides)
        clash = [k for k in sorted(given & trained.keys()) if wanted[k] != trained[k]]
        if clash:
            said = "; ".join(f"{k}={trained[k]!r}, not {wanted[k]!r}" for k in clash)
            raise ConfigError(
                f"{run.dir} was trained with {said}: its adapters were trained with those "
                "values. Leave these keys out (the run's own config is used), or train "
                "another run with them (--set name=...)"
            )
        for key in sorted(given - trained.keys() - {"name", "output_dir"}):
            _set_key(run.cfg, key, _get_key(asked, key))
        recorded = run.recorded()
        change = recorded and run.data_change(recorded["data"], data_record(run.file_dataset))
        if change:
            raise DataError(
                f"the data of {run.dir} changed since it was trained ({change}): its "
                "adapters do not stand for it. Restore the data, or train again with "
                "`ownlm train --overwrite` (the old run is moved aside)"
            )
        return run

    @cached_property
    def loaded_dataset(self) -> Dataset:
        """The users of the data file, after max_users and max_history (forgotten users
        still in it: see `file_dataset`)."""
        if self.cfg.data in DEMOS:
            ds = DEMOS[self.cfg.data](seed=self.cfg.seed)
        else:
            ds = load_dataset(self.cfg.data, self.cfg.task)
        if self.cfg.max_users:
            ds.users = ds.users[: self.cfg.max_users]
        if self.cfg.max_history:
            ds.users = [truncate_history(u, self.cfg.max_history) for u in ds.users]
        return ds

    @cached_property
    def file_dataset(self) -> Dataset:
        """The users of the data file (after max_users, max_history, forget): what
        run.json's data record stands for."""
        self.forgotten_seen = forgotten = forgotten_keys(self.dir)
        ds = self.loaded_dataset
        if forgotten:  # users erased by `ownlm forget`: the run never sees them again
            users = [u for u in ds.users if forgotten_key(u.user_id) not in forgotten]
            ds = replace(ds, users=users)
        return ds

    @cached_property
    def dataset(self) -> Dataset:
        """The data file's users, each history followed by the items `ownlm update`
        added (R/updates/<user>.jsonl, ownlm.data.updates)."""
        from ownlm.data.updates import with_updates

        ds = self.file_dataset
        task = resolve_task(self.cfg.task or ds.task)
        return replace(ds, users=with_updates(self.dir, ds.users, task))

    @cached_property
    def task(self):
        return resolve_task(self.cfg.task or self.dataset.task)  # a name, YAML file or mapping

    @cached_property
    def split(self) -> UserSplit:
        """Train, dev and test users, as run.json recorded them by id when the run was
        first trained: a user's role never moves, also when others are forgotten. A run
        without that record (not trained yet, or made before ownlm kept one) splits
        afresh (`fresh_split`)."""
        roles = recorded_roles(self.recorded_or_none())
        if roles is None:
            return self.fresh_split()
        split, unknown = split_by_roles(self.dataset, roles)
        if unknown:
            log.warning(
                f"{len(unknown)} user(s) of the data are not in the split {self.dir} was "
                f"trained with (e.g. {unknown[0]}): they are left out; train a new run to "
                "include them"
            )
        return split

    def fresh_split(self) -> UserSplit:
        """The split of a new run: test users are the last `test_frac` in file order; dev
        users (`validation.dev_frac` of the others, the last of them) are held out of
        stages 1 and 2 to validate them and to tune the user stage."""
        split = split_users(self.dataset, test_frac=self.cfg.test_frac)
        n_dev = round(len(split.train) * self.cfg.validation.dev_frac)
        if n_dev and len(split.train) - n_dev >= 1:
            split.train, split.dev = split.train[:-n_dev], split.train[-n_dev:]
        return split

    def corpus(self) -> list[str]:
        """Pre-training text of the tiny backbone: the train users' history items, each
        written out as the task pair it becomes (prompt, separator, answer), so that the
        model trained from scratch learns the task's language and its answer vocabulary.
        Test users' items and every query answer stay out of it."""
        texts = []
        for user in self.split.train:
            for item in user.history:
                prompt, answer = self.task.item_pair(item)
                texts.append(f"{prompt}{ANSWER_SEP}{answer}")
        return texts

    @property
    def cache_dir(self) -> Path:
        """Where built backbones are cached across runs (the tiny model, by corpus)."""
        return CACHE_DIR

    @property
    def base_dir(self) -> Path:
        return self.dir / "base"

    @cached_property
    def device(self):
        """The resolved `device` setting (a ConfigError if this machine lacks it)."""
        from ownlm.backbone.device import resolve_device

        return resolve_device(self.cfg.device)

    @cached_property
    def dtype(self):
        """The resolved `dtype` setting of the frozen base, for `device`."""
        from ownlm.backbone.device import resolve_dtype

        return resolve_dtype(self.cfg.dtype, self.device)

    def base_fingerprint(self, name: str = "base") -> str:
        """The merged base's identity, as recorded when it was written (no model loaded).
        `name`: the base's directory in the run ("base-control": see `base`)."""
        meta = self.dir / name / "ownlm_base.json"
        if not meta.exists():
            stage = "population" if name == "base" else "population,control"
            raise ConfigError(
                f"no trained base in {self.dir / name}; run `ownlm train --stages {stage}` first"
            )
        return json.loads(meta.read_text())["fingerprint"]

    def base(self, name: str = "base"):
        """The backbone with the population LoRA merged in (after stage 1), on the run's
        device in the run's precision. `name="base-control"`: OPPU's control base, stage 1
        plus the control pass merged (docs/proper.md, "A fair control")."""
        return load_base(self.dir / name, self.device, self.dtype)

    def store(self, variant: str = "oppu") -> AdapterStore:
        return AdapterStore(self.dir / ("adapters" if variant == "oppu" else f"adapters-{variant}"))

    def data_change(self, old: dict, new: dict) -> str | None:
        """What changed in the data that the run's trained stages depend on (None when
        nothing did). Test users' histories and queries may change: stages 1 and 2 never
        saw them, and each such user's adapter is retrained (its manifest records the
        history it stood for); any change to the users or to a train user's data counts."""
        change = data_changes(old, new)
        if change is None:
            return None
        same_users = [u[0] for u in old.get("users", [])] == [u[0] for u in new["users"]]
        test = {u.user_id for u in self.split.test}
        before = {u[0]: u for u in old.get("users", [])}
        moved = [u[0] for u in new["users"] if before.get(u[0]) != u]
        if old.get("task") == new["task"] and same_users and set(moved) <= test:
            log.info(
                f"{len(moved)} test user(s) changed their history or queries since the run "
                "was trained: their adapters are trained again"
            )
            return None
        return change

    # -- the record: what the run was trained from ------------------------------------------
    def recorded(self) -> dict | None:
        """<run>/run.json (None for a run made before ownlm kept one)."""
        path = self.dir / RECORD
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path} is corrupt ({e}); train with --overwrite to start the run afresh"
            ) from e

    def recorded_or_none(self) -> dict | None:
        """`recorded()`, None when run.json is unreadable (its readers say so elsewhere)."""
        try:
            record = self.recorded()
        except ConfigError:
            return None
        return record if isinstance(record, dict) else None

    @contextlib.contextmanager
    def edit_record(self, write: bool = True):
        """run.json as a dict to change in place, read and written back under the record
        lock, so that two processes' edits (a stage's record, a forget) both land.
        `write=False`: only hold the lock (a forget waits for the block to end)."""
        with record_lock(self.dir):
            record = self.recorded() or {}
            yield record
            if write:
                _write_json(self.dir / RECORD, record)

    def stage_record(self, stage: str) -> dict | None:
        """What the stored result of `stage` was trained from, as `record_stage` wrote it."""
        return ((self.recorded() or {}).get("stages") or {}).get(stage)

    def record_stage(self, stage: str, info: dict) -> None:
        """Note in run.json what a finished stage was trained from (a resume keeps it)."""
        with self.edit_record() as record:
            record.setdefault("stages", {})[stage] = info

    def record_tuned(self, variant: str, info: dict) -> None:
        """Note in run.json the user-stage budget `ownlm tune` chose for `variant` (the
        run's own choice, not a training key: a resume keeps it, the stage reads it)."""
        with self.edit_record() as record:
            record.setdefault("tuned", {})[variant] = info

    # -- users written while others read or forget them ------------------------------------
    def recover(self) -> list[str]:
        """`recover(self.dir)`, and the updates a kill cut short: finished when their
        adapter landed, else rolled back (`ownlm.train.update.finish_pending`), each under
        its user's lock (a live update's journal is left to it)."""
        from ownlm.data.updates import pending_users
        from ownlm.store.guard import BusyError

        done = recover(self.dir)
        for user_id in pending_users(self.dir):
            try:
                with user_lock(self.dir, user_id, "recover"):
                    done.append(_finish_pending(self, user_id))
            except BusyError:
                continue
        return [d for d in done if d]

    def refresh(self) -> None:
        """Read the users' histories afresh on next use (an update landed meanwhile)."""
        for name in ("dataset", "split", "file_dataset"):
            self.__dict__.pop(name, None)

    def current_history(self, user_id: str) -> str | None:
        """The digest of `user_id`'s history as it stands now (the data file's items and
        the updates file read afresh), None when the run no longer has them (forgotten)."""
        from ownlm.data.updates import with_updates

        if forgotten_key(user_id) in forgotten_keys(self.dir):
            return None
        user = next((u for u in self.file_dataset.users if u.user_id == user_id), None)
        if user is None:
            return None
        return with_updates(self.dir, [user], self.task)[0].history_digest()

    @contextlib.contextmanager
    def writing_user(self, user, what: str):
        """Hold `user`'s lock (`store.guard.user_lock`, waiting for an `update` or `forget`
        of them to finish) and yield why their trained adapter must not be saved: "forgotten"
        meanwhile, "history changed" (an update landed while they trained), or None."""
        with user_lock(self.dir, user.user_id, what, wait=FORGET_WAIT):
            now = self.current_history(user.user_id)
            if now is None:
                yield "forgotten"
            elif now != user.history_digest():
                yield "history changed"
            else:
                yield None

    def check_forgotten_since(self, what: str) -> None:
        """Refuse to write `what` (evaluation outputs) when a user was forgotten after this
        process read the data: it would name them again."""
        seen = getattr(self, "forgotten_seen", None)
        if seen is not None and forgotten_keys(self.dir) - seen:
            raise StoreError(
                f"a user of {self.dir} was forgotten while this command ran; {what} would "
                "name them, so it was not written: run the command again"
            )


def _finish_pending(run: Run, user_id: str) -> str | None:
    """A journal `ownlm update` left (`ownlm.data.updates`): its items appended when the
    adapter it trained landed (its manifest stands for the history with them), else
    dropped. Returns what was done (None without a journal)."""
    from ownlm.data.updates import pending_path, read_items, write_updates

    journal = pending_path(run.dir, user_id)
    if not journal.is_file():
        return None
    user = next((u for u in run.dataset.users if u.user_id == user_id), None)
    landed = False
    if user is not None:
        items = read_items(journal, run.task, user_id)
        digest = replace(user, history=user.history + items).history_digest()
        landed = run.store("oppu").current(user.name, run.base_fingerprint(), digest)
        if landed:
            write_updates(run.dir, user_id, items)
    journal.unlink()
    return f"{'finished' if landed else 'rolled back'} a cut-short update of user {user_id}"


def recover(run_dir: Path) -> list[str]:
    """Finish or roll back what killed writers left in a run: each store's cut-short swaps
    (`AdapterStore.sweep`: the previous version back in place, or the new one kept) and
    the scratch copies of run.json, tokens.json and the updates files. Every command that
    writes a user, and the server at start-up, call it first. Returns what it did."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    done = []
    for store in sorted(p for p in run_dir.iterdir() if p.name.startswith("adapters")):
        if store.is_dir():
            done += AdapterStore(store).sweep()
    for folder in (run_dir, run_dir / "updates"):
        done += [f"removed {p}" for p in sweep_files(folder)]
    return done


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


def config_changes(old: dict, new: dict) -> list[str]:
    """`key old -> new` for each training key whose value differs. A key the record lacks
    (added to ownlm since the run was made) is compared with its default."""
    defaults = training_values(ExperimentConfig())
    changes = []
    for key, value in new.items():
        before = old.get(key, defaults.get(key))
        if before != value:
            changes.append(f"{key} {before!r} -> {value!r}")
    return changes


_HELD: dict[str, int] = {}  # run lock path -> open descriptor, held for the process's life


def hold_lock(run_dir: Path) -> None:
    """Take `<output_dir>/.<name>.lock` (an exclusive flock, released when the process
    ends) before a run is claimed, so that two `ownlm train` on one run directory never
    write its base and adapters at once: the second stops, naming the first's pid. The
    lock sits beside the directory so that `--overwrite` can move the directory aside."""
    import fcntl

    path = run_dir.parent / f".{run_dir.name}.lock"
    if str(path) in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(
            f"run {run_dir} is being trained by another process (pid {holder}); wait for it "
            "to finish, or train under another name (--set name=...)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[str(path)] = fd


def _claim(run: Run, overwrite: bool) -> None:
    """Make `run.dir` this run's before any work: refuse a directory trained from other
    training keys or data (moved aside first with `overwrite`), then write config.yaml
    and run.json."""
    hold_lock(run.dir)
    if overwrite and run.dir.is_dir() and any(run.dir.iterdir()):
        log.info(f"moved the old run aside to {move_aside(run.dir)}")
    run.recover()
    new = {"config": training_values(run.cfg), "data": data_record(run.file_dataset)}
    problem = _mismatch(run, run.recorded(), new)
    if problem is not None:
        raise problem
    run.dir.mkdir(parents=True, exist_ok=True)
    save_config(run.cfg, run.dir / "config.yaml")
    with run.edit_record() as record:
        created = record.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if recorded_roles(record) is None:  # fixed now, by id: forget never moves a role
            record["split"] = split_record(run.split)
        record.update(new, created=created)


def _mismatch(run: Run, old: dict | None, new: dict) -> OwnlmError | None:
    """Why `run.dir` cannot be resumed with `new` (None when it can)."""
    fix = (
        f"pass --overwrite to move it aside to {run.dir.name}.old-<time>/ and start afresh, "
        "or train under another name (--set name=...)"
    )
    if old is None:
        old = _unrecorded(run)
        if old is None:
            return None
        if not old:
            return ConfigError(f"{run.dir} holds state that ownlm did not record; {fix}")
    changes = config_changes(old["config"], new["config"])
    if changes:
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        return ConfigError(
            f"{run.dir} was trained with other settings ({', '.join(changes[:3])}{more}); "
            f"rerun with the settings it was trained with, {fix}"
        )
    change = old.get("data") and run.data_change(old["data"], new["data"])
    if change:
        return DataError(f"the data of {run.dir} changed since it was trained: {change}; {fix}")
    return None


def _unrecorded(run: Run) -> dict | None:
    """The record of a run made before run.json: None when the directory holds nothing
    trained, its config.yaml's training keys (data unknown), or {} without a config."""
    state = [p for p in run.dir.iterdir() if p.name != "config.yaml"] if run.dir.is_dir() else []
    if not state:
        return None
    cfg_file = run.dir / "config.yaml"
    if not cfg_file.exists():
        return {}
    log.warning(
        f"{run.dir} has no record of its data (made before ownlm kept one): recording "
        "today's; user adapters are still checked against their own histories"
    )
    return {"config": training_values(load_config(cfg_file)), "data": None}


def move_aside(path: Path) -> Path:
    """Rename `path` to `<path>.old-<time>` (nothing is deleted); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    path.rename(aside)
    return aside


def given_keys(config: str | Path | None, overrides: list[str]) -> set[str]:
    """The dotted keys a person set, in the YAML `config` and in `overrides`."""
    import yaml

    def leaves(tree, prefix: str) -> set[str]:
        if not isinstance(tree, dict):
            return {prefix.rstrip(".")}
        return {k for key, v in tree.items() for k in leaves(v, f"{prefix}{key}.")}

    text = Path(config).read_bytes().decode("utf-8-sig") if config else ""
    keys = leaves(yaml.safe_load(text) or {}, "")
    for item in overrides:
        key, _, raw = item.partition("=")
        keys |= leaves(yaml.safe_load(raw) if raw.strip() else None, key.strip() + ".")
    return keys - {""}


def _get_key(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set_key(cfg, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)


def _write_json(path: Path, data: dict) -> None:
    """Write `path` whole or not at all (a killed run leaves the old file)."""
    write_file(path, json.dumps(data, indent=1, ensure_ascii=False))
