"""Outputs a long command writes beside a run (a study, the groups view), kept only
when no user it read was forgotten while it ran."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm.errors import StoreError
from ownlm.store.guard import record_lock

if TYPE_CHECKING:
    from ownlm.run import Run


@contextlib.contextmanager
def guarded_outputs(run: Run, folder: Path):
    """Run the block; then, when a user was forgotten while it ran (`Run.
    check_forgotten_since`), remove the files it wrote or changed in `folder` (they may
    name them) and raise the StoreError that says to run it again."""
    before = _stamps(folder)
    yield
    with record_lock(run.dir):
        try:
            run.check_forgotten_since(f"what it wrote in {folder}")
        except StoreError:
            for path, stamp in _stamps(folder).items():
                if before.get(path) != stamp:
                    path.unlink(missing_ok=True)
            raise


def _stamps(folder: Path) -> dict[Path, tuple]:
    """Each file below `folder` with its (mtime, size, inode)."""
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.rglob("*"):
        if path.is_file():
            st = path.stat()
            out[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
    return out
