import pytest
import torch
from peft import PeftModel
from tests.train.test_groups import small_proper

from ownlm.adapters.export import export_user
from ownlm.errors import ConfigError
from ownlm.run import Run
from ownlm.train.groups import train_groups
from ownlm.train.population import train_population
from ownlm.train.proper import load_user_model, train_proper_users


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
