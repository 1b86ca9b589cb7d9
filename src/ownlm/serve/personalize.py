"""Retrieval + profile for served users, as in evaluation (OPPU Sec. 3.2).

A run that has user data (its config.yaml names a dataset) gives each of its users a
BM25 index over their history and a profile; the request text becomes the task input
of `ownlm.retrieval.prompts.personal_prompt` (the prompt evaluation builds), which the
server puts in the run's prompt format as evaluation does. A user's index and profile are rebuilt
when `ownlm update` has added to their history since (their updates file's stat, checked
on each request, as the adapter cache checks the adapter's manifest).
"""

from __future__ import annotations

import threading
from pathlib import Path

from ownlm.log import get_logger

log = get_logger(__name__)


class Personalizer:
    def __init__(self, task, users: dict, k: int, use_profile: bool, run_dir: Path | None = None):
        """`users`: the data file's users; with `run_dir`, their `ownlm update` items
        are added to their history when their context is built."""
        self.task, self.users, self.k, self.use_profile = task, users, k, use_profile
        self.run_dir = run_dir
        self._contexts: dict = {}  # user id -> UserContext, built on the user's first request
        self._seen: dict = {}  # user id -> the updates file's stat its context was built from
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: Path) -> Personalizer | None:
        """None when the run has no config or its data cannot be loaded (served bare)."""
        cfg_file = Path(run_dir) / "config.yaml"
        if not cfg_file.exists():
            return None
        try:
            from ownlm.run import Run

            run = Run.open(run_dir)  # read-only: serving must not touch the run
            users = {u.user_id: u for u in run.file_dataset.users}
            return cls(run.task, users, run.cfg.retrieval_k, run.cfg.profile, Path(run_dir))
        except Exception as e:  # the server still serves, without personal context
            log.warning(
                "run %s: user data not loaded (%s); serving without retrieval/profile",
                run_dir,
                e,
                extra={"markup": False},  # the error's text may hold brackets
            )
            return None

    def has(self, user: str | None) -> bool:
        return user is not None and user in self.users

    def built(self) -> set[str]:
        """Users whose retrieval index and profile are in memory."""
        with self._lock:
            return set(self._contexts)

    def forget(self, user: str) -> None:
        """Drop a forgotten user's index, profile and history records from memory; they
        are not personalized again by this server."""
        with self._lock:
            self._contexts.pop(user, None)
            self._seen.pop(user, None)
            self.users.pop(user, None)

    def prompt(self, user: str, text: str) -> str:
        """The user's prompt for `text` (a `data.prompt.Prompt`, with its fallbacks)."""
        from ownlm.data.updates import updates_stat, with_updates
        from ownlm.retrieval.prompts import personal_prompt, user_context

        with self._lock:
            if user not in self.users:  # forgotten meanwhile: the batch will refuse it
                return text
            ctx, record, seen = self._contexts.get(user), self.users[user], self._seen.get(user)
        stat = updates_stat(self.run_dir, user) if self.run_dir else None
        if ctx is None or stat != seen:  # built outside the lock: holds up no other user
            if self.run_dir:
                record = with_updates(self.run_dir, [record], self.task)[0]
            built = user_context(self.task, record)
            with self._lock:
                if user not in self.users:  # forgotten while it was built: not kept
                    return text
                if self._seen.get(user) != stat or user not in self._contexts:
                    self._contexts[user], self._seen[user] = built, stat
                ctx = self._contexts[user]
        return personal_prompt(self.task, ctx, text, self.k, self.use_profile)
