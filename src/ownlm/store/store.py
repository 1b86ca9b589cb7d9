"""The adapter store: one PEFT directory per named adapter, plus ownlm's manifest.

Layout under the store root (names are PEFT-style keys, `user:42`, `group:3`):

    population/            adapter_config.json, adapter_model.safetensors, ownlm.json
    users/42/              ...
    groups/3/              ...

Each directory loads with `peft.PeftModel.from_pretrained(base, path)` unchanged.
`ownlm.json` records the base model's fingerprint, the stage and task, and the sha256 of
every weight file; `load` refuses an adapter whose weights or base do not match.
Writes are atomic: a directory is written under a temporary name, then renamed into place.
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

MANIFEST = "ownlm.json"
FOLDERS = {"user": "users", "group": "groups"}  # name kind -> folder


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
    return sorted(p for p in directory.rglob("*.safetensors"))


class AdapterStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

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
                if (p / MANIFEST).exists()
            ]
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
        when it can): "missing", "other base", "history changed" or "corrupt: ..."."""
        if not self.exists(name):
            return "missing"
        try:
            m = self.manifest(name)
        except StoreError as e:
            return f"corrupt: {e}"
        if m.base_fingerprint != base_fingerprint:
            return "other base"
        recorded = m.extra.get("history_sha256")
        if history is not None and recorded is not None and recorded != history:
            return "history changed"
        return None

    # -- write ----------------------------------------------------------------------
    def save(self, name: str, write_fn, manifest: Manifest) -> Path:
        """Write an adapter atomically. `write_fn(tmp_dir)` writes the PEFT files
        (e.g. `lambda d: peft_model.save_pretrained(d)`); the manifest is added here."""
        final = self.path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        try:
            write_fn(tmp)
            self._flatten_peft_subdir(tmp)
            manifest.name = name
            manifest.created = manifest.created or time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
            )
            manifest.sha256 = {str(p.relative_to(tmp)): _sha256(p) for p in _weight_files(tmp)}
            if not manifest.sha256:
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
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

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
        if not path.exists():
            return False
        trash = path.parent / f".del-{path.name}-{uuid.uuid4().hex[:8]}"
        os.replace(path, trash)
        shutil.rmtree(trash)
        return True
