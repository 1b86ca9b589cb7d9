"""OPPU's user stage with IA3 and prompt tuning (`user.method`) on a 1-layer Llama:
trained one user at a time (the batched trainer is LoRA's), the method recorded, the
adapters loadable by vanilla PEFT with the same logits, scored by `ownlm eval`,
continued by `ownlm update`, and a run not resumed under another method."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from ownlm.adapters.methods import adapter_method
from ownlm.errors import ConfigError
from ownlm.oppu.update import update_user
from ownlm.oppu.user_stage import train_oppu_users as train_user_stage
from ownlm.run import Run
from ownlm.train.population import train_population


@pytest.mark.parametrize("method", ["ia3", "prompt"])
def test_user_stage_with_another_peft_method(tiny_cfg, tmp_path, method):
    from ownlm.evaluate.runner import evaluate_run

    tiny_cfg.user.method = method
    tiny_cfg.user.users_per_batch = 4  # asked for, but falls back to one user at a time
    run = Run(tiny_cfg)
    train_population(run)
    users = run.split.test
    assert train_user_stage(run, "oppu")["trained"] == len(users)
    store, user = run.store(), users[0]
    assert store.manifest(user.name).extra["method"] == method
    assert adapter_method(store.path(user.name)) == method

    ours = run.base()
    path = store.verify(user.name, ours.fingerprint())
    ids, mask, _ = ours.encode_pairs([user.queries[0].input], [""])
    ours_logits = PeftModel.from_pretrained(ours.model, path)(input_ids=ids, attention_mask=mask)
    vanilla = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.base_dir), path)
    vanilla_logits = vanilla(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours_logits.logits, vanilla_logits, atol=1e-5)

    results = evaluate_run(run, ["oppu"], tmp_path / "eval")
    oppu = next(r for r in results if r.method == "oppu")
    assert oppu.not_run is None and "accuracy" in oppu.metrics

    before = store.manifest(user.name).sha256["adapter_model.safetensors"]
    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps({"id": "n1", "description": "a new film", "tag": "comedy"}) + "\n")
    updated = update_user(run, user.user_id, items)
    assert updated.manifest.extra["method"] == method
    assert updated.manifest.sha256["adapter_model.safetensors"] != before
    assert adapter_method(store.path(user.name)) == method

    tiny_cfg.user.method = "lora"
    with pytest.raises(ConfigError, match="user.method"):
        Run(tiny_cfg)  # the run's adapters are of another method: not resumed as LoRA
