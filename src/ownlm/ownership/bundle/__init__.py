"""A user's portable ownership bundle: one tar archive holding everything a run stores
for them, that checks itself on import.

    ownlm_bundle.json            the index: user, the base it belongs to (fingerprint and
                                 the sha256 of its files), each adapter's variant and
                                 base, and the sha256 of every other member
    adapters/<variant>/<file>    the user's stored adapter of each variant, as stored:
                                 PEFT files, ownlm.json (fingerprint, sha256), PROPER's
                                 router files
    profile.json                 the profile ownlm builds from their history (prompts
                                 show it) and the digest of the history the adapters saw
    history.jsonl                with `with_history`: the user, one line of the generic
                                 JSONL layout (docs/data.md), from which the retrieval
                                 index and profile are rebuilt

ownlm stores no retrieval index or profile: both are rebuilt from the history whenever
they are needed, so the history is their state. `import_bundle` refuses, with one line,
an archive that is not this (a member that is not a plain file, an absolute or `..`
name, a member the index does not list or lists but lacks, any sha256 mismatch) or that
belongs to another base; it swaps the adapters in all together or not at all, even
when killed (`restore.py`). The index is not signed: it proves the archive is whole and
unchanged since it was written together with it, not who wrote it. So a crafted archive
(its index re-sealed) gets no further than a real one could: the user id must be one a
data file could hold (`ownlm.data.checks`), an adapter holds only the files its manifest
vouches for (its weights and PEFT config by sha256, plus PEFT's README.md and PROPER's
router JSON: never a pickle), its weights must parse as safetensors, and the archive's
headers must declare at most MAX_BUNDLE_BYTES in MAX_MEMBERS members before anything is
read (a gzip bomb).
"""

from ownlm.ownership.bundle.archive import (
    FORMAT,
    INDEX,
    Bundled,
    base_meta,
    expected_fingerprint,
    history_line,
    read_bundle,
    write_bundle,
)
from ownlm.ownership.bundle.restore import Imported, import_bundle

__all__ = [
    "FORMAT",
    "INDEX",
    "Bundled",
    "Imported",
    "base_meta",
    "expected_fingerprint",
    "history_line",
    "import_bundle",
    "read_bundle",
    "write_bundle",
]
