"""The decision rule from label scores to the answer (issue #11, item 7), on hand-made
distributions: the median minimizes the expected absolute error, argmax is the mode."""

from __future__ import annotations

import itertools

import pytest
import torch

from ownlm.backbone.decode import decode_rule, expected_abs_error, median_index, pick_labels
from ownlm.data.tasks import get_task
from ownlm.errors import ConfigError

VALENCE = tuple(str(i) for i in range(-3, 4))  # studemo-valence's labels


def scores(*rows: list[float]) -> torch.Tensor:
    """Log-probabilities of hand-made label distributions (rows need not sum to 1)."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def test_median_and_argmax_differ_on_a_bimodal_distribution():
    # mode at -3 (0.4), but 0.6 of the mass is at +2 or +3: the median is +2
    s = scores([0.4, 0, 0, 0, 0, 0.35, 0.25])
    assert pick_labels(s, VALENCE, "argmax") == ["-3"]
    assert pick_labels(s, VALENCE, "median") == ["2"]


def test_median_equals_argmax_on_a_peaked_distribution():
    s = scores([0.05, 0.05, 0.1, 0.6, 0.1, 0.05, 0.05])
    assert pick_labels(s, VALENCE, "median") == pick_labels(s, VALENCE, "argmax") == ["0"]


def test_median_minimizes_the_expected_absolute_error_by_brute_force():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(200, 5, generator=g) * 3
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    p = s.double().softmax(-1)
    brute = [
        min(
            range(5),
            key=lambda j, row=row: sum(row[i] * abs(values[i] - values[j]) for i in range(5)),
        )
        for row in p.tolist()
    ]
    assert median_index(s, values).tolist() == brute
    risk = expected_abs_error(s, torch.tensor(values))
    assert torch.allclose(
        risk.double(),
        p @ (torch.tensor(values)[:, None] - torch.tensor(values)).abs().double(),
        atol=1e-5,
    )


def test_ties_go_to_the_lower_label_whatever_the_label_order():
    # half the mass at 1, half at 3: every value in [1, 3] is a median; the lowest wins
    s = scores([0.5, 0, 0.5])
    assert pick_labels(s, ("1", "2", "3"), "median") == ["1"]
    assert pick_labels(scores([0.5, 0, 0.5]), ("3", "2", "1"), "median") == ["1"]
    # uniform over 4 labels: 2 and 3 tie (and everything between); the lower is taken
    assert pick_labels(scores([0.25] * 4), ("1", "2", "3", "4"), "median") == ["2"]
    # argmax ties: the first label in order, on every call
    assert pick_labels(scores([0.5, 0, 0.5]), ("1", "2", "3"), "argmax") == ["1"]


def test_median_reads_the_labels_as_numbers_not_in_their_order():
    labels = ("5", "-1", "2")  # an odd declared order: values -1 < 2 < 5
    s = scores([0.3, 0.4, 0.3])  # mass: 5 -> 0.3, -1 -> 0.4, 2 -> 0.3: the median is 2
    assert pick_labels(s, labels, "median") == ["2"]
    for perm in itertools.permutations(range(3)):
        permuted = tuple(labels[i] for i in perm)
        assert pick_labels(s[:, list(perm)], permuted, "median") == ["2"]


def test_bfloat16_scores_decode_as_float32_ones():
    s = scores([0.4, 0, 0, 0, 0, 0.35, 0.25], [0.05, 0.05, 0.1, 0.6, 0.1, 0.05, 0.05])
    s = s.clamp_min(-30)  # log(0) = -inf is fine either way; keep the cast finite
    for rule in ("argmax", "median"):
        assert pick_labels(s.bfloat16(), VALENCE, rule) == pick_labels(s, VALENCE, rule)
    assert median_index(s.bfloat16(), [float(v) for v in VALENCE]).dtype == torch.int64


def test_auto_is_median_for_ordinal_tasks_only():
    assert get_task("studemo-valence").ordinal and get_task("LaMP-3").ordinal
    assert not get_task("LaMP-2").ordinal and not get_task("LaMP-4").ordinal
    assert not get_task("LaMP-1").ordinal  # labels [1], [2]: classes, not numbers
    assert decode_rule("auto", get_task("studemo-valence")) == "median"
    assert decode_rule("auto", get_task("LaMP-3")) == "median"
    assert decode_rule("auto", get_task("LaMP-2")) == "argmax"
    assert decode_rule("auto", get_task("LaMP-4")) == "argmax"
    assert decode_rule("argmax", get_task("LaMP-3")) == "argmax"


def test_median_on_a_classification_task_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="decode=median needs an ordinal task.*decode=auto"):
        decode_rule("median", get_task("LaMP-2"))


def test_the_setting_is_checked_at_config_load():
    from ownlm.config import EVAL_KEYS, load_config

    assert "decode" in EVAL_KEYS  # changing it never invalidates a trained run
    assert load_config(None, ["decode=median"]).decode == "median"
    with pytest.raises(ConfigError, match="'decode' is 'mode'.*one of auto, argmax, median"):
        load_config(None, ["decode=mode"])


def test_a_backbone_predicts_with_the_rule(monkeypatch):
    """Both backbones route their label scores through the rule (no argmax of their own)."""
    from ownlm.backbone.base import CausalBackbone

    task = get_task("studemo-valence")
    bimodal = scores([0.4, 0, 0, 0, 0, 0.35, 0.25]).repeat(3, 1)
    backbone = CausalBackbone.__new__(CausalBackbone)
    monkeypatch.setattr(
        backbone,
        "score_labels",
        lambda model, prompts, labels: bimodal[: len(prompts)],
        raising=False,
    )
    assert backbone.predict(None, task, ["a", "b", "c"], batch_size=2) == ["-3"] * 3
    assert backbone.predict(None, task, ["a", "b", "c"], batch_size=2, decode="median") == ["2"] * 3


def test_the_encoder_decodes_in_its_head_order(monkeypatch):
    from types import SimpleNamespace

    from ownlm.backbone.base import EncoderBackbone

    task = get_task("studemo-valence")
    backbone = EncoderBackbone.__new__(EncoderBackbone)
    backbone.model = SimpleNamespace(labels=VALENCE[::-1])  # head order: 3 .. -3
    bimodal = scores([0.25, 0.35, 0, 0, 0, 0, 0.4])  # 3: 0.25, 2: 0.35, -3: 0.4
    monkeypatch.setattr(backbone, "score_labels", lambda m, p, labels: bimodal, raising=False)
    assert backbone.predict(None, task, ["a"], decode="argmax") == ["-3"]
    assert backbone.predict(None, task, ["a"], decode="median") == ["2"]


def test_validation_picks_labels_as_the_evaluation_does(tmp_path):
    """A stage's validation metric uses the run's decode; with monitor=metric the rule
    joins the stage's resume record (it decides the epoch kept)."""
    from pathlib import Path

    from ownlm.config import load_config
    from ownlm.run import Run
    from ownlm.train.validation import settings_record, validation_set

    root = Path(__file__).resolve().parents[2]
    base = [
        f"data={root / 'tests/data/fixtures/example-task.jsonl'}",
        f"task={root / 'configs/tasks/example-task.yaml'}",  # a rating task, 1..5
        f"output_dir={tmp_path}",
    ]
    pairs = [("How many stars?", "3")]
    run = Run(load_config(None, base), write=False)
    assert validation_set(run, pairs).decode == "median"
    assert "decode" not in settings_record(run, validation_set(run, pairs))  # monitor=loss
    run = Run(load_config(None, [*base, "validation.monitor=metric"]), write=False)
    assert settings_record(run, validation_set(run, pairs))["decode"] == "median"
    run = Run(load_config(None, [*base, "decode=argmax"]), write=False)
    assert validation_set(run, pairs).decode == "argmax"


def test_tune_scores_its_budgets_with_the_run_decode(tmp_path):
    """`ownlm tune` validates as the stages do, and a tune chosen under another rule is
    not reused (its settings name the rule unless it is argmax)."""
    from pathlib import Path

    from ownlm.config import load_config
    from ownlm.pipeline.tune import DevUser, tune_settings
    from ownlm.pipeline.tune import dev_validation_set as tune_set
    from ownlm.run import Run

    root = Path(__file__).resolve().parents[2]
    base = [
        f"data={root / 'tests/data/fixtures/example-task.jsonl'}",
        f"task={root / 'configs/tasks/example-task.yaml'}",
        f"output_dir={tmp_path}",
    ]
    run = Run(load_config(None, base), write=False)
    user = run.split.train[0]
    dev = DevUser(user, user.history[-2:])
    assert tune_set(run, dev, "oppu", "3").decode == "median"
    assert tune_settings(run)["decode"] == "median"
    run = Run(load_config(None, [*base, "decode=argmax"]), write=False)
    assert tune_set(run, dev, "oppu", "3").decode == "argmax" and "decode" not in tune_settings(run)
