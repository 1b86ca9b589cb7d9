"""Reading and writing an experiment's config: a YAML file, `--set key=value` overrides
(dotted for nesting), old key names mapped to new ones, and the --help listing.

`RENAMED` maps a key's old dotted name to its new one. It is applied to a config file,
to each `--set` override and so to the config.yaml recorded in an old run directory
(`Run.open` loads it with `load_config`), with a one-line warning naming the new key;
`renamed_values` does the same for a run's recorded training keys (run.json).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import yaml

from ownlm.config.experiment import ExperimentConfig
from ownlm.config.fields import is_bounded, rule_text
from ownlm.config.presets import apply_preset
from ownlm.config.validate import validated
from ownlm.errors import ConfigError, shown
from ownlm.safe_yaml import load_yaml, load_yaml_file

# old dotted key -> new dotted key; a group's old name moves every key under it
RENAMED: dict[str, str] = {}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (optional) and apply `key=value` overrides (dotted for nesting)."""
    values: dict = {} if path is None else _renamed_tree(_read_yaml_file(Path(path)), str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {shown(item)} must look like key=value, e.g. user.lr=1e-3")
        value = load_yaml(raw, f"the value of --set {_cut(item)}") if raw.strip() else None
        _set_dotted(values, renamed_key(key.strip(), "--set"), value)
    return validated(ExperimentConfig, apply_preset(values))


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    """`cfg` as YAML, every key in field order: what `load_config` reads back as `cfg`."""
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def describe_fields(cls=ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested ones dotted, a numeric field's bound
    at the end of its help: the CLI's help text."""
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(type(value), prefix + f.name + ".")
            continue
        bound = f" [{rule_text(f.metadata)}]" if is_bounded(f.metadata) else ""
        rows.append((prefix + f.name, repr(value), f.metadata.get("help", "") + bound))
    return rows


def renamed_key(key: str, where: str) -> str:
    """`key` under its current name (itself unless `RENAMED` lists it, or the group it is
    in), warning once per use that the old name is read."""
    for old, new in RENAMED.items():
        if key == old or key.startswith(old + "."):
            _warn_renamed(old, new, where)
            return new + key[len(old) :]
    return key


def renamed_values(values: dict) -> dict:
    """A flat mapping of dotted keys (a run's recorded training keys) under the current
    names, so that a run trained before a rename compares equal to its own config."""
    return {renamed_key(k, "a run's record"): v for k, v in values.items()}


def _renamed_tree(tree: dict, where: str) -> dict:
    """A config file's nested mapping with each old key moved to its new place; a file
    that sets both names of one key is refused (which one it means is unknown)."""
    for old, new in RENAMED.items():
        group, last = _group_of(tree, old)
        if group is None or last not in group:
            continue
        other, other_last = _group_of(tree, new)
        if other is not None and other_last in other:
            raise ConfigError(
                f"{where} sets both {old!r} and {new!r}, the old and new names of one key; "
                f"keep {new!r} only"
            )
        _warn_renamed(old, new, where)
        _set_dotted(tree, new, group.pop(last))
    return tree


def _group_of(tree: dict, key: str) -> tuple[dict | None, str]:
    """The mapping that holds dotted `key`'s last part, and that part; None when a
    group on the way is absent or a value."""
    *groups, last = key.split(".")
    for part in groups:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return None, last
    return tree, last


def _warn_renamed(old: str, new: str, where: str) -> None:
    """One line on ownlm's log (the "ownlm" logger that `ownlm.log` sets up; config may
    not import it): the old name still loads, the new one is what to write."""
    logging.getLogger(__name__).warning(
        f"{where}: config key {old!r} is now {new!r}; it still loads, but write {new!r}"
    )


def _cut(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters: a message quoting an override stays short."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _set_dotted(tree: dict, key: str, value) -> None:
    """Set dotted `key` in nested `tree`, refusing a key under one that holds a value."""
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):  # `--set user=5 --set user.r=8`, or `r.x=1`
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {_cut(key)}: {shown(where)} is a value, not a group of keys")
    tree[parts[-1]] = value


def _read_yaml_file(p: Path) -> dict:
    """A config file's mapping: UTF-8 (a BOM is fine), YAML, a mapping at the top."""
    values = load_yaml_file(p, "config file", "see configs/ for examples") or {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {p} must hold a mapping of keys to values (key: value lines), "
            f"not a {type(values).__name__}; see configs/ for examples"
        )
    return values
