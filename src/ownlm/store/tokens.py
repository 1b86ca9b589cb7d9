"""API tokens of a run: one per user (reaches that user's adapter only) and admin tokens.

A token reads `ownlm-<id>-<secret>`. `<run>/tokens.json` keeps, per id, the user (or
admin), a random salt and scrypt(secret, salt); never the secret. Lookup is by id, the
check a constant-time compare. The file is rewritten atomically (temp + rename).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ownlm.errors import ConfigError

TOKENS_FILE = "tokens.json"


def _hash(secret: str, salt: bytes) -> str:
    return hashlib.scrypt(secret.encode(), salt=salt, n=2**14, r=8, p=1).hex()


@dataclass(frozen=True)
class Principal:
    token_id: str
    user: str | None  # None for admin tokens
    admin: bool

    def may_use(self, user: str | None) -> bool:
        """Admins reach every model; a user's token the base and their own adapter."""
        return self.admin or user is None or user == self.user


class TokenStore:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / TOKENS_FILE
        self._lock = threading.Lock()
        self._verified: dict[str, Principal] = {}  # token -> principal, saves scrypt per request

    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text())

    def _write(self, data: dict) -> None:
        tmp = self.path.with_suffix(f".tmp-{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(data, indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def create(self, user: str | None = None, admin: bool = False) -> str:
        if admin == bool(user):
            raise ConfigError(
                f"a token is for exactly one of a user or an admin, got user={user!r} admin={admin}; "
                "pass user='42' or admin=True"
            )
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        with self._lock:
            data = self._read()
            data[token_id] = {
                "user": user,
                "admin": admin,
                "salt": salt.hex(),
                "scrypt": _hash(secret, salt),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            self._write(data)
        return f"ownlm-{token_id}-{secret}"

    def has_admin(self) -> bool:
        return any(e.get("admin") for e in self._read().values())

    def revoke_user(self, user: str) -> int:
        """Remove every token of `user` (kept mode 600, under the lock); returns how many."""
        with self._lock:
            data = self._read()
            keep = {k: v for k, v in data.items() if v.get("user") != user}
            if len(keep) != len(data):
                self._write(keep)
            self._verified = {t: p for t, p in self._verified.items() if p.user != user}
            return len(data) - len(keep)

    def check(self, token: str) -> Principal | None:
        if token in self._verified:
            return self._verified[token]
        parts = token.split("-", 2)
        if len(parts) != 3 or parts[0] != "ownlm":
            return None
        entry = self._read().get(parts[1])
        if entry is None:
            return None
        if not hmac.compare_digest(_hash(parts[2], bytes.fromhex(entry["salt"])), entry["scrypt"]):
            return None
        principal = Principal(parts[1], entry.get("user"), bool(entry.get("admin")))
        self._verified[token] = principal
        return principal
