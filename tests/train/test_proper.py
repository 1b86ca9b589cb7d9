import json

import pytest
import torch
from peft import PeftModel

from ownlm.errors import ConfigError
from ownlm.methods.proper import export_user, load_user_model
from ownlm.run import Run
from ownlm.train.groups import train_groups
from ownlm.train.population import train_population
from ownlm.train.proper_users import train_proper_users
from tests.train.test_groups import small_proper


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

    with pytest.raises(ConfigError, match="user-only"):
        run.store("proper-user").delete(user.name)
        export_user(run, user.user_id, tmp_path / "x")
    train_proper_users(run, "user", users=[user])
    out = export_user(run, user.user_id, tmp_path / "flat")

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


@pytest.mark.slow  # ~2 min on 2 CPUs: trains OPPU and PROPER users in the study
def test_proper_evaluation_new_users_groups_view_and_study(tiny_cfg, tmp_path):
    from ownlm.data.splits import truncate_history
    from ownlm.evaluate.groups import groups_view
    from ownlm.evaluate.proper import evaluate_proper
    from ownlm.methods.proper import groups_fingerprint, load_groups, prepare_user
    from ownlm.studies.active_levels import active_level_study

    tiny_cfg.proper = small_proper(user_r=2, user_alpha=4.0, user_lr=1e-3, user_epochs=1.0)
    run = Run(tiny_cfg)
    train_population(run)
    train_groups(run)
    trained, new = run.split.test[0], run.split.test[1]
    train_proper_users(run, "user", users=[trained])

    backbone = run.base()
    fp = groups_fingerprint(run, backbone.fingerprint())
    gm = load_groups(run, backbone)
    store = run.store("proper-user")
    assert prepare_user(gm, store, fp, trained, "user", None) == "adapter"
    assert prepare_user(gm, store, fp, new, "user", torch.zeros(384).numpy()) == "new"
    assert prepare_user(gm, store, fp, truncate_history(new, 0), "user", None) == "population"

    results = evaluate_proper(run)
    assert [r.method for r in results] == ["proper-input", "proper-user"]
    assert all("accuracy" in r.metrics for r in results)
    view = groups_view(run)
    assert abs(sum(view["share"]) - 1) < 1e-6 and len(view["users"]) == len(run.dataset.users)
    assert 0.25 <= view["user_top_gate"] <= 1.0
    assert json.loads((run.dir / "eval" / "groups.json").read_text())["share"] == view["share"]
    table = active_level_study(run, buckets=(2,), out_dir=tmp_path / "eval")
    assert set(table["2"]) == {
        "user-majority",
        "pag",
        "oppu",
        "proper-input",
        "proper-user",
        "proper-new",
    }
    assert (tmp_path / "eval" / "active_levels.png").exists()


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
    assert min(stats["tokens"]) > 0.0
    experts = run.store().verify("group:0", run.base().fingerprint())
    targets = json.loads((experts / "adapter_config.json").read_text())["target_modules"]
    assert targets and all("intermediate.dense" in t or "output.dense" in t for t in targets)
    user = run.split.test[0]
    train_proper_users(run, "user", users=[user])
    results = evaluate_proper(run, routers=("user",))
    assert results[0].method == "proper-user" and "accuracy" in results[0].metrics

    out = export_user(run, user.user_id, tmp_path / "flat")
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
