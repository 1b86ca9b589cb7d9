"""Settings of the steps around training: validation on dev users, `ownlm tune`'s
search, and `ownlm update`'s budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ownlm.config.fields import setting
from ownlm.errors import ConfigError, shown


@dataclass
class ValidationSettings:
    """Held-out users that tell whether a stage learned (stages that learn, #12). Dev
    users are taken out of the train users by user, not by item: a stage exists to serve
    users it never saw, so it is judged on users it never saw. Stages 1 and 2 (and the
    tiny pre-training) validate on their items every epoch, stop early, keep the best
    state; `ownlm tune` splits each dev user's history to choose the user stage's budget."""

    dev_frac: float = setting(
        0.15,
        "fraction of the non-test users held out as dev users (validation, tuning); 0 = "
        "none: stages train the fixed epochs without validation",
        ge=0,
        lt=1,
    )
    patience: int = setting(2, "validations without improvement before a stage stops", ge=1)
    monitor: str = setting(
        "loss",
        "what early stopping watches: loss (validation LM loss) or metric",
        choices=("loss", "metric"),
    )
    max_items: int = setting(
        200, "at most this many dev items per validation (a seeded sample)", ge=1
    )


@dataclass
class TuneSettings:
    """`ownlm tune` (and `ownlm train` by itself, `auto`): the user stage's learning rate
    and epochs chosen on the dev users (#12, #24). Each dev user's history is split in history order, the last `val_frac`
    validating what a user LoRA trained on the rest learned; every learning rate of the
    grid trains once per dev user for up to `max_epochs`, validated after each epoch,
    and the (lr, epochs) with the best mean validation metric is the run's."""

    auto: bool = setting(
        True,
        "`ownlm train` tunes the user stage before training it whenever at least "
        "`min_dev_users` dev users have `min_items` history items (--no-tune skips)",
    )
    min_dev_users: int = setting(
        3, "fewest dev users `ownlm train` tunes on by itself (fewer: the preset's budget)", ge=1
    )
    lr_factors: list[float] = setting(
        factory=lambda: [1 / 3, 1.0, 3.0],
        help="learning rates tried, as multiples of the configured one",
    )
    max_epochs: int = setting(
        0, "longest budget tried, in epochs; 0 = twice the configured (at least 4)", ge=0
    )
    val_frac: float = setting(
        0.25, "each dev user's last fraction of history items validates (>= 1 item)", gt=0, lt=1
    )
    min_items: int = setting(3, "dev users with fewer history items are left out", ge=2)
    max_users: int | None = setting(
        None, "tune on at most the first N dev users (empty: all)", ge=1
    )

    def __post_init__(self):
        """Every factor a positive finite number: a learning rate of 0 learns nothing."""
        bad = [f for f in self.lr_factors if not (isinstance(f, int | float) and 0 < f < math.inf)]
        if not self.lr_factors or bad:
            raise ConfigError(
                f"config key 'tune.lr_factors' is {shown(self.lr_factors)}; it must list "
                "positive numbers, e.g. --set tune.lr_factors=[0.333,1,3]"
            )


@dataclass
class UpdateSettings:
    """`ownlm update`: a user's OPPU adapter continued on new history items
    (docs/update.md). Not a training key: an update records its budget in the manifest."""

    lr: float | None = setting(None, "learning rate (empty: the user stage's, tuned or not)", gt=0)
    epochs: float | None = setting(
        None,
        "epochs over the new items (empty: the user stage's, tuned or not: the new items "
        "get as many passes as the first training gave the history, so the adapter follows "
        "them)",
        gt=0,
    )
