"""Every user-stage variant ownlm trains, in one table: what each is, which method
(OPPU or PROPER) trains it, where its adapters live in a run, which settings are its
budget, and what may be done with it (tuned, exported, bundled, served).

Every list of variants and every check of a variant's kind reads this table; nothing
else spells a variant's properties. It imports nothing, so that the CLI's help, the
config and every part of ownlm may read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ownlm.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """One user-stage variant.

    `method`: "oppu" or "proper", the package that trains and loads it. `router`: PROPER's
    user router ("input" or "user"); None for OPPU. `budget`: the dotted config keys of its
    (lr, epochs). `retrieval`: its prompts carry retrieved items and the profile.
    `exportable`: its model is one LoRA a PEFT user can load (`ownlm export`). `bundled`:
    it goes into a user's ownership bundle. `tunable`: `ownlm tune` chooses its budget.
    `servable`: `ownlm serve` answers with it. `control`: it stands on the control base.
    `label`: what it is, in logs; `table`: its row's label in evaluation tables."""

    name: str
    method: str
    label: str
    table: str
    budget: tuple[str, str]
    router: str | None = None
    retrieval: bool = True
    exportable: bool = True
    bundled: bool = True
    tunable: bool = True
    servable: bool = False
    control: bool = False

    @property
    def is_proper(self) -> bool:
        return self.method == "proper"


OPPU_BUDGET = ("user.lr", "user.epochs")
PROPER_BUDGET = ("proper.user_lr", "proper.user_epochs")
CONTROL = "oppu-control"

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "oppu",
            "oppu",
            "PEFT + retrieval + profile",
            "OPPU: PEFT + retrieval + profile",
            OPPU_BUDGET,
            servable=True,
        ),
        Variant(
            "peft", "oppu", "PEFT only (bare prompts)", "PEFT only", OPPU_BUDGET, retrieval=False
        ),
        Variant(
            CONTROL,
            "oppu",
            "OPPU on the control base (stage 1 + stage 2's pass without groups)",
            "OPPU on the control base (no groups)",
            OPPU_BUDGET,
            exportable=False,
            bundled=False,
            tunable=False,
            control=True,
        ),
        Variant(
            "proper-input",
            "proper",
            "input-dependent router",
            "PROPER, input-dependent router",
            PROPER_BUDGET,
            "input",
            exportable=False,
        ),
        Variant(
            "proper-user",
            "proper",
            "user-only router",
            "PROPER, user-only router",
            PROPER_BUDGET,
            "user",
            servable=True,
        ),
    )
}
EXPORT_ORDER = ("proper-user", "oppu", "peft")  # `ownlm export --variant auto`: the first held
# `ownlm serve`: `<base>:<user>` answers with the first of these the user has an adapter of
SERVE_ORDER = tuple(n for n in EXPORT_ORDER if VARIANTS[n].servable)


def variant(name: str) -> Variant:
    """The variant called `name`; a ConfigError naming the known ones otherwise."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def of_method(method: str) -> dict[str, Variant]:
    """The variants a method trains ("oppu" or "proper"), by name."""
    return {n: v for n, v in VARIANTS.items() if v.method == method}


def names(**flags: bool) -> tuple[str, ...]:
    """The variants whose flags (e.g. `tunable=True`) all have the given values."""
    return tuple(
        n for n, v in VARIANTS.items() if all(getattr(v, k) == x for k, x in flags.items())
    )
