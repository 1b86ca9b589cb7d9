"""Budgets suited to the backbone's size: the values a key takes when nobody set it.

OPPU's published budget (user LoRA lr 1e-4 for 2 epochs, Tan et al. 2024, Sec. 4) was
chosen for a 7B LLM. A 4-layer model trained here from scratch, or a 22M-parameter
encoder, barely moves at that learning rate (issue #24 measured OPPU equal to PAG to the
last digit on a new generation task). So every experiment has a `preset`:

- `paper`: the dataclass defaults, OPPU's values, for pretrained causal LLMs of 100M
  parameters and more (the size the paper's budget is meant for);
- `small`: the embedded tiny Llama and any causal LM under 100M parameters (estimated
  from its config.json): the budgets `ownlm tune` chose on the built-in demos
  (docs/validation.md), population LoRA on every linear layer, and the tiny
  pre-training's copy phase (`tiny.copy_steps`: 450 steps that teach copying the
  prompt, copy_exact 0.35-0.46 on held-out spans of demo-headlines);
- `encoder`: MiniLM (label tasks), the budgets tuned on demo-tags, StudEmo and LaMP-2;
- `auto` (the default): `small`, `encoder` or `paper` by the backbone as above.

A preset fills only the keys the config file and `--set` leave unset; whatever a person
sets wins. Epochs are maxima: stages 1 and 2 validate on dev users every epoch and keep
the best, and the user stage's budget is tuned on the dev users by default
(`tune.auto`). The run's config.yaml records every resolved value, so a run reopens
with the values it was trained with whatever the presets later become.
"""

from __future__ import annotations

import json
from pathlib import Path

from ownlm.errors import ConfigError, shown

PRESETS: dict[str, dict[str, object]] = {
    "small": {
        "tiny.copy_steps": 450,
        "population.lr": 2e-3,
        "population.epochs": 6.0,
        "population.targets": ["all-linear"],
        "user.lr": 3e-3,
        "user.epochs": 8.0,
        "proper.lr": 2e-3,
        "proper.epochs": 4.0,
        "proper.user_lr": 3e-3,
        "proper.user_epochs": 8.0,
    },
    "encoder": {
        "population.lr": 1e-3,
        "population.epochs": 8.0,
        "user.lr": 1e-3,
        "user.epochs": 4.0,
        "proper.lr": 1e-3,
        "proper.epochs": 4.0,
        "proper.user_lr": 1e-3,
        "proper.user_epochs": 4.0,
    },
    "paper": {},
}
PRESET_CHOICES = ("auto", *PRESETS)
SMALL_PARAMS = 100e6  # a causal LM estimated under this many parameters takes `small`


def preset_for(backbone: str) -> str:
    """The preset `auto` stands for with `backbone`: tiny -> small, minilm -> encoder, an
    HF causal LM by its estimated size (paper when its config cannot be read here, e.g.
    a hub id: a hub model is a pretrained LLM)."""
    if backbone == "tiny":
        return "small"
    if backbone == "minilm":
        return "encoder"
    params = estimated_params(Path(backbone) / "config.json")
    return "small" if params is not None and params < SMALL_PARAMS else "paper"


def estimated_params(path: Path) -> float | None:
    """A decoder's parameter count from its config.json without loading it: 12 d^2 per
    block (attention 4 d^2, a 4d-wide MLP 8 d^2) plus the embeddings; None when the file
    is missing or lacks the sizes."""
    try:
        c = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    c = {**c, **(c.get("text_config") or {})}  # multimodal configs nest the LM's sizes
    d = c.get("hidden_size") or c.get("n_embd") or c.get("d_model")
    layers = c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers")
    if not (isinstance(d, int) and isinstance(layers, int)):
        return None
    return 12.0 * layers * d * d + float(c.get("vocab_size") or 0) * d


def apply_preset(values: dict) -> dict:
    """`values` (a config's nested mapping) with every key of its preset that it does not
    set filled in; the preset `auto` resolved by the backbone."""
    name = str(values.get("preset") or "auto").strip().lower()
    if name not in PRESET_CHOICES:
        raise ConfigError(
            f"config key 'preset' is {shown(name)}; it must be one of "
            f"{', '.join(PRESET_CHOICES)}, e.g. --set preset=auto"
        )
    if name == "auto":
        name = preset_for(str(values.get("backbone", "tiny")))
    for key, value in PRESETS[name].items():
        *groups, last = key.split(".")
        tree = values
        for part in groups:
            tree = tree.setdefault(part, {})
            if not isinstance(tree, dict):  # `--set user=5`: the validator names it
                break
        else:
            tree.setdefault(last, list(value) if isinstance(value, list) else value)
    return values
