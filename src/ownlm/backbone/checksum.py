"""The merged base's integrity: the sha256 of every file of `base/`, recorded in
`ownlm_base.json` when the base is written and checked when it is loaded.

Adapters are checked against the base's *fingerprint*, which samples a few values per
tensor: cheap, but blind to a flipped byte in the weights. The checksums close that gap,
so evaluation and serving refuse a corrupt or modified base instead of using it silently.
Hashing costs about a second per GB of weights (a few seconds for a 1-3B base); each
file is hashed once per process, remembered by (path, size, mtime, ctime, inode), so a
run that writes its base and loads it again, or loads it for many commands in one
process, pays once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ownlm.errors import StoreError
from ownlm.log import get_logger

log = get_logger(__name__)
META_FILE = "ownlm_base.json"
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns, ctime_ns, inode) -> sha256
_WARNED: set[str] = set()  # bases without checksums already warned about


def _identity(path: Path) -> tuple:
    st = os.stat(path)
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; hashed once per process while the file is unchanged on disk (any
    write changes its mtime and ctime, a replacement its inode)."""
    path = Path(path)
    key = _identity(path)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def base_checksums(base_dir: str | Path) -> dict[str, str]:
    """{relative path: sha256} of every file of a saved base but its own meta file: the
    weights, and the config and tokenizer files that decide what the weights mean."""
    base_dir = Path(base_dir)
    files = sorted(p for p in base_dir.rglob("*") if p.is_file() and p.name != META_FILE)
    return {p.relative_to(base_dir).as_posix(): file_sha256(p) for p in files}


KINDS = ("causal", "encoder")


def _meta_problem(meta) -> str | None:
    """What makes a parsed ownlm_base.json unusable (None when nothing does)."""
    if not isinstance(meta, dict):
        return f"it is a JSON {type(meta).__name__}, not an object"
    if meta.get("kind") not in KINDS:
        return f"its 'kind' is {str(meta.get('kind'))[:40]!r}, not one of {list(KINDS)}"
    for key in ("name", "fingerprint"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            return f"it has no {key!r}"
    recorded = meta.get("sha256")
    if recorded is not None and not (
        isinstance(recorded, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items())
    ):
        return "its 'sha256' is not a table of file -> digest"
    for rel in recorded or {}:
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts:
            return f"its 'sha256' names {rel[:80]!r}, a file outside the base"
    return None


def _corrupt_meta(base_dir: Path, why: str) -> StoreError:
    return StoreError(
        f"{base_dir / META_FILE} is corrupt ({why}): the base cannot be trusted. Restore "
        "it from a backup, or retrain from stage 1 (`ownlm train -c CONFIG --stages "
        "population,users`, with `groups` too for PROPER)"
    )


def read_base_meta(base_dir: str | Path) -> dict:
    """The parsed ownlm_base.json of a base, checked for the fields ownlm reads;
    StoreError (one line, the fix) when it is unreadable or malformed."""
    base_dir = Path(base_dir)
    try:
        meta = json.loads((base_dir / META_FILE).read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 included
        raise _corrupt_meta(base_dir, f"not JSON: {str(e)[:80]}") from None
    problem = _meta_problem(meta)
    if problem:
        raise _corrupt_meta(base_dir, problem)
    return meta


def verify_base(base_dir: str | Path, meta: dict) -> None:
    """Check the files of `base_dir` against the sha256 recorded in its meta (`meta`,
    the parsed ownlm_base.json). A base written before checksums were recorded loads
    with a warning; a missing or changed file raises StoreError naming it and the fix,
    and so does a meta without the fields ownlm reads."""
    base_dir = Path(base_dir)
    problem = _meta_problem(meta)
    if problem:
        raise _corrupt_meta(base_dir, problem)
    recorded = meta.get("sha256")
    if recorded is None:
        if str(base_dir.resolve()) not in _WARNED:
            _WARNED.add(str(base_dir.resolve()))
            log.warning(
                f"base {base_dir} has no recorded checksums (written before ownlm recorded "
                "them): its weights are loaded unverified. Retrain stage 1 (`ownlm train "
                "-c CONFIG --stages population`) to record them."
            )
        return
    for rel, digest in sorted(recorded.items()):
        f = base_dir / rel
        if not f.is_file() or file_sha256(f) != digest:
            state = "is missing" if not f.is_file() else "does not match its recorded sha256"
            raise StoreError(
                f"base file {f} {state} ({base_dir / META_FILE}): the base is corrupt or was "
                "modified. Restore the file from a backup, or retrain from stage 1 (`ownlm "
                "train -c CONFIG --stages population,users`, with `groups` too for PROPER)"
            )
