"""The bundle archive: its format, written by `write_bundle` (`ownlm export --bundle`)
and read back whole, each member checked against the index, by `read_bundle`. The
format and what an import checks are described in `ownlm.ownership.bundle`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ownlm import __version__
from ownlm.backbone.checksum import META_FILE, read_base_meta
from ownlm.errors import ConfigError, NotFoundError, StoreError
from ownlm.paths import RunPaths, variant_of
from ownlm.proper.experts import ROUTER, store_fingerprint
from ownlm.proper.users import ROUTER_FILE
from ownlm.store import AdapterStore
from ownlm.variants import VARIANTS, names, of_method

if TYPE_CHECKING:
    from ownlm.run import Run

INDEX = "ownlm_bundle.json"
FORMAT = "ownlm-bundle/1"
MANIFEST = "ownlm.json"  # the store's manifest file in each adapter directory
MAX_INDEX_BYTES = 16 << 20
MAX_BUNDLE_BYTES = 4 << 30  # the members' sizes together, as their headers declare them
MAX_MEMBERS = 1000
# files an adapter directory may hold besides those its manifest's sha256 lists
BUNDLED = names(bundled=True)  # adapters/<variant>/ members
UNHASHED = {"README.md": BUNDLED, ROUTER_FILE: tuple(of_method("proper"))}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_meta(run_dir: Path) -> dict:
    path = RunPaths(run_dir).base() / META_FILE
    if not path.exists():
        raise NotFoundError(
            f"run {run_dir} has no trained base ({path}); train stage 1 first: "
            f"`ownlm train -c {RunPaths(run_dir).config} --stages population`"
        )
    return read_base_meta(path.parent)


def expected_fingerprint(run_dir: Path, variant: str) -> str:
    """What a user adapter of `variant` must have been trained for in this run: the
    base's fingerprint, and for PROPER the stage-2 weights too (`groups_fingerprint`)."""
    fp = base_meta(run_dir)["fingerprint"]
    if not VARIANTS[variant].is_proper:
        return fp
    store = AdapterStore(RunPaths(run_dir).store())
    if not store.exists(ROUTER):
        raise StoreError(f"run {run_dir} has no PROPER stage 2, which {variant} adapters need")
    return store_fingerprint(store, fp)


# -- export --------------------------------------------------------------------------------
@dataclass
class Bundled:
    path: Path
    members: dict[str, str]  # name -> sha256
    adapters: list[str]  # variants included
    skipped: list[str] = field(default_factory=list)  # "variant: why"

    def summary(self) -> str:
        extra = [n for n in ("profile.json", "history.jsonl") if n in self.members]
        lines = [
            f"wrote {self.path}: {len(self.members)} members, adapters "
            f"{', '.join(self.adapters)}{' + ' + ', '.join(extra) if extra else ''}, "
            f"each listed with its sha256 in {INDEX}",
            f"restore it with: ownlm import {self.path} --run-dir RUN (a run with the same base)",
        ]
        lines += [f"left out {s}" for s in self.skipped]
        return "\n".join(lines)


def _adapter_members(run_dir: Path, user_id: str, members: dict, index: dict) -> list[str]:
    """Add every current adapter of the user to `members`; returns why any was left out."""
    skipped = []
    for store_dir in RunPaths(run_dir).stores():
        store, name, variant = AdapterStore(store_dir), f"user:{user_id}", variant_of(store_dir)
        if not store.exists(name):
            continue
        try:
            path = store.verify(name, expected_fingerprint(run_dir, variant))
        except StoreError as e:
            skipped.append(f"{variant}: {e}")
            continue
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            members[f"adapters/{variant}/{f.relative_to(path).as_posix()}"] = f.read_bytes()
        m = store.manifest(name)
        index["adapters"][variant] = {
            "store": store_dir.name,
            "stage": m.stage,
            "base_fingerprint": m.base_fingerprint,
        }
    return skipped


def history_line(user) -> dict:
    """The user in the generic JSONL layout (`ownlm.data.loaders.load_jsonl` reads it)."""
    return {
        "user_id": user.user_id,
        "history": [
            {"id": it.id, **({"date": it.date} if it.date else {}), **it.fields}
            for it in user.history
        ],
        "queries": [
            {**q.fields, "id": q.id, "input": q.input, **({"gold": q.gold} if q.gold else {})}
            for q in user.queries
        ],
    }


def _user_members(run: Run, user_id: str, members: dict, with_history: bool) -> None:
    from ownlm.retrieval.prompts import user_context

    user = next((u for u in run.dataset.users if u.user_id == user_id), None)
    if user is None:
        if with_history:
            raise NotFoundError(
                f"user {user_id!r} is not in the run's data ({run.cfg.data}): no history to "
                "bundle; drop --with-history"
            )
        return
    profile = {
        "user_id": user_id,
        "task": run.task.name,
        "profile": user_context(run.task, user).profile,
        "history_items": len(user.history),
        "history_sha256": user.history_digest(),
    }
    members["profile.json"] = json.dumps(profile, indent=2, ensure_ascii=False).encode()
    if with_history:
        line = json.dumps(history_line(user), ensure_ascii=False) + "\n"
        members["history.jsonl"] = line.encode()


def write_bundle(run: Run, user_id: str, path: Path, with_history: bool = False) -> Bundled:
    """Write `user_id`'s bundle to `path` (a new file; written whole, then renamed)."""
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} already exists; choose a new bundle file")
    meta = base_meta(run.dir)
    index = {
        "format": FORMAT,
        "user": user_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ownlm_version": __version__,
        "task": run.task.name,
        "base": {k: meta.get(k) for k in ("kind", "name", "fingerprint", "sha256")},
        "adapters": {},
    }
    members: dict[str, bytes] = {}
    skipped = _adapter_members(run.dir, user_id, members, index)
    if not index["adapters"]:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise NotFoundError(
            f"user {user_id!r} has no adapter for the current base in run {run.dir}{why}; "
            f"train one: `ownlm train -c {run.dir / 'config.yaml'} --stages users`"
        )
    _user_members(run, user_id, members, with_history)
    index["members"] = {name: sha256_hex(data) for name, data in sorted(members.items())}
    _write_tar(path, {INDEX: json.dumps(index, indent=2).encode(), **members})
    return Bundled(path, index["members"], list(index["adapters"]), skipped)


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    """A plain tar of regular files, owner-neutral (no user or host names in headers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    now = int(time.time())
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), now, 0o600
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# -- read ----------------------------------------------------------------------------------
def refused(bundle: Path, why: str) -> StoreError:
    return StoreError(f"bundle {bundle} refused: {why}")


def _member_name(bundle: Path, info: tarfile.TarInfo) -> str:
    """The member's name, if it is a regular file with a plain relative name."""
    if not info.isreg():
        raise refused(bundle, f"member {info.name!r} is not a regular file")
    name = info.name
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or p.as_posix() != name:
        raise refused(bundle, f"member {name!r} has an unsafe path (absolute or with ..)")
    return name


def read_bundle(bundle: str | Path) -> tuple[dict, dict[str, bytes]]:
    """(index, {member: bytes}) of a bundle whose every member is listed in its index
    with the sha256 it has; StoreError (one line) on anything else."""
    bundle = Path(bundle)
    if not bundle.is_file():
        what = "is not a regular file" if bundle.exists() else "does not exist"
        raise NotFoundError(f"bundle {bundle} {what}; check the path")
    try:
        with tarfile.open(bundle, "r:*") as tar:
            infos, total = [], 0
            for info in tar:  # headers only: nothing is read into memory before the sums
                infos.append(info)
                total += info.size
                if len(infos) > MAX_MEMBERS:
                    raise refused(bundle, f"it has more than {MAX_MEMBERS} members")
                if total > MAX_BUNDLE_BYTES:
                    raise refused(
                        bundle,
                        f"its members are larger than {MAX_BUNDLE_BYTES} bytes together "
                        "(a user's adapters are far smaller)",
                    )
            data = {}
            for info in infos:
                name = _member_name(bundle, info)
                if name in data:
                    raise refused(bundle, f"member {name!r} appears twice")
                if name == INDEX and info.size > MAX_INDEX_BYTES:
                    raise refused(bundle, f"its index is {info.size} bytes, not an ownlm index")
                data[name] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise refused(bundle, f"not a readable tar archive ({first.rstrip(':')})") from e
    index = _index(bundle, data)
    members = {k: v for k, v in data.items() if k != INDEX}
    extra = sorted(set(members) - set(index["members"]))
    missing = sorted(set(index["members"]) - set(members))
    if extra or missing:
        what = f"unexpected member {extra[0]!r}" if extra else f"member {missing[0]!r} missing"
        raise refused(bundle, f"{what} (the index lists every member)")
    for name, blob in members.items():
        if sha256_hex(blob) != index["members"][name]:
            raise refused(
                bundle, f"member {name!r} does not match its sha256 (tampered or corrupt)"
            )
    return index, members


def _index(bundle: Path, data: dict[str, bytes]) -> dict:
    if INDEX not in data:
        raise refused(bundle, f"no {INDEX} (not an ownlm bundle)")
    try:
        index = json.loads(data[INDEX])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise refused(bundle, f"{INDEX} is not valid JSON ({e})") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise refused(bundle, f"{INDEX} is not an {FORMAT} index")
    if not isinstance(index.get("members"), dict) or not isinstance(index.get("adapters"), dict):
        raise refused(bundle, f"{INDEX} lacks its members or adapters")
    if not isinstance(index.get("base"), dict):
        raise refused(bundle, f"{INDEX} does not name the base it belongs to")
    return index
