"""Typed experiment configuration: every settings dataclass of ownlm, and its loader.

One YAML per experiment in `configs/` mirrors these dataclasses; every field carries its
help text and its valid values beside it (`ownlm.config.fields.setting`), which
`ownlm <command> --help` lists. Command-line overrides use dotted keys:
`--set user.lr=1e-3 --set retrieval_k=2`. The package imports no torch (nor pydantic
until a config is loaded), so that the CLI answers `--help` at once.

    fields      how a setting declares its help and bounds
    backbone    TinyConfig
    lora        LoraSettings, UserSettings
    proper      ProperSettings
    stages      ValidationSettings, TuneSettings, UpdateSettings
    serve       ServeSettings
    experiment  ExperimentConfig, the key groups, training_values
    presets     budgets by backbone size for the keys a config leaves unset
    validate    values -> typed settings (pydantic), one-line errors
    load        load_config, save_config, describe_fields, RENAMED
"""

from ownlm.config.backbone import TinyConfig
from ownlm.config.experiment import (
    EVAL_KEYS,
    RUNTIME_KEYS,
    TUNE_KEYS,
    UPDATE_KEYS,
    ExperimentConfig,
    training_values,
)
from ownlm.config.fields import setting
from ownlm.config.load import (
    RENAMED,
    describe_fields,
    load_config,
    renamed_key,
    renamed_values,
    save_config,
)
from ownlm.config.lora import LoraSettings, UserSettings
from ownlm.config.proper import ProperSettings
from ownlm.config.serve import ServeSettings
from ownlm.config.stages import TuneSettings, UpdateSettings, ValidationSettings

__all__ = [
    "EVAL_KEYS",
    "RENAMED",
    "RUNTIME_KEYS",
    "TUNE_KEYS",
    "UPDATE_KEYS",
    "ExperimentConfig",
    "LoraSettings",
    "ProperSettings",
    "ServeSettings",
    "TinyConfig",
    "TuneSettings",
    "UpdateSettings",
    "UserSettings",
    "ValidationSettings",
    "describe_fields",
    "load_config",
    "renamed_key",
    "renamed_values",
    "save_config",
    "setting",
    "training_values",
]
