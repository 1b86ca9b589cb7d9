"""Every path inside a run directory, in one place: what run, store, bundle, forget,
serve and export read and write.

    <run>/config.yaml            the resolved ExperimentConfig
    <run>/run.json               what the run was trained from (`run.record`)
    <run>/base/                  backbone with the population LoRA merged
    <run>/base-control/          OPPU's control base: base/ + the control pass merged
    <run>/adapters/              the "oppu" variant's store: population/, groups/, router/, users/
    <run>/adapters-<variant>/    every other variant's store: users/<id>/
    <run>/eval/                  tables, JSON, official-format predictions, charts
    <run>/updates/<user>.jsonl   history items `ownlm update` added
    <run>/updates/pending/       an update's items until its adapter lands
    <run>/tokens.json            the server's API tokens (hashed)
    <run>/.locks/                the run's locks (per user, and run.json's)

It imports nothing of ownlm, so every part may use it.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
RECORD = "run.json"
BASE = "base"
CONTROL_BASE = "base-control"
STORE = "adapters"  # the oppu variant's store, also holding stages 1 and 2
EVAL = "eval"
UPDATES = "updates"
PENDING = "pending"
TOKENS = "tokens.json"
LOCKS = ".locks"


def store_name(variant: str = "oppu") -> str:
    """The folder of `variant`'s adapter store inside a run."""
    return STORE if variant == "oppu" else f"{STORE}-{variant}"


def variant_of(store_dir: Path) -> str:
    """The variant whose adapter store is `store_dir` (the inverse of `store_name`)."""
    return "oppu" if store_dir.name == STORE else store_dir.name.removeprefix(f"{STORE}-")


class RunPaths:
    """The paths of one run directory."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)

    @property
    def config(self) -> Path:
        return self.dir / CONFIG

    @property
    def record(self) -> Path:
        return self.dir / RECORD

    def base(self, name: str = BASE) -> Path:
        return self.dir / name

    @property
    def control_base(self) -> Path:
        return self.dir / CONTROL_BASE

    def store(self, variant: str = "oppu") -> Path:
        return self.dir / store_name(variant)

    def stores(self) -> list[Path]:
        """The adapter stores the run holds (every variant trained so far), sorted."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name.startswith(STORE))

    @property
    def eval(self) -> Path:
        return self.dir / EVAL

    @property
    def updates(self) -> Path:
        return self.dir / UPDATES

    @property
    def pending(self) -> Path:
        return self.dir / UPDATES / PENDING

    @property
    def tokens(self) -> Path:
        return self.dir / TOKENS

    @property
    def locks(self) -> Path:
        return self.dir / LOCKS
