"""API tokens of a run: one per user (reaches that user's adapter only) and admin tokens.

A token reads `ownlm-<id>-<secret>`. `<run>/tokens.json` (mode 600) keeps, per id, the
user (or admin), a random salt, scrypt(secret, salt) and when it was made; never the
secret. Lookup is by id, the check a constant-time compare.

The CLI (`ownlm token revoke`, `ownlm forget`) and a running server are different
processes over the same file, so: every read-modify-write holds an exclusive `flock` on
`tokens.json.lock`; the file is replaced atomically (temp + rename) with an mtime that
always moves forward; and a `TokenStore` re-reads the file whenever its (mtime, inode,
size) changed. A revoked token therefore fails on the very next check, without restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ownlm.errors import ConfigError, NotFoundError, StoreError
from ownlm.files import sweep_files, write_file
from ownlm.paths import TOKENS, RunPaths
from ownlm.store.guard import ForgottenUsers, user_lock
from ownlm.store.store import AdapterStore

try:  # POSIX; elsewhere only threads of one process are kept apart
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

TOKENS_FILE = TOKENS
# scrypt(n=2**14, r=8) takes 16 MiB and ~50 ms of a core: at most this many at once, so
# a flood of wrong secrets cannot take the server's memory or every core
_SCRYPT_SLOTS = threading.BoundedSemaphore(2)


def _hash(secret: str, salt: bytes) -> str:
    with _SCRYPT_SLOTS:
        return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1).hex()


def well_formed(entry) -> bool:
    """An entry as `create` writes it. Any other (a file edited by hand) never
    authenticates; `tokens()` marks it and `revoke` removes it."""
    if not isinstance(entry, dict) or not isinstance(entry.get("admin", False), bool):
        return False
    salt, digest, user = entry.get("salt"), entry.get("scrypt"), entry.get("user")
    try:
        bytes.fromhex(salt)
    except (TypeError, ValueError):
        return False
    if not (isinstance(digest, str) and digest) or not (user is None or isinstance(user, str)):
        return False
    return bool(entry.get("admin")) != bool(user)  # exactly one of admin or a user


@dataclass(frozen=True)
class Principal:
    token_id: str
    user: str | None  # None for admin tokens
    admin: bool

    def may_use(self, user: str | None) -> bool:
        """Admins reach every model; a user's token the base and their own adapter."""
        return self.admin or user is None or user == self.user


def stored_users(run_dir: str | Path) -> set[str]:
    """Users with an adapter in any store of the run (`<run>/adapters*/users/<id>/`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return set()
    stores = RunPaths(run_dir).stores()
    return {n.partition(":")[2] for s in stores for n in AdapterStore(s).names("user")}


class TokenStore:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / TOKENS_FILE
        self._lock = threading.Lock()  # guards the caches below
        self._seen: tuple | None = None  # the file's signature the caches were built from
        self._data: dict | None = None  # the parsed file
        self._verified: dict[str, Principal] = {}  # token -> principal, saves scrypt per request

    # -- the file -------------------------------------------------------------------
    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8 included
            raise StoreError(
                f"{self.path} is corrupt ({str(e)[:120]}); restore it, or delete it and "
                "create new tokens"
            ) from None
        if not isinstance(data, dict):
            raise StoreError(
                f"{self.path} is corrupt (a JSON {type(data).__name__}, not an object of "
                "tokens); restore it, or delete it and create new tokens"
            )
        return data

    def _write(self, data: dict) -> None:
        """Replace the file atomically, mode 600 from its first byte, with an mtime past
        the old one (readers compare signatures, and two writes may share a clock tick)."""
        old = self._signature()
        text = json.dumps(data, indent=2)
        write_file(self.path, text, mode=0o600, mtime_after=old[0] if old else None)

    @contextlib.contextmanager
    def _exclusive(self):
        """Hold the run's token lock (threads and processes) for a read-modify-write."""
        if not self.run_dir.is_dir():
            raise NotFoundError(
                f"run directory {self.run_dir} does not exist; pass a run's directory"
            )
        fd = os.open(self.path.with_name(TOKENS_FILE + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            sweep_files(self.run_dir)  # a killed writer's copy of the file (it names users)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _entries(self) -> tuple[dict, tuple | None]:
        """The file's entries and the signature they were read at, re-read when the file
        changed since last time; a change also forgets every verified token (one may have
        been revoked)."""
        sig = self._signature()  # stat first: a change after it only causes one more re-read
        with self._lock:
            if sig != self._seen or self._data is None:
                self._data, self._seen = self._read(), sig
                self._verified = {}
            return self._data, self._seen

    # -- tokens ---------------------------------------------------------------------
    def create(self, user: str | None = None, admin: bool = False) -> str:
        if admin == bool(user):
            raise ConfigError(
                f"a token is for exactly one of a user or an admin, got user={user!r} admin={admin}; "
                "pass user='42' or admin=True"
            )
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        entry = {
            "user": user,
            "admin": admin,
            "salt": salt.hex(),
            "scrypt": _hash(secret, salt),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with self._exclusive():
            data = self._read()
            data[token_id] = entry
            self._write(data)
        return f"ownlm-{token_id}-{secret}"

    def create_for_user(self, user: str, data_users: Callable[[], Iterable[str]] = tuple) -> str:
        """A token for a user the run knows (`check_known`), checked and written under
        the user's lock: a `forget` of them runs wholly before or after, never between."""
        with user_lock(self.run_dir, user, "token create", wait=30.0):
            self.check_known(user, data_users)
            return self.create(user)

    def check_known(self, user: str, data_users: Callable[[], Iterable[str]] = tuple) -> None:
        """Refuse a token for a user the run does not know. Known: an adapter in one of
        the run's stores, or (`data_users`, asked only when needed) a user of its data."""
        if user in ForgottenUsers(self.run_dir):
            raise NotFoundError(
                f"user {user!r} was forgotten by run {self.run_dir} (if that `ownlm forget` "
                "was cut short, run it again): no token is made for them"
            )
        if user in stored_users(self.run_dir) or user in set(data_users()):
            return
        raise NotFoundError(
            f"user {user!r} is unknown to run {self.run_dir}: a user token is made only for a "
            f"user with an adapter in {self.run_dir}/adapters*/users/ or a user of the run's "
            f"data; list them with `ownlm token users --run-dir {self.run_dir}`"
        )

    def tokens(self) -> list[dict]:
        """Every token's id, user (None for admin), admin flag and creation time; never
        secrets nor hashes. Oldest first."""
        rows = []
        for k, v in self._read().items():
            ok = well_formed(v)
            row = {
                "id": k,
                "user": v.get("user") if ok else None,
                "admin": bool(v.get("admin")) if ok else False,
                "created": str(v.get("created", "")) if ok else "",
            }
            rows.append(row if ok else row | {"malformed": True})  # never accepted: revoke it
        return sorted(rows, key=lambda r: (r["created"], r["id"]))

    def has_admin(self) -> bool:
        return any(well_formed(e) and e.get("admin") for e in self._read().values())

    def revoke(self, token_id: str) -> None:
        """Remove one token by its id (`ownlm token list` shows ids)."""
        with self._exclusive():
            data = self._read()
            if token_id not in data:
                raise NotFoundError(
                    f"no token with id {token_id!r} in {self.path}; "
                    f"`ownlm token list --run-dir {self.run_dir}` lists them"
                )
            del data[token_id]
            self._write(data)

    def revoke_user(self, user: str) -> int:
        """Remove every token of `user`; returns how many."""
        with self._exclusive():
            data = self._read()
            keep = {
                k: v for k, v in data.items() if not (isinstance(v, dict) and v.get("user") == user)
            }
            if len(keep) != len(data):
                self._write(keep)
            return len(data) - len(keep)

    def check(self, token: str) -> Principal | None:
        """Who `token` belongs to, or None; a token revoked by any process fails at once."""
        entries, _ = self._entries()
        with self._lock:
            hit = self._verified.get(token)
        if hit is not None:
            return hit
        parts = token.split("-", 2)
        if len(parts) != 3 or parts[0] != "ownlm" or parts[1] not in entries:
            return None
        entry = entries[parts[1]]
        if not well_formed(entry):
            return None
        if not hmac.compare_digest(_hash(parts[2], bytes.fromhex(entry["salt"])), entry["scrypt"]):
            return None
        entries, seen = self._entries()  # scrypt took a while: is the token still there?
        if entries.get(parts[1]) != entry:
            return None
        principal = Principal(parts[1], entry.get("user"), bool(entry.get("admin")))
        with self._lock:
            if self._seen == seen:  # else the file changed since: do not cache a stale answer
                self._verified[token] = principal
        return principal
