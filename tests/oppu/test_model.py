"""OPPU's loadable model: a user's stored LoRA on the base, and the base back after."""

import pytest
import torch

from ownlm.errors import ConfigError
from ownlm.oppu.model import check_variant, user_model
from ownlm.oppu.sequential import train_users
from ownlm.run import Run
from ownlm.train.per_user import user_seed
from ownlm.train.population import train_population


def test_user_model_loads_the_users_lora_and_gives_the_base_back(tiny_cfg):
    run = Run(tiny_cfg)
    train_population(run)
    trained, other = run.split.test[0], run.split.test[1]
    train_users(run, "oppu", users=[trained])
    backbone = run.base()
    fp = backbone.fingerprint()
    ids, mask, _ = backbone.encode_pairs(["a prompt"], [""])
    with torch.no_grad():
        bare = backbone.model(input_ids=ids, attention_mask=mask).logits
        with user_model(backbone, run.store("oppu"), trained, fp) as model:
            mine = model(input_ids=ids, attention_mask=mask).logits
        with user_model(backbone, run.store("oppu"), other, fp) as model:
            assert model is backbone.model  # no adapter: the population model answers
        after = backbone.model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(mine, bare) and torch.equal(after, bare)
    assert backbone.fingerprint() == fp


def test_seeds_and_variants():
    assert user_seed(0, "u1") == user_seed(0, "u1") != user_seed(1, "u1")
    with pytest.raises(ConfigError, match="oppu"):
        check_variant("lora")
