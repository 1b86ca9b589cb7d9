"""Nothing lost, nothing leaked (issue #19): commands that write one user exclude each
other, a forgotten user never comes back, no role moves when a user leaves, and what a
killed writer left is finished, rolled back or swept by the next command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ownlm.errors import NotFoundError, StoreError
from ownlm.files import HOST
from ownlm.ownership.forget import forget_user, mentions
from ownlm.run import Run, recorded_roles
from ownlm.store import TokenStore
from ownlm.store.guard import user_lock
from ownlm.store.tokens import stored_users
from tests.conftest import trained_demo_run


def _new_items(path: Path, n: int = 2) -> Path:
    rows = [
        {"id": f"n{i}", "description": f"a brand new film {i}", "tag": "comedy"} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    return trained_demo_run(tmp_path_factory.mktemp("trust"), max_users=6)


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of a trained run (population + OPPU test users) that a test may change."""
    import shutil

    shutil.copytree(trained_once, tmp_path / "runs" / "t")
    return Run.open(tmp_path / "runs" / "t")


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "ownlm.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_lock(run_dir: Path, what: str, proc: subprocess.Popen) -> None:
    """Until `proc` holds a lock of the run as `what` (the lock file names its command)."""
    end = time.time() + 120
    while time.time() < end:
        if any(f.read_text().endswith(what) for f in (run_dir / ".locks").glob("user-*")):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"no {what} lock appeared")


def _nothing_names(run_dir: Path, user: str) -> None:
    assert mentions(run_dir, user) == []
    assert not (run_dir / "updates" / f"{user}.jsonl").exists()
    assert user not in stored_users(run_dir)


def test_forget_waits_for_an_update_and_the_user_never_comes_back(trained, tmp_path):
    run, user = trained, trained.split.test[0].user_id
    new = _new_items(tmp_path / "new.jsonl", n=40)
    proc = _cli("update", "--run-dir", str(run.dir), "--user", user, "--history", str(new))
    _wait_for_lock(run.dir, "update", proc)
    done = forget_user(run.dir, user)  # waits for the update, then removes all of it
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out  # the update ran wholly before the forget
    assert any("updates/" in r for r in done.removed), done.removed
    _nothing_names(run.dir, user)
    from ownlm.oppu.update import update_user

    with pytest.raises(NotFoundError, match="not in the data"):
        update_user(Run.open(run.dir), user, new)
    _nothing_names(run.dir, user)
    with pytest.raises(NotFoundError):
        known = [u.user_id for u in Run.open(run.dir).dataset.users]
        TokenStore(run.dir).create_for_user(user, lambda: known)


@pytest.mark.parametrize("per_batch", [1, 2])
@pytest.mark.parametrize("landing", ["forget", "update"])
def test_a_user_stage_never_saves_a_user_forgotten_or_updated_while_it_trained(
    trained, monkeypatch, per_batch, landing
):
    from ownlm.data.updates import read_items, write_updates
    from ownlm.oppu.user_stage import train_oppu_users as train_user_stage
    from ownlm.train import per_user as users_module

    run = Run.open(trained.dir)
    run.cfg.user.users_per_batch = per_batch
    victim = run.split.test[0].user_id
    store = run.store("peft")
    real_save = users_module.save_user
    new = _new_items(trained.dir.parent / "new.jsonl")

    def landing_first(run_, store_, user, *args):
        if user.user_id == victim and landing == "forget":  # lands while they train
            forget_user(run_.dir, victim)
        elif user.user_id == victim:  # an update's items land while they train
            write_updates(run_.dir, victim, read_items(new, run_.task, victim))
        return real_save(run_, store_, user, *args)

    monkeypatch.setattr(users_module, "save_user", landing_first)
    if per_batch > 1:
        from ownlm.oppu import batched as batched_users

        monkeypatch.setattr(batched_users, "save_user", landing_first)
    stats = train_user_stage(run, "peft")
    assert stats["trained"] == len(run.split.test) - 1
    assert not store.exists(f"user:{victim}")
    if landing == "forget":
        _nothing_names(run.dir, victim)


def test_a_second_update_of_one_user_is_refused_and_nothing_is_lost(trained, tmp_path):
    import threading

    from ownlm.oppu.update import update_user
    from ownlm.store.guard import BusyError

    run, user = trained, trained.split.test[0].user_id
    started, results = threading.Event(), []

    def first():  # the first `ownlm update`, holding the user while it trains
        with user_lock(run.dir, user, "update"):
            started.set()
            results.append(
                update_user(Run.open(run.dir), user, _new_items(tmp_path / "a.jsonl", 4))
            )

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(30)
    with pytest.raises(BusyError, match=rf"user {user} .*\(pid {os.getpid()}: update\); wait"):
        update_user(Run.open(run.dir), user, _new_items(tmp_path / "b.jsonl", 3))
    thread.join(120)
    assert results and results[0].items == len(run.split.test[0].history) + 4
    # the stored history and the adapter agree: one update of 4 items
    lines = (run.dir / "updates" / f"{user}.jsonl").read_text().splitlines()
    again = Run.open(run.dir)
    now = next(u for u in again.dataset.users if u.user_id == user)
    assert len(lines) == 4
    assert again.store("oppu").current(now.name, again.base_fingerprint(), now.history_digest())


def test_forgetting_a_user_moves_no_one_elses_role(tiny_cfg):
    run = Run(tiny_cfg)  # claims the run: run.json records the split by id
    before = recorded_roles(run.recorded())
    assert (
        before["dev"]
        and before["test"]
        and before == {r: [u.user_id for u in getattr(run.split, r)] for r in before}
    )
    gone = before["test"][-1]
    done = forget_user(run.dir, gone)
    assert any("their place in the split (test user" in r for r in done.removed)
    after = Run.open(run.dir).split
    for role, ids in before.items():
        assert [u.user_id for u in getattr(after, role)] == [i for i in ids if i != gone]
    # a train resumes on the same split (the forgotten user is left out of the data)
    resumed = Run(tiny_cfg)
    assert [u.user_id for u in resumed.split.dev] == before["dev"]


def test_a_forget_run_twice_gives_the_same_retrain_advice(tiny_cfg):
    run = Run(tiny_cfg)
    train_user = recorded_roles(run.recorded())["train"][0]
    first = forget_user(run.dir, train_user)
    second = forget_user(run.dir, train_user)  # as after a first forget that was cut short
    assert first.trained_on and second.trained_on == first.trained_on
    assert "--stages population" in second.retrain and second.retrain == first.retrain


def test_a_swap_killed_midway_is_rolled_back_for_every_reader(trained, tmp_path):
    from ownlm.config import ServeSettings
    from ownlm.serve.server import build_server

    run, user = trained, trained.split.test[0].user_id
    store = run.store("oppu")
    sha = store.manifest(f"user:{user}").sha256
    proc = _cli(
        "update", "--run-dir", str(run.dir), "--user", user,
        "--history", str(_new_items(tmp_path / "a.jsonl")),
        env={"OWNLM_TEST_KILL_AT": "swap:1"},
    )  # fmt: skip
    assert proc.wait(timeout=120) == -signal.SIGKILL
    scratch = [p.name for p in (store.root / "users").iterdir() if p.name.startswith(".")]
    assert scratch and not store.exists(f"user:{user}")  # the state the issue reports
    assert store.names("user") == [f"user:{u}" for u in sorted(stored_users(run.dir))]
    assert all(not n.partition(":")[2].startswith(".") for n in store.names("user"))
    with pytest.raises((NotFoundError, StoreError)):
        TokenStore(run.dir).create_for_user(scratch[0])
    server = build_server(run.dir, ServeSettings(cache_size=2, max_batch_size=2, device="cpu"))
    assert store.manifest(f"user:{user}").sha256 == sha  # the previous version, back
    assert f"tiny:{user}" in server.model_ids(TokenStore(run.dir).check("x") or _admin())
    assert not [p for p in (store.root / "users").iterdir() if p.name.startswith(".")]


def _admin():
    from ownlm.store.tokens import Principal

    return Principal("t", None, True)


def test_forget_removes_what_killed_writers_left_of_the_user(trained):
    run, user = trained, trained.split.test[0].user_id
    item = json.dumps({"id": "n0", "description": f"{user} wrote this", "tag": "comedy"})
    dead = f"999999999-{HOST}-ab12cd34"
    (run.dir / "updates").mkdir(exist_ok=True)
    left = [
        run.dir / "updates" / f".{user}.jsonl.tmp-{dead}",
        run.dir / "updates" / f".{user}.jsonl.1a2b3c4d.tmp",  # an older ownlm's name
        run.dir / ".tokens.json.tmp-9f8e7d6c",
        run.dir / f".run.json.tmp-{dead}",
    ]
    left[0].write_text(item + "\n")
    left[1].write_text(item + "\n")
    left[2].write_text(json.dumps({"abc": {"user": user, "admin": False}}))
    left[3].write_text(json.dumps({"data": {"users": [[user, "h", "q"]]}}))
    assert all(p in mentions(run.dir, user) for p in left)  # read as the files they stand for
    done = forget_user(run.dir, user)
    assert not any(p.exists() for p in left)
    assert any("scratch file" in r for r in done.removed) and done.remaining == []
    _nothing_names(run.dir, user)


def test_evaluation_outputs_are_not_written_after_a_user_was_forgotten(trained):
    from ownlm.run.outputs import guarded_outputs

    run = Run.open(trained.dir)
    run.dataset  # noqa: B018  (the command read its users)
    kept = run.dir / "eval" / "results.json"
    kept.parent.mkdir(exist_ok=True)
    kept.write_text("{}")
    with pytest.raises(StoreError, match="forgotten while this command ran"):
        with guarded_outputs(run, run.dir / "eval"):  # a study that runs meanwhile
            user = run.split.test[0].user_id
            forget_user(run.dir, user)
            (run.dir / "eval" / "shift.json").write_text(json.dumps({"users": [user]}))
    assert not (run.dir / "eval" / "shift.json").exists() and kept.exists()
    with pytest.raises(StoreError, match="forgotten while this command ran"):
        run.check_forgotten_since("eval/")


def test_a_token_made_while_the_user_is_forgotten_is_never_issued(trained):
    run, user = trained, trained.split.test[0].user_id
    with user_lock(run.dir, user, "forget"):  # a forget holds the user...
        proc = _cli("token", "create", "--run-dir", str(run.dir), "--user", user)
        time.sleep(1.0)
        assert proc.poll() is None  # ...so `token create` waits for it
        forget_user(run.dir, user)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "was forgotten by run" in out and "ownlm-" not in out
    assert TokenStore(run.dir).tokens() == []


def test_forget_waits_for_the_command_writing_the_user(trained):
    import threading

    run, user = trained, trained.split.test[0].user_id
    held, done = threading.Event(), []

    def writer():  # e.g. an import of the user, holding their lock for a second
        with user_lock(run.dir, user, "import"):
            held.set()
            time.sleep(1.0)
            done.append(time.monotonic())

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait(30)
    forget_user(run.dir, user)  # waits, not refuses: forgetting is a promise
    assert done and time.monotonic() >= done[0]
    thread.join()
    _nothing_names(run.dir, user)


def test_a_forget_cut_short_after_its_mark_serves_and_admits_the_user_no_more(trained):
    from ownlm.config import ServeSettings
    from ownlm.ownership import forget as forget_module
    from ownlm.serve.errors import ApiError
    from ownlm.serve.server import build_server
    from ownlm.store.tokens import Principal

    run, user = trained, trained.split.test[0].user_id
    token = TokenStore(run.dir).create(user)
    server = build_server(run.dir, ServeSettings(cache_size=2, max_batch_size=2, device="cpu"))
    assert server.resolve(f"tiny:{user}", Principal("t", user, False)) == user

    def killed(*a):  # SIGKILL right after run.json's mark: the adapter is still stored
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(forget_module, "_delete_adapters", killed)
        with pytest.raises(KeyboardInterrupt):
            forget_user(run.dir, user)
    assert user in stored_users(run.dir)  # half done...
    with pytest.raises(ApiError) as e:  # ...yet no longer served, listed or admitted
        server.resolve(f"tiny:{user}", Principal("t", user, False))
    assert e.value.status == 404
    assert f"tiny:{user}" not in server.model_ids(Principal("a", None, True))
    with pytest.raises(NotFoundError, match="was forgotten"):
        TokenStore(run.dir).create_for_user(user)
    done = forget_user(run.dir, user)  # run again, it finishes
    assert any(r.startswith("adapters/users/") for r in done.removed)
    assert TokenStore(run.dir).check(token) is None
    _nothing_names(run.dir, user)
