"""`ownlm update`: a user's OPPU adapter continued on new history items, swapped in
through the store, the items kept beside the run, and every reader of the run (eval,
the server's retrieval and profile) seeing the updated history."""

import json

import pytest

from ownlm.data.updates import updates_path
from ownlm.errors import DataError, NotFoundError
from ownlm.evaluate.coverage import adapter_problem
from ownlm.oppu.sequential import train_users
from ownlm.oppu.update import update_user
from ownlm.run import Run
from ownlm.train.population import train_population


def _new_items(path, ids=("n1", "n2"), tag="comedy"):
    lines = [json.dumps({"id": i, "description": f"a brand new film {i}", "tag": tag}) for i in ids]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def trained(tiny_cfg):
    run = Run(tiny_cfg)
    train_population(run)
    train_users(run, "oppu", users=run.split.test[:2])
    return run


def _sha(store, name):
    return store.manifest(name).sha256["adapter_model.safetensors"]


def test_update_continues_only_that_users_adapter_and_every_reader_sees_it(trained, tmp_path):
    from peft import PeftModel

    from ownlm.config import ServeSettings
    from ownlm.serve.server import build_server

    run, (user, other) = trained, trained.split.test[:2]
    store = run.store("oppu")
    before, other_before = _sha(store, user.name), _sha(store, other.name)
    settings = ServeSettings(cache_size=2, max_batch_size=2, device="cpu")
    server = build_server(run.dir, settings)  # a running server over the run
    ask, uid = "a brand new film n1", user.user_id
    assert server.personalizer.prompt(uid, ask).count("brand new film") == 1  # the query
    with server.cache.lock:
        server.cache.slots_for([uid])
    loaded = server.cache.seen[uid]
    done = update_user(run, uid, _new_items(tmp_path / "new.jsonl"))
    # the server, not restarted: retrieval and profile over the updated history, and
    # the new adapter loaded on the next use
    assert server.personalizer.prompt(uid, ask).count("brand new film") > 1
    with server.cache.lock:
        server.cache.slots_for([uid])
    assert server.cache.seen[uid] == server.cache.stat(uid) != loaded  # reloaded
    assert _sha(store, user.name) != before and _sha(store, other.name) == other_before
    m = store.manifest(user.name).extra
    assert m["update"]["new_items"] == 2 and m["update"]["updated_from"] == before
    assert run.cfg.update.epochs is None  # empty: the user stage's epochs, as the manifest's
    assert m["update"]["epochs"] == run.cfg.user.epochs and m["update"]["lr"] == run.cfg.user.lr
    assert m["items"] == len(user.history) + 2 and m["epochs"] == run.cfg.user.epochs
    assert "updated user" in done.summary()
    assert updates_path(run.dir, user.user_id).read_text().count("\n") == 2
    # eval reopens the run: no "data changed", and the adapter stands for the new history
    again = Run.reopen(None, [f"output_dir={run.cfg.output_dir}", f"name={run.cfg.name}"])
    now = next(u for u in again.dataset.users if u.user_id == user.user_id)
    assert [it.id for it in now.history[-2:]] == ["n1", "n2"]
    fp = again.base_fingerprint()
    assert adapter_problem(again.store("oppu"), now, fp) is None
    # a resumed user stage keeps it (same history, same budget)
    assert train_users(again, "oppu", users=[now])["resumed"] == 1
    base = again.base()
    PeftModel.from_pretrained(base.model, store.path(user.name))  # vanilla PEFT loads it


def test_bad_input_is_refused_and_a_cut_short_update_finishes(trained, tmp_path, monkeypatch):
    run, user = trained, trained.split.test[0]
    with pytest.raises(NotFoundError, match="not in the data"):
        update_user(run, "nobody", _new_items(tmp_path / "a.jsonl"))
    from typer.testing import CliRunner

    from ownlm.cli import app

    args = ["update", "--run-dir", str(run.dir), "--user", "nobody", "--history"]
    out = CliRunner().invoke(app, [*args, str(tmp_path / "a.jsonl")])
    assert out.exit_code == 2 and "not in the data" in out.output  # one line, no traceback
    dup = _new_items(tmp_path / "b.jsonl", ids=(user.history[0].id,))
    with pytest.raises(DataError, match="already in user"):
        update_user(run, user.user_id, dup)
    (tmp_path / "c.jsonl").write_text('{"id": "x", "description": "no tag"}\n')
    with pytest.raises(DataError, match="lacks field 'tag'"):
        update_user(run, user.user_id, tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="line 1"):
        update_user(run, user.user_id, tmp_path / "d.jsonl")
    assert not updates_path(run.dir, user.user_id).exists()
    # crash safety: cut short after the adapter's swap, before the history file is
    # written; the same command again only writes the history file
    from ownlm.oppu import update as update_module

    new = _new_items(tmp_path / "new.jsonl")

    def crash(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(update_module, "write_updates", crash)
    with pytest.raises(KeyboardInterrupt):
        update_user(run, user.user_id, new)
    monkeypatch.undo()
    sha = _sha(run.store("oppu"), user.name)
    done = update_user(Run.open(run.dir), user.user_id, new)
    assert done.resumed and _sha(run.store("oppu"), user.name) == sha
    assert updates_path(run.dir, user.user_id).exists()


def test_forget_deletes_the_users_updates_file(tmp_path):
    from ownlm.ownership.forget import _drop_updates

    path = tmp_path / "updates" / "u1.jsonl"
    path.parent.mkdir()
    path.write_text('{"id": "n1"}\n')
    assert _drop_updates(tmp_path, "u1") and not path.exists()
    assert not _drop_updates(tmp_path, "../u1")  # never a path outside updates/
