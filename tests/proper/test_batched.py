"""PROPER's batched user stage equals the one-at-a-time stage: the same stored residuals
and routers (AdamW with per-user clipping, within 1e-4 as OPPU's batched stage), the
same losses and counts, for both routers; it resumes and skips a forgotten user."""

import pytest
import torch
from safetensors.torch import load_file

from ownlm.data.splits import truncate_history
from ownlm.proper.group_stage import train_groups
from ownlm.proper.user_stage import train_proper_users
from ownlm.proper.users import ROUTER_FILE
from ownlm.run import Run
from ownlm.train.population import train_population
from tests.proper.test_group_stage import small_proper

SIZES = (3, 7, 12)  # history items: 1, 2 and 3 steps of 4 pairs per epoch
FILES = ("adapter_model.safetensors", ROUTER_FILE)


@pytest.fixture(scope="module")
def proper_run(tmp_path_factory):
    """A tiny run with stage 1 and stage 2 ('user' assignment), built once."""
    from ownlm import run as run_module
    from ownlm.config import load_config
    from tests.conftest import TINY_OVERRIDES

    root = tmp_path_factory.mktemp("proper-batched")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "CACHE_DIR", root / "cache")
        cfg = load_config(
            None,
            [f"output_dir={root / 'runs'}", "name=t", "data=demo-tags", "max_users=6",
             "max_queries=2", *TINY_OVERRIDES],
        )  # fmt: skip
        cfg.proper = small_proper(
            user_r=2, user_alpha=4.0, user_lr=1e-2, user_epochs=2.0, batch_size=4
        )
        run = Run(cfg)
        train_population(run)
        train_groups(run)
        yield run


def _users(run):
    return [truncate_history(u, n) for u, n in zip(run.dataset.users, SIZES, strict=False)]


def _train(run, router, users, k):
    run.cfg.user.users_per_batch, run.cfg.user.chunk_rows = k, 3  # chunks mix users
    return train_proper_users(run, router, users=users)


def _stored(run, router, users):
    store = run.store(f"proper-{router}")
    out = []
    for user in users:
        tensors = {f: load_file(store.path(user.name) / f) for f in FILES}
        out.append((tensors, store.manifest(user.name).extra))
    return out


def _clear(run, router, users):
    for user in users:
        run.store(f"proper-{router}").delete(user.name)


@pytest.mark.parametrize("router", ["user", "input"])
def test_batched_equals_one_at_a_time_and_resumes(proper_run, router, monkeypatch):
    from ownlm.proper import batched

    run, users = proper_run, _users(proper_run)
    groups = []
    real = batched.train_slots
    monkeypatch.setattr(
        batched,
        "train_slots",
        lambda gm, slots, *a: groups.append(len(slots)) or real(gm, slots, *a),
    )
    base = {k: v.clone() for k, v in run.base().model.state_dict().items()}
    assert _train(run, router, users, k=1)["trained"] == 3
    alone = _stored(run, router, users)
    _clear(run, router, users)
    stats = _train(run, router, users, k=3)
    assert stats == {"trained": 3, "resumed": 0, "empty": 0, "history_changed": 0,
                     "budget_changed": 0}  # fmt: skip
    together = _stored(run, router, users)
    assert groups == [3]  # the batched trainer ran, once, on all three users
    worst = 0.0
    for (want, m_want), (got, m_got) in zip(alone, together, strict=True):
        for f in FILES:
            assert want[f].keys() == got[f].keys()
            for key in want[f]:
                worst = max(worst, (got[f][key] - want[f][key]).abs().max().item())
        assert m_got["loss_first"] == pytest.approx(m_want["loss_first"], abs=1e-4)
        assert m_got["loss_last"] == pytest.approx(m_want["loss_last"], abs=1e-4)
        assert m_got["items"] == m_want["items"]
    assert worst < 1e-4
    moved = max((t[FILES[0]][k]).abs().max().item() for t, _ in together for k in t[FILES[0]]
                if "lora_B" in k)  # fmt: skip
    assert moved > 1e-3  # the residuals (lora_B starts at 0) trained measurably
    after = run.base().model.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)  # stored base untouched
    again = _train(run, router, users, k=3)
    assert again["trained"] == 0 and again["resumed"] == 3
    _clear(run, router, users)


def test_a_user_forgotten_while_training_is_not_saved(proper_run, monkeypatch):
    run, users = proper_run, _users(proper_run)
    victim = users[1].user_id
    real = run.current_history
    monkeypatch.setattr(
        run, "current_histories", lambda us: {u.user_id: real(u.user_id) for u in us}
    )
    monkeypatch.setattr(run, "current_history", lambda uid: None if uid == victim else real(uid))
    stats = _train(run, "user", users, k=3)
    assert stats["trained"] == 2
    store = run.store("proper-user")
    assert [store.exists(u.name) for u in users] == [True, False, True]
    _clear(run, "user", [users[0], users[2]])
