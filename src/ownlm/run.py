"""A run directory: where one experiment's data split, base model and adapters live.

runs/<name>/
  config.yaml          the resolved ExperimentConfig
  base/                backbone with the population LoRA merged (HF directory)
  adapters/            AdapterStore: population/, users/<id>/ (OPPU: PEFT + retrieval + profile)
  adapters-peft/       AdapterStore of the "PEFT only" ablation (trained on bare prompts)
  eval/                tables, JSON, official-format predictions, charts
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ownlm.backbone.base import ANSWER_SEP
from ownlm.backbone.load import load_base
from ownlm.config import ExperimentConfig, load_config, save_config
from ownlm.data.demo import make_demo_headlines, make_demo_tags
from ownlm.data.loaders import load_dataset
from ownlm.data.records import Dataset
from ownlm.data.splits import UserSplit, split_users, truncate_history
from ownlm.data.tasks import get_task
from ownlm.errors import ConfigError
from ownlm.store import AdapterStore

DEMOS = {"demo-tags": make_demo_tags, "demo-headlines": make_demo_headlines}
CACHE_DIR = Path(".cache") / "ownlm"


class Run:
    def __init__(self, cfg: ExperimentConfig, write: bool = True):
        self.cfg = cfg
        self.dir = cfg.run_dir
        if write:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.dir / "config.yaml")

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        """An existing run, read-only: its saved config, nothing rewritten (serving, export)."""
        run_dir = Path(run_dir)
        cfg_file = run_dir / "config.yaml"
        if not cfg_file.exists():
            raise ConfigError(
                f"{run_dir} is not a run directory (no config.yaml); train a run first"
            )
        cfg = load_config(cfg_file)
        cfg.output_dir, cfg.name = str(run_dir.parent), run_dir.name
        return cls(cfg, write=False)

    @cached_property
    def dataset(self) -> Dataset:
        if self.cfg.data in DEMOS:
            ds = DEMOS[self.cfg.data](seed=self.cfg.seed)
        else:
            ds = load_dataset(self.cfg.data, self.cfg.task)
        if self.cfg.max_users:
            ds.users = ds.users[: self.cfg.max_users]
        if self.cfg.max_history:
            ds.users = [truncate_history(u, self.cfg.max_history) for u in ds.users]
        return ds

    @cached_property
    def task(self):
        return get_task(self.cfg.task or self.dataset.task)

    @cached_property
    def split(self) -> UserSplit:
        return split_users(self.dataset, test_frac=self.cfg.test_frac)

    def corpus(self) -> list[str]:
        """Pre-training text of the tiny backbone: the train users' history items, each
        written out as the task pair it becomes (prompt, separator, answer), so that the
        model trained from scratch learns the task's language and its answer vocabulary.
        Test users' items and every query answer stay out of it."""
        texts = []
        for user in self.split.train:
            for item in user.history:
                prompt, answer = self.task.item_pair(item)
                texts.append(f"{prompt}{ANSWER_SEP}{answer}")
        return texts

    @property
    def cache_dir(self) -> Path:
        """Where built backbones are cached across runs (the tiny model, by corpus)."""
        return CACHE_DIR

    @property
    def base_dir(self) -> Path:
        return self.dir / "base"

    @cached_property
    def device(self):
        """The resolved `device` setting (a ConfigError if this machine lacks it)."""
        from ownlm.backbone.device import resolve_device

        return resolve_device(self.cfg.device)

    @cached_property
    def dtype(self):
        """The resolved `dtype` setting of the frozen base, for `device`."""
        from ownlm.backbone.device import resolve_dtype

        return resolve_dtype(self.cfg.dtype, self.device)

    def base_fingerprint(self) -> str:
        """The merged base's identity, as recorded when it was written (no model loaded)."""
        import json

        meta = self.base_dir / "ownlm_base.json"
        if not meta.exists():
            raise ConfigError(
                f"no trained base in {self.base_dir}; run `ownlm train --stages population` first"
            )
        return json.loads(meta.read_text())["fingerprint"]

    def base(self):
        """The backbone with the population LoRA merged in (after stage 1), on the run's
        device in the run's precision."""
        return load_base(self.base_dir, self.device, self.dtype)

    def store(self, variant: str = "oppu") -> AdapterStore:
        return AdapterStore(self.dir / ("adapters" if variant == "oppu" else f"adapters-{variant}"))
