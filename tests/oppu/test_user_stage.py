"""OPPU stages end to end on a 1-layer Llama: population merge, per-user LoRAs, resume
(and retraining a user whose history changed), isolation between users, and equality
with vanilla PEFT loading."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ownlm.data.splits import truncate_history
from ownlm.oppu.batched import train_users_batched
from ownlm.oppu.sequential import train_users
from ownlm.run import Run
from ownlm.train.population import train_population


def _trained(tiny_cfg):
    run = Run(tiny_cfg)
    train_population(run)
    return run


def test_population_merges_into_a_new_base(tiny_cfg):
    run = _trained(tiny_cfg)
    pop = run.store().manifest("population")
    base = run.base()
    assert pop.stage == "population"
    assert pop.base_fingerprint != base.fingerprint()  # merged weights differ from the start
    assert (run.base_dir / "ownlm_base.json").exists()


def test_user_loras_resume_and_isolation(tiny_cfg):
    run = _trained(tiny_cfg)
    users = run.split.test
    assert len(users) >= 2
    backbone = run.base()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    stats = train_users(run, "oppu", backbone=backbone)
    assert stats["trained"] == len(users)
    # the base is back to itself after each user: nothing of one user reaches the next
    after = backbone.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    store = run.store()
    first = store.path(users[0].name) / "adapter_model.safetensors"
    stamp = first.stat().st_mtime_ns
    again = train_users(run, "oppu")
    assert again == {
        "trained": 0,
        "resumed": len(users),
        "empty": 0,
        "history_changed": 0,
        "budget_changed": 0,
    }
    assert first.stat().st_mtime_ns == stamp
    # every user got their own, different adapter
    from safetensors.torch import load_file

    w = [load_file(store.path(u.name) / "adapter_model.safetensors") for u in users[:2]]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0])


def test_vanilla_peft_gives_the_same_logits(tiny_cfg):
    run = _trained(tiny_cfg)
    user = run.split.test[0]
    train_users(run, "oppu", users=[user])
    ours = run.base()
    path = run.store().verify(user.name, ours.fingerprint())
    prompt = user.queries[0].input
    ids, mask, _ = ours.encode_pairs([prompt], [""])
    ours_model = PeftModel.from_pretrained(ours.model, path)
    ours_logits = ours_model(input_ids=ids, attention_mask=mask).logits
    vanilla = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run.base_dir), str(path)
    )
    vanilla_logits = vanilla(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours_logits, vanilla_logits, atol=1e-5)
    # and the adapter does something: it differs from the bare base
    bare = ours_model.unload()(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(bare, vanilla_logits, atol=1e-6)


@pytest.mark.parametrize("trainer", [train_users, train_users_batched])
def test_a_user_whose_history_changed_is_trained_again(tiny_cfg, trainer):
    run = _trained(tiny_cfg)
    backbone = run.base()
    users = run.dataset.users[-3:]  # the 2 test users and a train user
    assert trainer(run, "oppu", users=users, backbone=backbone)["trained"] == 3
    store = run.store()
    kept = store.path(users[0].name) / "adapter_model.safetensors"
    stamp = kept.stat().st_mtime_ns
    # user 1 wrote more (here: lost their first item), user 2 now has no history at all
    changed = [users[0], truncate_history(users[1], len(users[1].history) - 1)]
    changed.append(truncate_history(users[2], 0))
    stats = trainer(run, "oppu", users=changed, backbone=backbone)
    assert stats == {
        "trained": 1,
        "resumed": 1,
        "empty": 1,
        "history_changed": 1,
        "budget_changed": 0,
    }
    assert store.manifest(users[1].name).extra["history_sha256"] == changed[1].history_digest()
    assert not store.exists(users[2].name)  # an adapter of a history the user no longer has
    assert kept.stat().st_mtime_ns == stamp
