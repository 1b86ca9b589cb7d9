"""forget_user: after it, no file under the run names the user or holds their history;
what their history trained is named with the command that retrains without them."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from ownlm.errors import NotFoundError
from ownlm.ownership.forget import forget_user
from ownlm.proper.experts import ROUTER, forget_stage2_user, stage2_digest, stage2_users
from ownlm.store import AdapterStore, Manifest, TokenStore

USER = "zebra-quokka-7"
MARKER = "xylophonequarkle"  # in every history item of USER, nowhere else


def _adapter(store: AdapterStore, name: str, value: float = 0.0) -> None:
    def write(d):
        d.mkdir(parents=True)
        save_file({"w": torch.full((1,), value)}, str(d / "adapter_model.safetensors"))

    store.save(name, write, Manifest(name="", stage="user", task="t", base_fingerprint="fp"))


def test_forget_removes_adapters_and_tokens_only_of_that_user(tmp_path):
    for folder in ("adapters", "adapters-peft"):
        for user in ("u1", "u2"):
            _adapter(AdapterStore(tmp_path / folder), f"user:{user}")
    tokens = TokenStore(tmp_path)
    mine, theirs = tokens.create("u1"), tokens.create("u2")
    done = forget_user(tmp_path, "u1")
    assert [r.split("/")[0].split()[0] for r in done.removed] == [
        "adapters",
        "adapters-peft",
        "tokens.json",
    ]
    assert not done.stage2_train_user and not done.remaining
    for folder in ("adapters", "adapters-peft"):
        assert AdapterStore(tmp_path / folder).names("user") == ["user:u2"]
    fresh = TokenStore(tmp_path)
    assert fresh.check(mine) is None and fresh.check(theirs).user == "u2"
    assert os.stat(tmp_path / "tokens.json").st_mode & 0o777 == 0o600  # still private
    with pytest.raises(NotFoundError, match="never knew user 'u1' or has forgotten them"):
        forget_user(tmp_path, "u1")  # nothing left: says so, never "removed from nothing"


def test_forget_names_stage_2_train_users_and_missing_runs(tmp_path):
    router = tmp_path / "adapters" / "router"
    router.mkdir(parents=True)
    (router / "router.json").write_text(json.dumps({"users": ["u7", "u8"]}))
    done = forget_user(tmp_path, "u7")
    assert done.stage2_train_user and "retrain stage 2" in " ".join(done.trained_on)
    assert json.loads((router / "router.json").read_text())["users"] == ["u8"]
    assert not (tmp_path / "tokens.json").exists()  # no token store created on the way
    with pytest.raises(NotFoundError, match="does not exist"):
        forget_user(tmp_path / "nope", "u7")


def _router_store(tmp_path) -> AdapterStore:
    store = AdapterStore(tmp_path / "adapters")
    _adapter(store, "group:0")
    table = torch.arange(6.0).reshape(3, 2)  # rows: a, b, c

    def write(d):
        d.mkdir(parents=True)
        save_file({"user_table": table, "train_vectors": table * 10, "l.w": torch.ones(2)},
                  str(d / "router.safetensors"))  # fmt: skip
        (d / "router.json").write_text(json.dumps({"users": ["a", "b", "c"], "groups": 1}))

    store.save(ROUTER, write, Manifest("", "group-router", "t", "fp"))
    return store


def test_forgetting_a_stage_2_user_keeps_what_stage_3_adapters_depend_on(tmp_path):
    store = _router_store(tmp_path)
    digest = stage2_digest(store)
    assert forget_stage2_user(store, "b") and not forget_stage2_user(store, "b")
    tensors = load_file(str(store.verify(ROUTER) / "router.safetensors"))
    assert stage2_users(store) == ["a", "c"]
    assert tensors["user_table"].tolist() == [[0, 1], [4, 5]]  # b's row gone, rows aligned
    assert tensors["train_vectors"].tolist() == [[0, 10], [40, 50]]
    assert torch.equal(tensors["l.w"], torch.ones(2))  # the routers' weights untouched
    assert stage2_digest(store) == digest  # stage-3 adapters stay valid
    _adapter(store, "group:0", 1.0)  # stage 2 retrained (new experts): the pin no longer holds
    assert stage2_digest(store) != digest


def _jsonl_with_distinct_user(path):
    """demo-tags users as a JSONL file; the last one (a test user) is USER, whose every
    history item carries MARKER; ids left to the loader, so they are built from USER."""
    from ownlm.data.demo import make_demo_tags
    from ownlm.ownership.bundle import history_line

    users = make_demo_tags(n_users=6, history=8, queries=2, seed=0).users
    lines = []
    for i, user in enumerate(users):
        row = history_line(user)
        for item in row["history"] + row["queries"]:
            item.pop("id")
        if i == len(users) - 1:
            row["user_id"] = USER
            for item in row["history"]:
                item["description"] += f" {MARKER}"
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")


def test_after_forget_no_file_of_the_run_names_the_user_or_their_history(tiny_cfg, tmp_path):
    from ownlm.evaluate.runner import evaluate_run
    from ownlm.oppu.sequential import train_users
    from ownlm.run import Run
    from ownlm.train.population import train_population

    _jsonl_with_distinct_user(tmp_path / "users.jsonl")
    tiny_cfg.data, tiny_cfg.task = str(tmp_path / "users.jsonl"), "demo-tags"
    run = Run(tiny_cfg)
    assert run.split.test[-1].user_id == USER
    train_population(run)
    train_users(run, "oppu")
    evaluate_run(run, ["base", "oppu"])
    TokenStore(run.dir).create(USER)
    TokenStore(run.dir).create(run.split.test[0].user_id)
    named = {str(f.relative_to(run.dir)) for f in run.dir.rglob("*") if f.is_file()}
    named = {f for f in named if USER.encode() in (run.dir / f).read_bytes()}
    assert {"eval/results.json", "eval/predictions_oppu.json", "tokens.json"} <= named
    # no file ownlm writes today holds history text; the marker guards any future one

    done = forget_user(run.dir, USER)
    assert "eval/" in " ".join(done.removed) and not done.trained_on and not done.remaining
    assert "re-run `ownlm eval" in " ".join(done.notes)
    for f in run.dir.rglob("*"):
        assert USER not in str(f.relative_to(run.dir))
        if f.is_file():
            data = f.read_bytes()
            assert USER.encode() not in data and MARKER.encode() not in data, f
    assert os.stat(run.dir / "tokens.json").st_mode & 0o777 == 0o600
    assert run.store("oppu").names("user") == [f"user:{run.split.test[0].user_id}"]


def test_a_train_user_is_told_what_their_history_trained_and_how_to_retrain(tmp_path):
    (tmp_path / "config.yaml").write_text(
        f"data: demo-tags\nmax_users: 6\noutput_dir: {tmp_path}\n"
    )
    (tmp_path / "adapters-peft").mkdir()
    _adapter(AdapterStore(tmp_path / "adapters-peft"), "user:t005")
    done = forget_user(tmp_path, "t000")  # the first user of the file: a train user
    assert done.removed == [] and done.trained_on[0].startswith("stage 1")
    assert "remove user t000 from demo-tags, then ownlm train -c" in done.retrain
    assert "--stages population,users --variants peft" in done.retrain
    with pytest.raises(NotFoundError, match="does not hold them"):
        forget_user(tmp_path, "someone-else")


def test_a_user_taken_out_of_the_data_first_is_found_in_the_runs_record(tmp_path):
    """run.json records the data the run was trained on: forget reads the split there."""
    (tmp_path / "config.yaml").write_text("data: demo-tags\nmax_users: 6\n")
    rows = [["gone", "h", "q"]] + [[f"t00{i}", "h", "q"] for i in range(5)]
    (tmp_path / "run.json").write_text(json.dumps({"data": {"task": "demo-tags", "users": rows}}))
    done = forget_user(tmp_path, "gone")  # first in the file: it trained stage 1
    assert done.removed == ["run.json (their row of the data record)"]
    assert done.trained_on and done.retrain.startswith("ownlm train -c")  # already out of data
    assert "gone" not in (tmp_path / "run.json").read_text()


def test_forgetting_a_stage_2_train_user_leaves_stage_3_users_valid(tiny_cfg):
    from ownlm.proper import groups_fingerprint, load_groups
    from ownlm.proper.group_stage import train_groups
    from ownlm.run import Run
    from ownlm.train.population import train_population
    from tests.proper.test_group_stage import small_proper

    tiny_cfg.proper = small_proper()
    run = Run(tiny_cfg)
    train_population(run)
    train_groups(run)
    backbone = run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())  # what stage-3 manifests record
    gone = run.split.train[1].user_id

    done = forget_user(run.dir, gone)
    assert done.stage2_train_user and "adapters/router" in " ".join(done.removed)
    assert "--stages population,groups,users" in done.retrain
    assert gone not in stage2_users(run.store())
    assert groups_fingerprint(run, backbone.fingerprint()) == fp
    gm = load_groups(run, backbone)  # the rewritten router verifies and loads
    assert gm.user_table.shape[0] == len(gm.meta["users"]) == len(run.split.train) - 1
    gm.close()


def test_a_symlinked_user_folder_loses_the_link_and_names_its_target(tmp_path):
    """A user folder linked in by hand: forget removed nothing and crashed on rmtree
    (leaving a `.del-<user>-…` link behind); now the link goes, the target is named."""
    run = tmp_path / "run"
    store = AdapterStore(run / "adapters")
    _adapter(store, "user:u1")
    _adapter(store, "user:u2")
    outside = tmp_path / "elsewhere"
    store.path("user:u1").rename(outside)
    store.path("user:u1").symlink_to(outside)
    done = forget_user(run, "u1")
    assert any("symbolic link" in r for r in done.removed)
    assert any(str(outside) in n and "yourself" in n for n in done.notes)
    assert not any(p.is_symlink() for p in (run / "adapters" / "users").iterdir())
    assert (outside / "ownlm.json").exists() and not done.remaining
    assert store.names("user") == ["user:u2"]


@pytest.mark.parametrize("user", ["Model", "lora", "More"])
def test_pefts_model_card_is_not_taken_for_a_mention_of_the_user(tmp_path, user):
    """PEFT writes a boilerplate README.md beside every adapter; a user whose id is an
    English word of it ("Model") was reported as still named by every other adapter."""
    store = AdapterStore(tmp_path / "adapters")
    for u in (user, "u2"):
        _adapter(store, f"user:{u}")
        (store.path(f"user:{u}") / "README.md").write_text(
            "# Model Card for Model ID\n\n- lora\n[More Information Needed]\n"
        )
    done = forget_user(tmp_path, user)
    assert done.removed and not done.remaining
    assert (store.path("user:u2") / "README.md").exists()


@pytest.mark.parametrize(
    "record",
    [
        "{not json",
        "[]",
        '{"data": 5}',
        '{"data": {"users": "x"}}',
        '{"data": {"users": [5, null, []]}}',
    ],
)
def test_a_corrupt_run_record_does_not_stop_forget(tmp_path, record):
    """run.json edited by hand or cut short: forget used to stop with a traceback before
    deleting anything; it deletes the adapters and names the file if it still holds them."""
    _adapter(AdapterStore(tmp_path / "adapters"), "user:u1")
    (tmp_path / "run.json").write_text(record.replace("5,", '5, ["u1", "d"],'))
    done = forget_user(tmp_path, "u1")
    assert done.removed[0].startswith("adapters/users/u1")
    assert not AdapterStore(tmp_path / "adapters").exists("user:u1")
    named = "u1" in (tmp_path / "run.json").read_text()
    assert named == ("run.json" in done.remaining)


def test_a_corrupt_tokens_file_does_not_stop_forget(tmp_path):
    _adapter(AdapterStore(tmp_path / "adapters"), "user:u1")
    (tmp_path / "tokens.json").write_text('{"abc": {"user": "u1"')
    done = forget_user(tmp_path, "u1")
    assert not AdapterStore(tmp_path / "adapters").exists("user:u1")
    assert any("could not be revoked" in n and "tokens.json is corrupt" in n for n in done.notes)
    assert "tokens.json" in done.remaining  # still names them: said, in red


def test_a_bundle_exported_into_the_run_is_named_after_forget(tmp_path):
    """`ownlm export --bundle RUN/exports/u1.tar --with-history` puts the user's history
    in a tar inside the run; forget read no archive and never named it."""
    import io
    import tarfile

    _adapter(AdapterStore(tmp_path / "adapters"), "user:u1")
    (tmp_path / "exports").mkdir()
    for name, mode in (("u1.tar", "w"), ("u1.tgz", "w:gz")):
        with tarfile.open(tmp_path / "exports" / name, mode) as tar:
            for member, data in {
                "ownlm_bundle.json": json.dumps({"user": "u1"}).encode(),
                "history.jsonl": f'{{"user_id": "u1", "text": "{MARKER}"}}\n'.encode(),
            }.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "exports" / "other.tar").write_bytes(b"\0" * 1024)  # empty tar: nobody
    done = forget_user(tmp_path, "u1")
    assert done.remaining == ["exports/u1.tar", "exports/u1.tgz"]


def test_a_forgotten_user_still_in_the_data_is_left_out_of_the_run_from_then_on(tiny_cfg):
    """Built-in data cannot be edited: the run keeps a one-way key of the forgotten id and
    leaves them out, so eval and train go on for the others (and stage 1 retrains)."""
    from ownlm.run import Run, forgotten_key

    run = Run(tiny_cfg)
    test_user, train_user = run.split.test[0].user_id, run.split.train[0].user_id
    where = [f"output_dir={tiny_cfg.output_dir}", f"name={tiny_cfg.name}"]
    for user in (test_user, train_user):
        done = forget_user(run.dir, user)
        assert "leaves them out from now on" in " ".join(done.notes)
        record = (run.dir / "run.json").read_text()
        assert user not in record and forgotten_key(user) in record
    again = Run.reopen(None, where)  # eval / export: no "data changed" refusal
    ids = [u.user_id for u in again.dataset.users]
    assert test_user not in ids and train_user not in ids and len(ids) == 4
    Run(tiny_cfg)  # train: the record matches the data without them


def test_the_retrain_command_names_the_control_when_the_run_has_one(tmp_path):
    from ownlm.ownership.forget import retrain_command

    (tmp_path / "adapters" / "users").mkdir(parents=True)
    assert "--stages population,users " in retrain_command(tmp_path) + " "
    (tmp_path / "base-control").mkdir()
    (tmp_path / "adapters-oppu-control" / "users").mkdir(parents=True)
    command = retrain_command(tmp_path)
    assert "--stages population,control,users" in command
    assert "--variants oppu,oppu-control" in command
