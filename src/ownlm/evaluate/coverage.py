"""Which stored adapters an evaluation may use, and what a method lacks when they fall short.

A method built on per-user adapters (peft, oppu, proper-input, proper-user) is scored
only when every evaluated user with history has a usable adapter: stored, its weights
matching the sha256 in its manifest, trained for the loaded base (for PROPER: the base
and the stage-2 weights), and, when the manifest records it, on the user's current
history. Otherwise the method is reported as not run, naming the users, why, and the
command that trains them: `oppu.model.user_model` answers with the bare base for a
user it has no adapter for, so scoring anyway would print the population model's numbers
under the method's name (issue #10).

Users with no history are answered by the base by design (there is nothing to train a
LoRA on; the user stages skip them), so they count as covered.
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from ownlm.errors import NotFoundError, StoreError
from ownlm.evaluate.report import MethodResult, NotRun
from ownlm.paths import CONTROL_BASE
from ownlm.proper.experts import ROUTER
from ownlm.variants import CONTROL, VARIANTS

if TYPE_CHECKING:
    from ownlm.run import Run

# What loading an adapter whose files passed the checks may still raise: the PEFT config
# is not in the manifest's sha256 list, so a broken one only shows at load time.
LOAD_ERRORS = (StoreError, OSError, ValueError, KeyError)


class AdapterUnusable(StoreError):
    """A user's adapter failed while being loaded for scoring."""

    def __init__(self, user_id: str, reason: str):
        super().__init__(f"user {user_id}: {reason}")
        self.user_id, self.reason = user_id, reason


def stored_problem(store, name: str, fp: str, history: str | None = None) -> str | None:
    """Why the stored adapter `name` cannot be used on the base `fp` (and, for a user
    adapter, their history digest `history`): None when it can."""
    reason = store.stale_reason(name, fp, history)
    if reason is not None:
        return reason
    try:
        store.verify(name, fp)
    except (StoreError, OSError) as e:
        return f"corrupt: {e}"
    return None


def adapter_problem(store, user, fp: str) -> str | None:
    """Why `user`'s adapter in `store` cannot answer for them (None: it can, or the user
    has no history and is answered by the base)."""
    if not user.history:
        return None
    return stored_problem(store, user.name, fp, user.history_digest())


def unusable_users(store, users, fp: str) -> dict[str, str]:
    """{user id: why} of the `users` whose adapter is not usable; one broken adapter is
    one entry, never an exception that stops the other users or methods."""
    problems = {u.user_id: adapter_problem(store, u, fp) for u in users}
    return {uid: why for uid, why in problems.items() if why is not None}


def evaluated_users(rows) -> list:
    """The distinct users of the evaluation rows, in order."""
    return list({u.user_id: u for u, _ in rows}.values())


def train_command(run: Run, method: str) -> str:
    """The exact command that trains what `method` needs for this run (stages resume:
    what is already current is skipped)."""
    stages = "groups,users" if method in VARIANTS and VARIANTS[method].is_proper else "users"
    stages = "control,users" if method == CONTROL else stages
    return f"ownlm train -c {run.dir / 'config.yaml'} --stages {stages} --variants {method}"


def not_run(run: Run, method: str, problems: dict[str, str], users) -> MethodResult:
    """The result of a method some users lack a usable adapter for: no metrics."""
    needed = sum(1 for u in users if u.history)
    reason = f"{len(problems)}/{needed} users have no usable adapter"
    return MethodResult(method, {}, not_run=NotRun(reason, problems, train_command(run, method)))


def groups_not_run(run: Run, method: str, problem: str) -> MethodResult:
    """A PROPER method whose stage-2 group experts cannot be used: no user can be scored."""
    nr = NotRun(f"PROPER stage-2 groups {problem}", {}, train_command(run, method))
    return MethodResult(method, {}, not_run=nr)


def control_not_run(run: Run, method: str, problem: str) -> MethodResult:
    """OPPU's control whose base (stage 1 + the control pass) cannot be used: no user
    can be scored, and their LoRAs, if any, stand on that base."""
    nr = NotRun(f"control base ({CONTROL_BASE}) {problem}", {}, train_command(run, method))
    return MethodResult(method, {}, not_run=nr)


def groups_problem(run: Run, base_fp: str) -> str | None:
    """Why the run's stage-2 router and group experts cannot be loaded on the base with
    fingerprint `base_fp` (None: they can), checked before anything is installed."""
    store = run.store()
    why = stored_problem(store, ROUTER, base_fp)
    if why:
        return f"({ROUTER}): {why}"
    try:
        meta = json.loads((store.path(ROUTER) / "router.json").read_text())
        groups = int(meta["groups"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"({ROUTER}): corrupt: router.json unreadable ({e})"
    for g in range(groups):
        why = stored_problem(store, f"group:{g}", base_fp)
        if why:
            return f"(group:{g}): {why}"
    return None


def require_groups(run: Run, base_fp: str) -> None:
    """Refuse, before any work, a PROPER view or study whose stage-2 groups are unusable;
    the error names the problem and the command that trains them."""
    problem = groups_problem(run, base_fp)
    if problem is None:
        return
    error = NotFoundError if problem.endswith(": missing") else StoreError
    command = f"ownlm train -c {run.dir / 'config.yaml'} --stages groups"
    raise error(f"PROPER stage-2 groups {problem}; train them: {command}")


@contextmanager
def loading(user_id: str, model_cm):
    """Enter `model_cm` (a user's model) turning a load failure into `AdapterUnusable`;
    errors raised while the model answers pass through unchanged."""
    with ExitStack() as stack:
        try:
            model = stack.enter_context(model_cm)
        except LOAD_ERRORS as e:
            raise AdapterUnusable(user_id, f"corrupt: {e}") from e
        yield model
