"""The batched user stage equals the sequential one: same weights (plain SGD within 1e-5,
AdamW with per-user clipping within 1e-4), the same PEFT files, the same resume and
counts; and it trains in bfloat16."""

import dataclasses
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from ownlm.adapters.lora import detach, inject, is_checkpointing
from ownlm.backbone.base import CausalBackbone
from ownlm.backbone.tiny import build_model
from ownlm.backbone.tokenizer import train_tokenizer
from ownlm.config import TinyConfig
from ownlm.data.splits import truncate_history
from ownlm.errors import ConfigError
from ownlm.oppu.batched import UserJob, train_group, train_users_batched
from ownlm.oppu.model import user_pairs
from ownlm.oppu.sequential import train_users
from ownlm.run import Run
from ownlm.train.loop import batch_plan
from ownlm.train.per_user import user_seed

WEIGHTS = "adapter_model.safetensors"
SIZES = (3, 7, 12)  # history items of the three users: 2, 4 and 6 steps of 4 pairs


def _runs(tiny_cfg, lr: float):
    """Two runs (one per trainer, so two stores) over the same data and settings."""
    user = dataclasses.replace(tiny_cfg.user, dropout=0.0, epochs=2.0, batch_size=4, lr=lr)
    cfg = dataclasses.replace(tiny_cfg, user=user)
    return Run(dataclasses.replace(cfg, name="seq")), Run(dataclasses.replace(cfg, name="bat"))


def _users(run):
    users = run.dataset.users
    return [truncate_history(u, n) for u, n in zip(users, SIZES, strict=False)]


def _backbone(run) -> CausalBackbone:
    """A random 1-layer Llama with a tokenizer trained on the run's own text (fast)."""
    tok = train_tokenizer(run.corpus(), vocab_size=400)
    cfg = TinyConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, max_len=192)
    return CausalBackbone(build_model(cfg, len(tok)).eval(), tok, name="t", max_len=192)


def _stored(run, users):
    store = run.store()
    return [load_file(store.path(u.name) / WEIGHTS) for u in users]


def _sgd_reference(run, backbone, user):
    """The sequential SGD trainer written out: PEFT, `batch_plan`, per-user clipping."""
    s, seed = run.cfg.user, user_seed(run.cfg.seed, user.user_id)
    pairs = user_pairs(run, user)
    model = inject(backbone, s, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=s.lr)
    model.train()
    for idx in batch_plan(len(pairs), s.epochs, s.batch_size, seed):
        batch = [pairs[i] for i in idx]
        backbone.loss(model, [p for p, _ in batch], [t for _, t in batch]).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    detach(backbone, model)
    return {k.replace(".default", ""): v for k, v in state.items()}


def test_batched_sgd_equals_the_sequential_reference(tiny_cfg):
    _, run = _runs(tiny_cfg, lr=0.5)
    users = _users(run)
    backbone = _backbone(run)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    stats = train_users_batched(
        run,
        users=users,
        backbone=backbone,
        users_per_batch=3,
        chunk_rows=3,  # chunks mix users and split a user's rows
        optimizer=lambda groups: torch.optim.SGD(groups),
    )
    assert stats == {
        "trained": 3,
        "resumed": 0,
        "empty": 0,
        "history_changed": 0,
        "budget_changed": 0,
    }
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base is back, exactly
    for user, got in zip(users, _stored(run, users), strict=True):
        want = _sgd_reference(run, backbone, user)
        assert got.keys() == want.keys()
        moved = max((want[k] - w).abs().max().item() for k, w in _init(run, backbone, user).items())
        assert moved > 1e-3  # training did something measurable
        for k in want:
            assert torch.allclose(got[k], want[k], atol=1e-5), k


def _init(run, backbone, user):
    model = inject(backbone, run.cfg.user, user_seed(run.cfg.seed, user.user_id))
    state = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    detach(backbone, model)
    return {k.replace(".default", ""): v for k, v in state.items()}


def test_batched_adamw_equals_train_users_and_loads_in_vanilla_peft(tiny_cfg):
    seq, bat = _runs(tiny_cfg, lr=1e-2)
    users = _users(seq) + [truncate_history(seq.dataset.users[3], 0)]  # one without history
    backbone = _backbone(seq)
    assert train_users(seq, users=users, backbone=backbone)["trained"] == 3
    stats = train_users_batched(bat, users=users, backbone=backbone, users_per_batch=2)
    assert stats == {
        "trained": 3,
        "resumed": 0,
        "empty": 1,
        "history_changed": 0,
        "budget_changed": 0,
    }
    for want, got in zip(_stored(seq, users[:3]), _stored(bat, users[:3]), strict=True):
        assert got.keys() == want.keys()
        assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-4
    ids, mask, _ = backbone.encode_pairs([users[2].history[0].fields["description"]], [""])
    for user in users[:3]:
        paths = [r.store().verify(user.name, backbone.fingerprint()) for r in (seq, bat)]
        configs = [json.loads((p / "adapter_config.json").read_text()) for p in paths]
        assert configs[0] == configs[1]
        logits = []
        for path in paths:
            model = PeftModel.from_pretrained(backbone.model, str(path))
            logits.append(model(input_ids=ids, attention_mask=mask).logits.detach())
            detach(backbone, model)
        assert torch.allclose(logits[0], logits[1], atol=1e-4)
        m_seq, m_bat = (r.store().manifest(user.name) for r in (seq, bat))
        assert m_bat.stage == m_seq.stage and m_bat.extra["items"] == m_seq.extra["items"]
        assert m_bat.extra["loss_first"] == pytest.approx(m_seq.extra["loss_first"], abs=1e-4)
        assert m_bat.extra["loss_last"] == pytest.approx(m_seq.extra["loss_last"], abs=1e-4)
    # resume: everything stored for this base is skipped
    again = train_users_batched(bat, users=users, backbone=backbone, users_per_batch=2)
    assert again == {
        "trained": 0,
        "resumed": 3,
        "empty": 1,
        "history_changed": 0,
        "budget_changed": 0,
    }


def test_a_step_trains_in_bfloat16(tiny_cfg):
    _, run = _runs(tiny_cfg, lr=1e-2)
    backbone = _backbone(run)
    backbone.model.to(torch.bfloat16)
    users = _users(run)[:2]
    jobs = [UserJob(u.name, user_pairs(run, u), user_seed(0, u.user_id)) for u in users]
    start = [_init(run, backbone, u) for u in users]
    results = train_group(backbone, jobs, run.cfg.user, chunk_rows=4)
    for (weights, losses), init in zip(results, start, strict=True):
        assert losses and all(torch.isfinite(torch.tensor(losses)))
        b = next(b for name, (_, b) in weights.items())
        assert torch.isfinite(b).all() and b.abs().max() > 0  # lora_B starts at zero
        assert all(w.dtype == init[k].dtype for k, w in _flat(weights).items())
    assert next(backbone.model.parameters()).dtype == torch.bfloat16


def _flat(weights):
    out = {}
    for name, (a, b) in weights.items():
        out[f"base_model.model.{name}.lora_A.weight"] = a
        out[f"base_model.model.{name}.lora_B.weight"] = b
    return out


def test_the_encoder_backbone_falls_back_to_one_user_at_a_time(tiny_cfg, monkeypatch):
    """The user stage's one dispatcher (`oppu.user_stage`) decides: an encoder trains one
    user at a time; the batched trainer itself refuses it in one line."""
    from ownlm.oppu import user_stage

    calls = []
    monkeypatch.setattr(user_stage, "train_users", lambda *a: calls.append(a) or {"trained": 0})
    tiny_cfg.user.users_per_batch = 4
    run = Run(tiny_cfg)
    encoder = type("Enc", (), {"kind": "encoder"})()
    assert user_stage.train_oppu_users(run, "oppu", [], encoder) == {"trained": 0}
    assert calls == [(run, "oppu", [], encoder)]
    with pytest.raises(ConfigError, match="encoder backbone trains a per-user label head"):
        train_users_batched(run, users=[], backbone=encoder)


def test_gradient_checkpointing_gives_the_same_weights(tiny_cfg):
    _, run = _runs(tiny_cfg, lr=0.5)
    backbone = _backbone(run)
    users = _users(run)
    jobs = [UserJob(u.name, user_pairs(run, u), user_seed(0, u.user_id)) for u in users]
    results = [
        train_group(
            backbone,
            jobs,
            run.cfg.user,
            chunk_rows=5,
            optimizer=lambda groups: torch.optim.SGD(groups),
            gradient_checkpointing=ckpt,
        )
        for ckpt in (False, True)
    ]
    assert not is_checkpointing(backbone.model)  # switched off again
    for (plain, _), (ckpt, _) in zip(*results, strict=True):
        for name, (a, b) in plain.items():
            assert torch.allclose(ckpt[name][0], a, atol=1e-6)
            assert torch.allclose(ckpt[name][1], b, atol=1e-6)
