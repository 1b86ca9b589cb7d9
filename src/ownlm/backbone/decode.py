"""From label scores to the answer scored: the decision rule fits the task's metric.

`score_labels` gives each prompt a distribution over the task's labels (the softmax of
its (N, L) log-probabilities). Accuracy is best served by that distribution's mode
(`argmax`); the mean absolute error of an ordinal task (StudEmo's -3..3, LaMP-3's 1..5)
by its median (`median`): the label minimizing the expected absolute error, the
minimum Bayes risk answer under |true - answered| (issue #11, item 7).

`decode` in the experiment config chooses: "auto" (median for ordinal tasks, argmax
otherwise), "argmax" or "median". It is an evaluation key: it changes no trained weight.
"""

from __future__ import annotations

import torch

from ownlm.errors import ConfigError

DECODES = ("auto", "argmax", "median")  # the `decode` setting's values
TIE = 1e-5  # risks closer than this are tied (float32 rounding of sums of up to L terms)


def decode_rule(setting: str, task) -> str:
    """The rule `setting` means for `task`: "argmax" or "median" ("auto": median for
    ordinal tasks). "median" on a task whose labels are not ordered numbers is refused."""
    setting = str(setting).strip().lower()
    if setting == "auto":
        return "median" if task.ordinal else "argmax"
    if setting == "median" and not task.ordinal:
        raise ConfigError(
            f"decode=median needs an ordinal task (a rating task with numeric labels, scored "
            f"by MAE); task {task.name} is {task.kind}: use --set decode=auto (argmax for it)"
        )
    if setting not in DECODES:
        raise ConfigError(f"decode is {setting!r}; it must be one of {', '.join(DECODES)}")
    return setting


def expected_abs_error(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(N, L) expected |true - answered| of answering each label, the true label drawn
    from softmax(scores) (N, L); `values` (L,) are the labels' numbers."""
    p = scores.float().softmax(-1)  # (N, L); bfloat16 scores are summed in float32
    v = values.to(device=p.device, dtype=p.dtype)
    cost = (v[:, None] - v[None, :]).abs()  # (L true, L answered)
    return p @ cost


def median_index(scores: torch.Tensor, values: list[float]) -> torch.Tensor:
    """(N,) index of each row's median label: the least expected absolute error; among
    labels tied within TIE, the lowest value (so the answer never depends on label order)."""
    v = torch.tensor(values, dtype=torch.float32, device=scores.device)
    risk = expected_abs_error(scores, v)  # (N, L)
    tied = risk <= risk.min(-1, keepdim=True).values + TIE
    order = torch.argsort(v, stable=True)  # label indices by ascending value
    first = tied[:, order].float().argmax(-1)  # the first tied one in that order
    return order[first]


def pick_labels(scores: torch.Tensor, labels: tuple[str, ...], rule: str = "argmax") -> list[str]:
    """One label per row of `scores` (N, L, aligned with `labels`) under `rule`:
    "argmax" (the most likely label; ties: the first in `labels`) or "median"."""
    if rule == "median":
        best = median_index(scores, [float(label) for label in labels])
    elif rule == "argmax":
        best = scores.float().argmax(-1)
    else:
        raise ConfigError(f"decode rule {rule!r} is not argmax or median; see decode_rule")
    return [labels[j] for j in best.tolist()]
