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


def verify_base(base_dir: str | Path, meta: dict) -> None:
    """Check the files of `base_dir` against the sha256 recorded in its meta (`meta`,
    the parsed ownlm_base.json). A base written before checksums were recorded loads
    with a warning; a missing or changed file raises StoreError naming it and the fix."""
    base_dir = Path(base_dir)
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
