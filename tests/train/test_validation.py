"""The validation shared by the stages (`ownlm.train.validation`): the guard, the sets,
the dev users' embeddings of stage 2, and the tiny pre-training's validation."""

import json
import logging

import numpy as np
import pytest
import torch

from ownlm.backbone.tiny import corpus_key
from ownlm.config import ProperSettings, TinyConfig
from ownlm.proper.group_stage import dev_embeddings
from ownlm.run import Run
from ownlm.train.population import stage1_pairs, train_population
from ownlm.train.pretrain import build_or_load_tiny, cache_key
from ownlm.train.validation import (
    ValidationSet,
    dev_users,
    early_stopping,
    guard,
    sample,
    tuning_hints,
    validation_set,
)


def _record(metric, values, reference, kept):
    return {
        "metric": metric,
        "reference": reference,
        "scored": 20,
        "kept": kept,
        "kept_epoch": float(kept),
        "records": [{"epoch": float(i), metric: v} for i, v in enumerate(values)],
    }


HINTS = tuning_hints("population", 2.0, 5e-4)


def test_guard_fires_only_when_the_kept_state_loses_to_the_reference():
    # accuracy: higher is better; the kept epoch (1) decides, not the best metric
    message = guard("stage 1 (population)", _record("accuracy", [0.1, 0.2, 0.5], 0.25, 1), HINTS)
    assert "accuracy 0.2000 is worse than the population reference 0.2500" in message
    assert "--set population.epochs=4" in message and "--set population.lr=0.002" in message
    assert "backbone" in message
    assert guard("s", _record("accuracy", [0.1, 0.3], 0.25, 1), HINTS) is None
    # mae: lower is better
    assert "mae 1.9000" in guard("s", _record("mae", [2.0, 1.9], 1.0, 1), HINTS)
    assert guard("s", _record("mae", [2.0, 0.9], 1.0, 1), HINTS) is None
    assert guard("s", None, HINTS) is None  # nothing validated, nothing said


def test_monitor_watches_the_loss_or_the_metric_in_its_direction(tiny_cfg):
    run = Run(tiny_cfg)
    accuracy, mae = (ValidationSet([], m, 0.0, 0, 1) for m in ("accuracy", "mae"))
    loss = early_stopping(run, accuracy, dict)
    assert (loss.monitor, loss.mode, loss.patience) == ("val_loss", "min", 2)
    run.cfg.validation.monitor = "metric"
    assert (early_stopping(run, accuracy, dict).mode, early_stopping(run, mae, dict).mode) == (
        "max",
        "min",
    )
    assert early_stopping(run, mae, dict).monitor == "mae"


def test_sample_is_seeded_bounded_and_ordered():
    items = list(range(50))
    assert sample(items, 10, seed=3) == sample(items, 10, seed=3)
    assert len(sample(items, 10, seed=3)) == 10 and sample(items, 10, 3) == sorted(
        sample(items, 10, 3)
    )
    assert sample(items, 100, seed=3) == items


def test_validation_set_scores_the_population_majority_on_the_same_items(tiny_cfg):
    tiny_cfg.validation.max_items = 7
    run = Run(tiny_cfg)
    pairs = stage1_pairs(run, dev_users(run))
    vset = validation_set(run, pairs)
    assert len(vset.pairs) == vset.scored == 7 and vset.metric == "accuracy"
    outputs = [it.fields["tag"] for u in run.split.train for it in u.history]
    majority = max(set(outputs), key=outputs.count)
    golds = [p[1] for p in vset.pairs]
    assert vset.reference == pytest.approx(golds.count(majority) / 7)
    assert validation_set(run, []) is None


def test_no_dev_users_trains_the_fixed_epochs_and_says_so_once(tiny_cfg, caplog):
    tiny_cfg.validation.dev_frac = 0.0
    run = Run(tiny_cfg)
    with caplog.at_level(logging.INFO, logger="ownlm"):
        logging.getLogger("ownlm").addHandler(caplog.handler)
        try:
            stats = train_population(run)
        finally:
            logging.getLogger("ownlm").removeHandler(caplog.handler)
    said = [r for r in caplog.records if "no dev users" in r.getMessage()]
    assert len(said) == 1 and "validation.dev_frac=0" in said[0].getMessage()
    assert stats["warnings"] == []
    record = run.stage_record("population")
    assert record["validation"] is None and record["inputs"] and record["identity"]


def test_dev_users_are_placed_on_the_router_as_stage_3_places_new_users(tiny_cfg):
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], dtype=np.float32)
    dev = np.array([[1.0, 0.05]], dtype=np.float32)
    table = torch.nn.Parameter(torch.tensor([[1.0, 1.0], [5.0, 5.0], [3.0, 3.0]]))
    mu, proj = np.zeros(2, dtype=np.float32), np.eye(2, dtype=np.float32)
    run = Run(tiny_cfg)
    run.cfg.proper = ProperSettings(new_user="projection")
    assert torch.equal(dev_embeddings(run, dev, train, mu, proj, table)(), torch.tensor(dev))
    run.cfg.proper = ProperSettings(new_user="neighbours", neighbours=2)
    emb = dev_embeddings(run, dev, train, mu, proj, table)
    assert torch.equal(emb(), torch.tensor([[2.0, 2.0]]))  # rows 0 and 2, the nearest
    with torch.no_grad():
        table[0] += 2  # read as the table trains
    assert torch.equal(emb(), torch.tensor([[3.0, 3.0]]))


SMALL = TinyConfig(
    vocab_size=300, hidden_size=32, layers=1, heads=2, intermediate_size=64, max_len=64,
    min_steps=3, epochs=2.0, batch_size=8,
)  # fmt: skip
TEXTS = [f"user {i} likes movie number {i % 7} with a twist ending" for i in range(40)]
DEV = [f"user {i} likes movie number {i % 5} with a sad ending" for i in range(8)]


def test_pretraining_is_validated_on_dev_text_and_records_it(tmp_path):
    path = build_or_load_tiny(TEXTS, tmp_path, SMALL, dev_texts=DEV, patience=2)
    meta = json.loads((path / "ownlm_pretrain.json").read_text())
    v = meta["validation"]
    assert v["monitor"] == "val_loss" and v["dev_texts"] == len(DEV)
    assert v["records"][0]["epoch"] == 0 and len(v["records"]) >= 2
    losses = [r["val_loss"] for r in v["records"]]
    assert v["records"][v["kept"]]["val_loss"] == min(losses)
    assert losses[-1] < losses[0]  # it learned something the dev text shares
    # the dev text is part of the cache key; without it the key is the corpus's alone
    assert path.name == f"tiny-{cache_key(TEXTS, SMALL, DEV, 2)}"
    assert cache_key(TEXTS, SMALL, [], 2) == corpus_key(TEXTS, SMALL)
