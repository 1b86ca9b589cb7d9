"""The adapter store: one PEFT directory per named adapter, plus ownlm's manifest.

Layout under the store root (names are PEFT-style keys, `user:42`, `group:3`):

    population/            adapter_config.json, adapter_model.safetensors, ownlm.json
    users/42/              ...
    groups/3/              ...

Each directory loads with `peft.PeftModel.from_pretrained(base, path)` unchanged.
`ownlm.json` records the base model's fingerprint, the stage and task, and the sha256 of
every weight file; `load` refuses an adapter whose weights or base do not match.
Writes are atomic: a directory is written under a temporary name, then renamed into place.
Temporary names carry the writer's host and pid (`.tmp-<name>-<pid>-<host>-<rand>`), so
that what a killed writer left behind is swept by the next write, while a live writer's
(another Ray actor's) is left alone; an old version moved aside by a swap that was cut
short is put back when nothing replaced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ownlm import __version__
from ownlm.errors import NotFoundError, StoreError
from ownlm.files import HOST, pid_alive

MANIFEST = "ownlm.json"
FOLDERS = {"user": "users", "group": "groups"}  # name kind -> folder
SCRATCH = (".tmp-", ".old-", ".del-")  # prefixes of a write's or delete's scratch dirs


def _scratch_name(prefix: str, final: Path) -> Path:
    return final.parent / f"{prefix}{final.name}-{os.getpid()}-{HOST}-{uuid.uuid4().hex[:8]}"


KILL_ENV = "OWNLM_TEST_KILL_AT"  # tests: "write:N" / "swap:N" SIGKILLs the Nth save there
_moments: dict[str, int] = {}


def _maybe_killed(moment: str) -> None:
    """Crash-safety tests kill a writer at an exact moment of its Nth save."""
    where, _, nth = os.environ.get(KILL_ENV, "").partition(":")
    if where != moment:
        return
    _moments[moment] = _moments.get(moment, 0) + 1
    if str(_moments[moment]) == nth:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _abandoned(entry: Path) -> bool:
    """A scratch dir whose writer, on this host, is gone (a killed `ownlm train`)."""
    parts = entry.name.rsplit("-", 3)  # [prefix+name, pid, host, rand]
    if len(parts) != 4 or not parts[1].isdigit():
        return True  # written before scratch names carried their owner
    return parts[2] == HOST and not pid_alive(int(parts[1]))


@dataclass
class Manifest:
    name: str
    stage: str
    task: str
    base_fingerprint: str
    sha256: dict[str, str] = field(default_factory=dict)
    created: str = ""
    ownlm_version: str = __version__
    extra: dict = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    """The files a manifest checksums: the weights and PEFT's config that shapes them."""
    config = directory / "adapter_config.json"
    return sorted(directory.rglob("*.safetensors")) + ([config] if config.exists() else [])


class AdapterStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._swept = False

    # -- names <-> paths ------------------------------------------------------------
    def path(self, name: str) -> Path:
        kind, sep, key = name.partition(":")
        if not sep:
            if not name or "/" in name or name.startswith("."):
                raise StoreError(
                    f"adapter name {name!r} is invalid; use 'population', 'user:<id>' or 'group:<id>'"
                )
            return self.root / name
        if kind not in FOLDERS or not key or "/" in key or key.startswith(".") or "\\" in key:
            raise StoreError(
                f"adapter name {name!r} is invalid; use 'user:<id>' or 'group:<id>' with an id free of '/'"
            )
        return self.root / FOLDERS[kind] / key

    def names(self, kind: str | None = None) -> list[str]:
        """Stored adapter names, e.g. ['user:1', 'user:2'] for kind='user'."""
        out = []
        for k, folder in FOLDERS.items():
            if kind not in (None, k) or not (self.root / folder).is_dir():
                continue
            out += [
                f"{k}:{p.name}"
                for p in sorted((self.root / folder).iterdir())
                if not p.name.startswith(".") and (p / MANIFEST).exists()
            ]  # a dot-name is a write's scratch copy (`SCRATCH`), never an adapter
        return out

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).exists()

    def current(self, name: str, base_fingerprint: str, history: str | None = None) -> bool:
        """Stored, trained for this base and (when `history`, a `User.history_digest()`,
        is given) on this history: a resumed stage skips it."""
        return self.stale_reason(name, base_fingerprint, history) is None

    def stale_reason(
        self, name: str, base_fingerprint: str, history: str | None = None
    ) -> str | None:
        """Why the stored adapter `name` cannot stand for this base and history (None
        when it can): "missing", "other base", "history changed" or "corrupt: ...".
        Checks the files' sha256 too (adapters are small), so a resumed stage retrains a
        corrupt adapter instead of skipping it."""
        if not self.exists(name):
            return "missing"
        try:
            m = self.manifest(name)
            if m.base_fingerprint != base_fingerprint:
                return "other base"
            recorded = m.extra.get("history_sha256")
            if history is not None and recorded is not None and recorded != history:
                return "history changed"
            self.verify(name)
        except StoreError as e:
            return f"corrupt: {e}"
        return None

    # -- write ----------------------------------------------------------------------
    def save(self, name: str, write_fn, manifest: Manifest) -> Path:
        """Write an adapter atomically. `write_fn(tmp_dir)` writes the PEFT files
        (e.g. `lambda d: peft_model.save_pretrained(d)`); the manifest is added here."""
        final = self.path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self.sweep()
        tmp = _scratch_name(".tmp-", final)
        try:
            write_fn(tmp)
            _maybe_killed("write")
            self._flatten_peft_subdir(tmp)
            manifest.name = name
            manifest.created = manifest.created or time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
            )
            manifest.sha256 = {str(p.relative_to(tmp)): _sha256(p) for p in _weight_files(tmp)}
            if not any(f.endswith(".safetensors") for f in manifest.sha256):
                raise StoreError(f"writing adapter {name!r} produced no weight file in {tmp}")
            (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
            self._swap_in(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    @staticmethod
    def _flatten_peft_subdir(tmp: Path) -> None:
        """PEFT saves a non-default adapter name into a sub-folder; keep the files at the top."""
        if (tmp / "adapter_config.json").exists():
            return
        subs = [p for p in tmp.iterdir() if p.is_dir() and (p / "adapter_config.json").exists()]
        if len(subs) == 1:
            for f in subs[0].iterdir():
                f.rename(tmp / f.name)
            subs[0].rmdir()

    @staticmethod
    def _swap_in(tmp: Path, final: Path) -> None:
        # os.replace cannot replace a non-empty directory: move the old one aside first,
        # so that at every instant either the old or the new complete adapter is in place.
        old = None
        if final.exists():
            old = _scratch_name(".old-", final)
            os.replace(final, old)
            _maybe_killed("swap")
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def sweep(self) -> list[str]:
        """Remove the scratch dirs killed writers left (a half-written `.tmp-`, the trash
        of a cut-short delete); an `.old-` version whose swap was cut short before the new
        one landed goes back in place. Returns what it removed or restored."""
        self._swept = True
        done = []
        for folder in [self.root, *(self.root / f for f in FOLDERS.values())]:
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith(SCRATCH) and _abandoned(entry):
                    done.append(self._clear(entry))
        return done

    @staticmethod
    def _clear(entry: Path) -> str:
        if entry.is_symlink():  # rmtree refuses links (and must not follow one)
            entry.unlink()
            return f"removed {entry}"
        if entry.name.startswith(".old-"):
            final = entry.parent / entry.name[len(".old-") :].rsplit("-", 3)[0]
            if not final.exists() and (entry / MANIFEST).exists():
                os.replace(entry, final)
                return f"restored {final}"
        shutil.rmtree(entry, ignore_errors=True)
        return f"removed {entry}"

    # -- read -----------------------------------------------------------------------
    def manifest(self, name: str) -> Manifest:
        path = self.path(name)
        if not (path / MANIFEST).exists():
            raise NotFoundError(
                f"no adapter {name!r} in store {self.root} (looked for {path / MANIFEST}); train it first or check the name"
            )
        try:
            return Manifest(**json.loads((path / MANIFEST).read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise StoreError(
                f"manifest {path / MANIFEST} is corrupt ({e}); retrain adapter {name!r}"
            ) from e

    def verify(self, name: str, base_fingerprint: str | None = None) -> Path:
        """Check an adapter's weights against its manifest and, if given, the base.
        Returns its directory; raises StoreError naming the problem and the fix."""
        m = self.manifest(name)
        path = self.path(name)
        if base_fingerprint is not None and m.base_fingerprint != base_fingerprint:
            raise StoreError(
                f"adapter {name!r} was trained for base {m.base_fingerprint}, but the loaded base is "
                f"{base_fingerprint}; load the base it was trained on or retrain the adapter"
            )
        for rel, digest in m.sha256.items():
            f = path / rel
            if not f.exists() or _sha256(f) != digest:
                raise StoreError(
                    f"adapter {name!r}: {f} is missing or corrupt (sha256 mismatch); retrain or restore it"
                )
        return path

    def delete(self, name: str) -> bool:
        """Remove an adapter for good (a user's right to be forgotten). True if it existed."""
        path = self.path(name)
        if path.is_symlink():  # a link put there by hand (dangling or not): the link goes,
            path.unlink()  # never what it points to, which is not the store's to delete
            return True
        if not path.exists():
            return False
        trash = _scratch_name(".del-", path)
        os.replace(path, trash)
        shutil.rmtree(trash)
        return True
