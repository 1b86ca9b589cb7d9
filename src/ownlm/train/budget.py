"""The user stage's budget: the learning rate and epochs each user LoRA trains with
(and, for OPPU's variants, the PEFT method, `user.method`).

A budget is the configured one (`user.lr` and `user.epochs` for OPPU's variants,
`proper.user_lr` and `proper.user_epochs` for PROPER's) unless `ownlm tune` chose
another on the dev users, for this variant and this base (run.json "tuned",
`pipeline.tune`). Every user stage asks `user_budget`, trains with it, writes it into each
user's manifest, and retrains a stored user trained with another (`budget_reason`): the
run's adapters always stand for the run's present choice. `user.method` is a training
key, so a run is not resumed under another method (`run.claim` refuses); the manifest
records it all the same, and a stored user of another method is trained again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ownlm.log import get_logger
from ownlm.run.record import get_key
from ownlm.variants import variant as variant_info

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
_WARNED: set[tuple[str, str]] = set()  # (run dir, variant) already told their tune is stale


@dataclass(frozen=True)
class Budget:
    """What one user LoRA trains with. `source`: "config" or "tuned". `configured`: the
    configured (lr, epochs), which adapters stored without a budget were trained with."""

    lr: float
    epochs: float
    source: str
    configured: tuple[float, float]
    method: str | None = None  # OPPU's `user.method`; None: PROPER's mixture, a search

    def lora(self, s):
        """`s` (LoraSettings) with this budget's lr and epochs."""
        return replace(s, lr=self.lr, epochs=self.epochs)

    def extra(self) -> dict:
        """The manifest's record of it."""
        method = {"method": self.method} if self.method else {}
        return {"lr": self.lr, "epochs": self.epochs, "budget": self.source, **method}

    def __str__(self) -> str:
        method = f"{self.method}, " if self.method not in (None, "lora") else ""
        return f"{method}lr {self.lr:.3g}, {self.epochs:g} epochs ({self.source})"


def budget_keys(variant: str) -> tuple[str, str]:
    """The config keys of the variant's budget, dotted as `--set` spells them."""
    return variant_info(variant).budget


def configured(run: Run, variant: str) -> Budget:
    """The variant's budget as configured."""
    lr, epochs = (get_key(run.cfg, key) for key in budget_keys(variant))
    if variant_info(variant).is_proper:
        return Budget(lr, epochs, "config", (lr, epochs))
    return Budget(lr, epochs, "config", (lr, epochs), run.cfg.user.method)


def user_budget(run: Run, variant: str, fingerprint: str) -> Budget:
    """The budget `variant`'s user stage trains with on the base `fingerprint` (OPPU:
    the merged base's; PROPER: base + stage 2, `groups_fingerprint`): the tuned one
    when `ownlm tune` chose it on that base, else the configured one (with one warning
    when a tune stands on a base trained since)."""
    base = configured(run, variant)
    tuned = ((run.recorded() or {}).get("tuned") or {}).get(variant)
    if not tuned:
        return base
    if tuned.get("fingerprint") != fingerprint:
        if (str(run.dir), variant) not in _WARNED:
            _WARNED.add((str(run.dir), variant))
            log.warning(
                f"the {variant} budget tuned in {run.dir} was chosen on another base (trained "
                f"again since): training with the configured {', '.join(budget_keys(variant))}; "
                f"choose again with `ownlm tune -c {run.dir / 'config.yaml'} --variants {variant}`"
            )
        return base
    lr_key, epochs_key = budget_keys(variant)
    return Budget(tuned[lr_key], tuned[epochs_key], "tuned", base.configured, base.method)


def budget_reason(store, name: str, budget: Budget) -> str | None:
    """ "other budget" when the stored adapter `name` was trained with another lr,
    epochs or PEFT method than `budget` (None when the same); one stored before adapters
    recorded their budget was trained with the configured one, and with LoRA."""
    extra = store.manifest(name).extra
    used = (extra.get("lr", budget.configured[0]), extra.get("epochs", budget.configured[1]))
    other_method = budget.method is not None and extra.get("method", "lora") != budget.method
    return None if used == (budget.lr, budget.epochs) and not other_method else "other budget"
