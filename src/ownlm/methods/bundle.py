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
belongs to another base; each adapter is written through the store's atomic swap. The
index is not signed: it proves the archive is whole and unchanged since it was written
together with it, not who wrote it. So a crafted archive (its index re-sealed) gets no
further than a real one could: the user id must be one a data file could hold
(`ownlm.data.checks`), an adapter holds only the files its manifest vouches for (its
weights and PEFT config by sha256, plus PEFT's README.md and PROPER's router JSON: never
a pickle), its weights must parse as safetensors, and the archive's headers must declare
at most MAX_BUNDLE_BYTES in MAX_MEMBERS members before anything is read (a gzip bomb).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from ownlm import __version__
from ownlm.backbone.checksum import META_FILE, read_base_meta
from ownlm.data.checks import USER_ID_RULE, user_id_problem
from ownlm.errors import ConfigError, NotFoundError, StoreError
from ownlm.methods.forget import adapter_stores, variant_of
from ownlm.methods.proper.groups import stage2_digest
from ownlm.store import AdapterStore, Manifest

INDEX = "ownlm_bundle.json"
FORMAT = "ownlm-bundle/1"
MANIFEST = "ownlm.json"  # the store's manifest file in each adapter directory
MAX_INDEX_BYTES = 16 << 20
MAX_BUNDLE_BYTES = 4 << 30  # the members' sizes together, as their headers declare them
MAX_MEMBERS = 1000
# files an adapter directory may hold besides those its manifest's sha256 lists
UNHASHED = {"README.md": ("oppu", "peft", "proper-user", "proper-input")} | {
    "proper_router.json": ("proper-user", "proper-input")
}
VARIANTS = ("oppu", "peft", "proper-user", "proper-input")  # adapters/<variant>/ members


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / "base" / META_FILE
    if not path.exists():
        raise NotFoundError(
            f"run {run_dir} has no trained base ({path}); train stage 1 first: "
            f"`ownlm train -c {Path(run_dir) / 'config.yaml'} --stages population`"
        )
    return read_base_meta(path.parent)


def expected_fingerprint(run_dir: Path, variant: str) -> str:
    """What a user adapter of `variant` must have been trained for in this run: the
    base's fingerprint, and for PROPER the stage-2 weights too (`groups_fingerprint`)."""
    fp = base_meta(run_dir)["fingerprint"]
    if not variant.startswith("proper-"):
        return fp
    store = AdapterStore(Path(run_dir) / "adapters")
    if not store.exists("router"):
        raise StoreError(f"run {run_dir} has no PROPER stage 2, which {variant} adapters need")
    return f"{fp}+{stage2_digest(store)}"


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
    for store_dir in adapter_stores(run_dir):
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


def _user_members(run, user_id: str, members: dict, with_history: bool) -> None:
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


def write_bundle(run, user_id: str, path: Path, with_history: bool = False) -> Bundled:
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
    index["members"] = {name: _sha(data) for name, data in sorted(members.items())}
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


# -- import --------------------------------------------------------------------------------
@dataclass
class Imported:
    user: str
    adapters: list[str]  # variants written
    replaced: list[str]  # of those, the ones that replaced the user's adapter already there
    history: bool  # the bundle carries the user's history (not written into the run)

    def summary(self, bundle: Path, run_dir: Path) -> str:
        swapped = f" (replaced the run's {', '.join(self.replaced)})" if self.replaced else ""
        lines = [
            f"imported user {self.user}'s {', '.join(self.adapters)} adapter into "
            f"{run_dir}{swapped}; "
            "every member matched its sha256"
        ]
        if self.history:
            lines.append(
                f"the bundle also holds the user's history, which ownlm does not write into "
                f"the run (it reads users from its config's data): `tar -xOf {bundle} "
                "history.jsonl` prints it as one JSONL line to add to that data"
            )
        return "\n".join(lines)


def _refuse(bundle: Path, why: str) -> StoreError:
    return StoreError(f"bundle {bundle} refused: {why}")


def _member_name(bundle: Path, info: tarfile.TarInfo) -> str:
    """The member's name, if it is a regular file with a plain relative name."""
    if not info.isreg():
        raise _refuse(bundle, f"member {info.name!r} is not a regular file")
    name = info.name
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or p.as_posix() != name:
        raise _refuse(bundle, f"member {name!r} has an unsafe path (absolute or with ..)")
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
                    raise _refuse(bundle, f"it has more than {MAX_MEMBERS} members")
                if total > MAX_BUNDLE_BYTES:
                    raise _refuse(
                        bundle,
                        f"its members are larger than {MAX_BUNDLE_BYTES} bytes together "
                        "(a user's adapters are far smaller)",
                    )
            data = {}
            for info in infos:
                name = _member_name(bundle, info)
                if name in data:
                    raise _refuse(bundle, f"member {name!r} appears twice")
                if name == INDEX and info.size > MAX_INDEX_BYTES:
                    raise _refuse(bundle, f"its index is {info.size} bytes, not an ownlm index")
                data[name] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _refuse(bundle, f"not a readable tar archive ({first.rstrip(':')})") from e
    index = _index(bundle, data)
    members = {k: v for k, v in data.items() if k != INDEX}
    extra = sorted(set(members) - set(index["members"]))
    missing = sorted(set(index["members"]) - set(members))
    if extra or missing:
        what = f"unexpected member {extra[0]!r}" if extra else f"member {missing[0]!r} missing"
        raise _refuse(bundle, f"{what} (the index lists every member)")
    for name, blob in members.items():
        if _sha(blob) != index["members"][name]:
            raise _refuse(
                bundle, f"member {name!r} does not match its sha256 (tampered or corrupt)"
            )
    return index, members


def _index(bundle: Path, data: dict[str, bytes]) -> dict:
    if INDEX not in data:
        raise _refuse(bundle, f"no {INDEX} (not an ownlm bundle)")
    try:
        index = json.loads(data[INDEX])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _refuse(bundle, f"{INDEX} is not valid JSON ({e})") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise _refuse(bundle, f"{INDEX} is not an {FORMAT} index")
    if not isinstance(index.get("members"), dict) or not isinstance(index.get("adapters"), dict):
        raise _refuse(bundle, f"{INDEX} lacks its members or adapters")
    if not isinstance(index.get("base"), dict):
        raise _refuse(bundle, f"{INDEX} does not name the base it belongs to")
    return index


@dataclass
class _Plan:
    store: AdapterStore
    variant: str
    files: dict[str, bytes]  # the adapter's files, the manifest aside
    manifest: Manifest


def _plan(bundle: Path, run_dir: Path, user: str, variant: str, members: dict) -> _Plan:
    """Check one bundled adapter against the run before anything is written."""
    if variant not in VARIANTS:
        raise _refuse(bundle, f"adapter variant {variant!r} is not one ownlm writes")
    prefix = f"adapters/{variant}/"
    files = {k[len(prefix) :]: v for k, v in members.items() if k.startswith(prefix)}
    if MANIFEST not in files or any("/" in rel for rel in files):
        raise _refuse(bundle, f"{prefix} is not a flat adapter directory with its {MANIFEST}")
    m = _manifest(bundle, prefix, files.pop(MANIFEST))
    if m.name != f"user:{user}":
        raise _refuse(bundle, f"{prefix} holds adapter {m.name!r}, not user {user!r}'s")
    if any(rel not in files or _sha(files[rel]) != d for rel, d in m.sha256.items()):
        raise _refuse(bundle, f"{prefix} weights do not match its manifest's sha256")
    loose = sorted(r for r in files if r not in m.sha256 and variant not in UNHASHED.get(r, ()))
    if loose:
        raise _refuse(
            bundle,
            f"{prefix}{loose[0]} is not vouched for by the adapter's manifest (ownlm stores "
            "only the files it checksums, PEFT's README.md and PROPER's router JSON)",
        )
    _check_weights(bundle, prefix, files)
    want = expected_fingerprint(run_dir, variant)
    if m.base_fingerprint != want:
        raise _refuse(
            bundle,
            f"its {variant} adapter was trained for {m.base_fingerprint}, run {run_dir} has "
            f"{want} (another base or stage 2): import it into the run it came from",
        )
    store = run_dir / ("adapters" if variant == "oppu" else f"adapters-{variant}")
    return _Plan(AdapterStore(store), variant, files, m)


def _manifest(bundle: Path, prefix: str, blob: bytes) -> Manifest:
    """The adapter's manifest, each field of the type the store writes."""
    try:
        raw = json.loads(blob)
        m = Manifest(**raw) if isinstance(raw, dict) else None
    except (ValueError, TypeError, RecursionError) as e:
        raise _refuse(bundle, f"{prefix}{MANIFEST} is not an adapter manifest ({e})") from None
    shaped = (
        m is not None
        and all(isinstance(getattr(m, k), str) for k in ("name", "stage", "task", "created"))
        and isinstance(m.base_fingerprint, str)
        and isinstance(m.extra, dict)
        and isinstance(m.sha256, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in m.sha256.items())
    )
    if not shaped:
        raise _refuse(bundle, f"{prefix}{MANIFEST} is not an adapter manifest (malformed fields)")
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
                raise _refuse(
                    bundle, f"{prefix}{rel} is not a valid safetensors file ({first})"
                ) from None


def _plans(bundle: Path, run_dir: Path, index: dict, members: dict) -> list[_Plan]:
    user = index.get("user")
    if not isinstance(user, str) or not user:
        raise _refuse(bundle, f"{INDEX} names no user")
    problem = user_id_problem(user)
    if problem:  # never a folder no data file could name (a newline, a space, 300 chars)
        raise _refuse(bundle, f"its user id {user[:60]!r} {problem}; {USER_ID_RULE}")
    base = (index.get("base") or {}).get("fingerprint")
    fp = base_meta(run_dir)["fingerprint"]
    if base != fp:
        raise _refuse(
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
        raise _refuse(bundle, f"unexpected member {loose[0]!r}")
    return [_plan(bundle, run_dir, user, v, members) for v in variants]


def import_bundle(bundle: str | Path, run_dir: str | Path, replace: bool = False) -> Imported:
    """Restore a bundle's adapters into `run_dir` (same base fingerprint). An adapter the
    run already has for the user is kept unless `replace`: then the bundle's takes its
    place through the store's atomic swap (the old one stays until the new one is whole).
    Everything is checked before the first write."""
    bundle, run_dir = Path(bundle), Path(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(f"run directory {run_dir} does not exist")
    index, members = read_bundle(bundle)
    plans = _plans(bundle, run_dir, index, members)
    user = index["user"]
    name = f"user:{user}"
    there = [p for p in plans if p.store.exists(name)]
    if there and not replace:
        raise StoreError(
            f"run {run_dir} already has user {user}'s {there[0].variant} adapter "
            f"({there[0].store.path(name)}); pass --replace to swap in the bundle's"
        )
    done = Imported(user, [], [p.variant for p in there], "history.jsonl" in members)
    for p in plans:
        fields = {k: v for k, v in asdict(p.manifest).items() if k != "sha256"}
        p.store.save(name, lambda d, files=p.files: _write_files(d, files), Manifest(**fields))
        p.store.verify(name, p.manifest.base_fingerprint)
        done.adapters.append(p.variant)
    return done


def _write_files(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rel, blob in files.items():
        (directory / rel).write_bytes(blob)
