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
import json
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from ownlm.backbone.base import ANSWER_SEP
from ownlm.backbone.load import load_base
from ownlm.config import ExperimentConfig, load_config, training_values
from ownlm.data.demo import DEMOS
from ownlm.data.loaders import load_dataset
from ownlm.data.records import Dataset
from ownlm.data.splits import UserSplit, split_by_roles, split_users, truncate_history
from ownlm.data.task_file import resolve_task
from ownlm.errors import ConfigError, DataError, StoreError
from ownlm.log import get_logger
from ownlm.paths import RunPaths
from ownlm.run.claim import claim, hold_lock, move_aside
from ownlm.run.record import (
    RECORD,
    config_changes,
    data_changes,
    data_record,
    get_key,
    given_keys,
    recorded_roles,
    set_key,
    split_record,
    write_json,
)
from ownlm.run.recover import finish_pending, recover
from ownlm.store import AdapterStore
from ownlm.store.guard import FORGET_WAIT, forgotten_key, forgotten_keys, record_lock, user_lock

log = get_logger(__name__)
CACHE_DIR = Path(".cache") / "ownlm"


class Run:
    def __init__(self, cfg: ExperimentConfig, write: bool = True, overwrite: bool = False):
        """`write` (train, prepare): claim the directory for this config and data, refusing
        one trained from others unless `overwrite` moves it aside to <dir>.old-<time>."""
        self.cfg = cfg
        self.dir = cfg.run_dir
        if write:
            claim(self, overwrite)

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
            set_key(run.cfg, key, get_key(asked, key))
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
        return self.paths.base()

    @property
    def paths(self) -> RunPaths:
        """Every path inside the run directory (`ownlm.paths`)."""
        return RunPaths(self.dir)

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
        return AdapterStore(self.paths.store(variant))

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
                write_json(self.dir / RECORD, record)

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
        adapter landed, else rolled back (`ownlm.run.recover.finish_pending`), each under
        its user's lock (a live update's journal is left to it)."""
        from ownlm.data.updates import pending_users
        from ownlm.store.guard import BusyError

        done = recover(self.dir)
        for user_id in pending_users(self.dir):
            try:
                with user_lock(self.dir, user_id, "recover"):
                    done.append(finish_pending(self, user_id))
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

    def current_histories(self, users) -> dict[str, str | None]:
        """`current_history` of each of `users`, by id: what a user stage notes when it
        plans, to tell at save time whether an update or a forget landed meanwhile."""
        return {u.user_id: self.current_history(u.user_id) for u in users}

    @contextlib.contextmanager
    def writing_user(self, user_id: str, what: str, seen: str | None):
        """Hold the user's lock (`store.guard.user_lock`, waiting for an `update` or
        `forget` of them to finish) and yield why an adapter trained on what the run held
        of them when the stage planned (`seen`, a `current_history`) must not be saved:
        "forgotten" meanwhile, "history changed" (an update landed), or None."""
        with user_lock(self.dir, user_id, what, wait=FORGET_WAIT):
            now = self.current_history(user_id)
            if now is None:
                yield "forgotten"
            elif now != seen:
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


__all__ = [  # what the rest of ownlm imports from here
    "RECORD",
    "Run",
    "config_changes",
    "data_changes",
    "data_record",
    "forgotten_key",
    "forgotten_keys",
    "given_keys",
    "hold_lock",
    "move_aside",
    "recorded_roles",
    "recover",
    "split_record",
]
