import json

import pytest
import torch
from peft import PeftModel

from ownlm.data.splits import truncate_history
from ownlm.errors import ConfigError
from ownlm.proper import export_adapter, load_user_model
from ownlm.proper.group_stage import train_groups
from ownlm.proper.user_stage import train_proper_users
from ownlm.run import Run
from ownlm.train.population import train_population
from tests.proper.test_group_stage import small_proper


def test_proper_users_train_store_and_export(tiny_cfg, tmp_path):
    tiny_cfg.proper = small_proper(user_r=2, user_alpha=4.0, user_lr=1e-3, user_epochs=1.0)
    run = Run(tiny_cfg)
    train_population(run)
    train_groups(run)
    user = run.split.test[0]
    for router in ("input", "user"):
        stats = train_proper_users(run, router, users=[user])
        assert stats["trained"] == 1
        assert train_proper_users(run, router, users=[user])["resumed"] == 1
    fewer = truncate_history(user, len(user.history) - 1)  # their history changed
    assert train_proper_users(run, "input", users=[fewer])["history_changed"] == 1
    train_proper_users(run, "input", users=[user])

    with pytest.raises(ConfigError, match="user-only"):
        run.store("proper-user").delete(user.name)
        export_adapter(run, user.user_id, tmp_path / "x")
    train_proper_users(run, "user", users=[user])
    out = export_adapter(run, user.user_id, tmp_path / "flat")

    backbone = run.base()
    ids, mask, _ = backbone.encode_pairs(["some prompt"], ["x"])
    model = load_user_model(run, backbone, user, "user")
    with torch.no_grad():
        mixed = model(input_ids=ids, attention_mask=mask).logits
    plain = run.base().model
    flat = PeftModel.from_pretrained(plain, out).eval()
    with torch.no_grad():
        got = flat(input_ids=ids, attention_mask=mask).logits
    assert (got - mixed).abs().max().item() < 1e-5
    # task_type CAUSAL_LM: vanilla PEFT loads the flat export and its base from its config
    from peft import AutoPeftModelForCausalLM

    alone = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert torch.allclose(alone(input_ids=ids, attention_mask=mask).logits, got, atol=1e-6)


@pytest.mark.slow  # ~1 min on 2 CPUs: the packaged all-MiniLM-L6-v2 through PROPER's stages
def test_proper_on_the_minilm_encoder_trains_evaluates_and_exports(tiny_cfg, tmp_path):
    from ownlm.evaluate.proper import evaluate_proper

    tiny_cfg.backbone = "minilm"
    tiny_cfg.max_users, tiny_cfg.max_history, tiny_cfg.max_queries = 4, 4, 1
    tiny_cfg.population.epochs = 0.5
    tiny_cfg.proper = small_proper(
        balance=0.1, user_r=2, user_alpha=4.0, user_lr=1e-3, user_epochs=1.0
    )
    run = Run(tiny_cfg)
    train_population(run)
    stats = train_groups(run)
    assert abs(sum(stats["tokens"]) - 1) < 1e-3  # every pair on one expert (fewer users than G)
    experts = run.store().verify("group:0", run.base().fingerprint())
    targets = json.loads((experts / "adapter_config.json").read_text())["target_modules"]
    assert targets and all("intermediate.dense" in t or "output.dense" in t for t in targets)
    user = run.split.test[0]
    train_proper_users(run, "user", users=[user])
    results = evaluate_proper(run, routers=("user",))
    assert results[0].method == "proper-user" and "accuracy" in results[0].metrics

    out = export_adapter(run, user.user_id, tmp_path / "flat")
    backbone = run.base()
    ids, mask = backbone._batch(["a movie about a heist"])
    model = load_user_model(run, backbone, user, "user")
    with torch.no_grad():
        mixed = model(input_ids=ids, attention_mask=mask)  # (1, labels)
    flat = PeftModel.from_pretrained(run.base().model, out).eval()
    with torch.no_grad():
        got = flat(input_ids=ids, attention_mask=mask)
    assert got.shape == mixed.shape == (1, len(run.task.labels))
    assert (got - mixed).abs().max().item() < 1e-5
