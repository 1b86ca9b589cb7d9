"""The one loop: step counts, epochs over a fresh seeded shuffle, schedule, train/eval mode."""

import math

import pytest
import torch

from ownlm.train.loop import EarlyStopping, fit, warmup_cosine


def _fit(items, **kw):
    w = torch.nn.Parameter(torch.zeros(()))
    seen: list[list] = []

    def step_loss(batch):
        seen.append(list(batch))
        return (w - float(sum(batch))) ** 2

    args = dict(epochs=1.0, batch_size=4, seed=0)
    args.update(kw)
    losses = fit(step_loss, items, [{"params": [w], "lr": 0.1}], **args)
    return losses, seen, w


def test_steps_cover_the_epochs_and_every_item_once_per_epoch():
    losses, seen, _ = _fit(list(range(10)), epochs=2.0, batch_size=4)
    assert len(losses) == math.ceil(10 * 2 / 4) == 5
    flat = [x for b in seen for x in b]
    assert sorted(flat[:10]) == list(range(10))  # the first epoch is a permutation
    assert all(len(b) == 4 for b in seen)


def test_fewer_items_than_a_batch_and_min_steps():
    losses, seen, _ = _fit([1, 2], batch_size=16, min_steps=3)
    assert len(losses) == 3 and all(sorted(b) == [1, 2] for b in seen)


def test_same_seed_same_batches_other_seed_other_order():
    _, a, _ = _fit(list(range(20)), seed=1)
    _, b, _ = _fit(list(range(20)), seed=1)
    _, c, _ = _fit(list(range(20)), seed=2)
    assert a == b and a != c


def test_it_learns_and_empty_input_is_no_step():
    losses, _, w = _fit([1.0] * 8, epochs=50.0, batch_size=1)
    assert losses[-1] < losses[0] and abs(w.item() - 1.0) < 0.1
    assert _fit([])[0] == []


def test_schedule_and_module_mode():
    assert warmup_cosine(0, 100) == pytest.approx(0.2)  # warm-up: 1/5 of the peak
    assert warmup_cosine(99, 100) < 0.01  # decayed to ~0 at the end
    module = torch.nn.Linear(2, 1)
    modes = []

    def step_loss(batch):
        modes.append(module.training)
        return module(torch.ones(1, 2)).sum()

    module.eval()
    fit(
        step_loss,
        [0, 1],
        [{"params": module.parameters(), "lr": 0.1}],
        epochs=1,
        batch_size=1,
        seed=0,
        module=module,
        schedule=warmup_cosine,
    )
    assert modes == [True, True] and not module.training


def _walk_towards(target: float, val_target: float, patience: int, epochs: float = 20):
    """One weight trained towards `target` (one item, one step an epoch), validated by its
    distance to `val_target`: validation improves while the weight nears `val_target`."""
    w = torch.nn.Parameter(torch.zeros(()))
    stop = EarlyStopping(lambda: {"val_loss": (w.item() - val_target) ** 2}, patience=patience)
    losses = fit(
        lambda batch: (w - target) ** 2,
        [0],
        [{"params": [w], "lr": 0.3}],
        epochs=epochs,
        batch_size=1,
        seed=0,
        early_stopping=stop,
    )
    return w, stop, losses


def test_early_stopping_stops_when_validation_rises_and_keeps_the_best_state():
    w, stop, losses = _walk_towards(target=5.0, val_target=1.0, patience=2)
    assert stop.stopped_early and len(losses) < 20
    best = stop.best_record
    assert best["val_loss"] == min(r["val_loss"] for r in stop.records)
    assert len(stop.records) == stop.best + 3  # stopped after `patience` worse validations
    assert (w.item() - 1.0) ** 2 == pytest.approx(best["val_loss"])  # best state restored
    assert stop.records[0]["step"] == 0 and stop.records[0]["train_loss"] is None
    assert stop.records[1]["train_loss"] == pytest.approx(losses[0])


def test_no_early_stop_while_validation_improves():
    w, stop, losses = _walk_towards(target=5.0, val_target=5.0, patience=2, epochs=6)
    assert not stop.stopped_early and len(losses) == 6 and stop.best == len(stop.records) - 1
    assert [r["epoch"] for r in stop.records] == [0, 1, 2, 3, 4, 5, 6]


def test_when_training_only_hurts_the_initial_state_is_kept():
    w, stop, _ = _walk_towards(target=5.0, val_target=-1.0, patience=1)
    assert stop.best == 0 and w.item() == 0.0
