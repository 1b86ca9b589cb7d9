"""`ownlm import`: a user's bundle restored into a run, every variant or none.

Everything is checked before the first write (`_plans`: the index, each adapter's
manifest, weights and base). The adapters are then written under scratch names beside
their places and swapped in together (`ownlm.dirswap`): a kill at any moment leaves
every variant of the bundle in place or none, and the next import (or `recover`)
finishes or undoes a cut-short one. The user's lock is held throughout, so a `forget`
or an `update` of the user waits for it, and a user the run has forgotten is refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ownlm import dirswap
from ownlm.data.checks import USER_ID_RULE, user_id_problem
from ownlm.errors import NotFoundError, StoreError
from ownlm.ownership.bundle.archive import (
    BUNDLED,
    INDEX,
    MANIFEST,
    UNHASHED,
    base_meta,
    expected_fingerprint,
    read_bundle,
    refused,
    sha256_hex,
)
from ownlm.paths import RunPaths
from ownlm.run import forgotten_key, forgotten_keys
from ownlm.store import AdapterStore, Manifest
from ownlm.store.guard import user_lock

LOCK_WAIT = 60.0  # seconds an import waits for another command writing the user


@dataclass
class Imported:
    user: str
    adapters: list[str]  # variants written
    replaced: list[str]  # of those, the ones that replaced the user's adapter already there
    history: bool  # the bundle carries the user's history (not written into the run)
    unchanged: list[str] = field(default_factory=list)  # already in place, byte for byte
    recovered: list[str] = field(default_factory=list)  # cut-short imports finished/undone

    def summary(self, bundle: Path, run_dir: Path) -> str:
        lines = [f"before it: {line}" for line in self.recovered]
        if self.adapters:
            swapped = f" (replaced the run's {', '.join(self.replaced)})" if self.replaced else ""
            lines.append(
                f"imported user {self.user}'s {', '.join(self.adapters)} adapter into "
                f"{run_dir}{swapped}; every member matched its sha256"
            )
        if self.unchanged:
            lines.append(
                f"user {self.user}'s {', '.join(self.unchanged)} adapter was already in "
                f"{run_dir}, the same as the bundle's: left as it is"
            )
        if self.history:
            lines.append(
                f"the bundle also holds the user's history, which ownlm does not write into "
                f"the run (it reads users from its config's data): `tar -xOf {bundle} "
                "history.jsonl` prints it as one JSONL line to add to that data"
            )
        return "\n".join(lines)


@dataclass
class _Plan:
    store: AdapterStore
    variant: str
    files: dict[str, bytes]  # the adapter's files, the manifest aside
    manifest: Manifest


def _plan(bundle: Path, run_dir: Path, user: str, variant: str, members: dict) -> _Plan:
    """Check one bundled adapter against the run before anything is written."""
    if variant not in BUNDLED:
        raise refused(bundle, f"adapter variant {variant!r} is not one ownlm writes")
    prefix = f"adapters/{variant}/"
    files = {k[len(prefix) :]: v for k, v in members.items() if k.startswith(prefix)}
    if MANIFEST not in files or any("/" in rel for rel in files):
        raise refused(bundle, f"{prefix} is not a flat adapter directory with its {MANIFEST}")
    m = _manifest(bundle, prefix, files.pop(MANIFEST))
    if m.name != f"user:{user}":
        raise refused(bundle, f"{prefix} holds adapter {m.name!r}, not user {user!r}'s")
    if any(rel not in files or sha256_hex(files[rel]) != d for rel, d in m.sha256.items()):
        raise refused(bundle, f"{prefix} weights do not match its manifest's sha256")
    loose = sorted(r for r in files if r not in m.sha256 and variant not in UNHASHED.get(r, ()))
    if loose:
        raise refused(
            bundle,
            f"{prefix}{loose[0]} is not vouched for by the adapter's manifest (ownlm stores "
            "only the files it checksums, PEFT's README.md and PROPER's router JSON)",
        )
    _check_weights(bundle, prefix, files)
    want = expected_fingerprint(run_dir, variant)
    if m.base_fingerprint != want:
        raise refused(
            bundle,
            f"its {variant} adapter was trained for {m.base_fingerprint}, run {run_dir} has "
            f"{want} (another base or stage 2): import it into the run it came from",
        )
    store = RunPaths(run_dir).store(variant)
    return _Plan(AdapterStore(store), variant, files, m)


def _manifest(bundle: Path, prefix: str, blob: bytes) -> Manifest:
    """The adapter's manifest, each field of the type the store writes."""
    try:
        raw = json.loads(blob)
        m = Manifest(**raw) if isinstance(raw, dict) else None
    except (ValueError, TypeError, RecursionError) as e:
        raise refused(bundle, f"{prefix}{MANIFEST} is not an adapter manifest ({e})") from None
    shaped = (
        m is not None
        and all(isinstance(getattr(m, k), str) for k in ("name", "stage", "task", "created"))
        and isinstance(m.base_fingerprint, str)
        and isinstance(m.extra, dict)
        and isinstance(m.sha256, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in m.sha256.items())
    )
    if not shaped:
        raise refused(bundle, f"{prefix}{MANIFEST} is not an adapter manifest (malformed fields)")
    return m


def _check_weights(bundle: Path, prefix: str, files: dict[str, bytes]) -> None:
    """Every weight file parses as safetensors (shapes consistent with its bytes)."""
    from safetensors.torch import load

    for rel, blob in files.items():
        if rel.endswith(".safetensors"):
            try:
                load(blob)
            except Exception as e:  # safetensors raises its own error types
                first = (str(e).splitlines() or [type(e).__name__])[0][:160]
                raise refused(
                    bundle, f"{prefix}{rel} is not a valid safetensors file ({first})"
                ) from None


def _plans(bundle: Path, run_dir: Path, index: dict, members: dict) -> list[_Plan]:
    user = index.get("user")
    if not isinstance(user, str) or not user:
        raise refused(bundle, f"{INDEX} names no user")
    problem = user_id_problem(user)
    if problem:  # never a folder no data file could name (a newline, a space, 300 chars)
        raise refused(bundle, f"its user id {user[:60]!r} {problem}; {USER_ID_RULE}")
    base = (index.get("base") or {}).get("fingerprint")
    fp = base_meta(run_dir)["fingerprint"]
    if base != fp:
        raise refused(
            bundle,
            f"it belongs to base {base}, run {run_dir} has base {fp}: import it into the run "
            "it came from, or one whose base has the same fingerprint",
        )
    variants = list(index["adapters"])
    loose = [
        n
        for n in members
        if not any(n.startswith(f"adapters/{v}/") for v in variants)
        and n not in ("profile.json", "history.jsonl")
    ]
    if loose:
        raise refused(bundle, f"unexpected member {loose[0]!r}")
    return [_plan(bundle, run_dir, user, v, members) for v in variants]


def import_bundle(bundle: str | Path, run_dir: str | Path, replace: bool = False) -> Imported:
    """Restore a bundle's adapters into `run_dir` (same base fingerprint), all or none.
    An adapter the run already has for the user, other than the bundle's, is kept unless
    `replace`; one equal to the bundle's is left as it is, so that running an import
    again is harmless. Everything is checked before the first write."""
    bundle, run_dir = Path(bundle), Path(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(f"run directory {run_dir} does not exist")
    index, members = read_bundle(bundle)
    plans = _plans(bundle, run_dir, index, members)
    user = index["user"]
    with user_lock(run_dir, user, "import", wait=LOCK_WAIT):
        recovered = dirswap.recover(run_dir)
        if forgotten_key(user) in forgotten_keys(run_dir):
            raise StoreError(
                f"user {user} was forgotten from run {run_dir} (`ownlm forget`), and a "
                "forgotten user is never brought back into it; import the bundle into "
                "another run"
            )
        done = Imported(user, [], [], "history.jsonl" in members, recovered=recovered)
        _swap(plans, run_dir, f"user:{user}", replace, done)
    return done


def _swap(plans: list[_Plan], run_dir: Path, name: str, replace: bool, done: Imported) -> None:
    """Write the plans' adapters that differ from the stored ones, together."""
    todo = []
    for p in plans:
        if _same(p, name):
            done.unchanged.append(p.variant)
        elif p.store.exists(name) and not replace:
            raise StoreError(
                f"run {run_dir} already has user {name[5:]}'s {p.variant} adapter, another "
                f"than the bundle's ({p.store.path(name)}); pass --replace to swap in the "
                "bundle's"
            )
        else:
            todo.append(p)
            done.adapters.append(p.variant)
            if p.store.exists(name):
                done.replaced.append(p.variant)
    by_target = {p.store.path(name): p for p in todo}
    if by_target:
        dirswap.swap_in(run_dir, list(by_target), lambda d, t: _stage(d, by_target[t], name))


def _same(p: _Plan, name: str) -> bool:
    """The run holds exactly the bundle's adapter already (weights and base)."""
    try:
        m = p.store.manifest(name)
        p.store.verify(name)
    except StoreError:
        return False
    return m.sha256 == p.manifest.sha256 and m.base_fingerprint == p.manifest.base_fingerprint


def _stage(directory: Path, p: _Plan, name: str) -> None:
    """The adapter's directory as the store writes one: its files, then its manifest,
    each read back against the sha256 the manifest vouches for."""
    directory.mkdir()
    for rel, blob in p.files.items():
        (directory / rel).write_bytes(blob)
    manifest = {**asdict(p.manifest), "name": name}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for rel, digest in p.manifest.sha256.items():
        if sha256_hex((directory / rel).read_bytes()) != digest:
            raise StoreError(f"{directory / rel} did not read back as written; check the disk")
