"""PEFT's LoRA directory format, in one place: the file names, the config and the weight
keys that `PeftModel.save_pretrained` writes and `PeftModel.from_pretrained` reads.

    adapter_config.json          LoraConfig (r, lora_alpha, target_modules, ...)
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight  (r, in)
                                 base_model.model.<module>.lora_B.weight  (out, r)

`<module>` is the wrapped Linear's name in the bare model. Everything ownlm writes by
hand (group experts, PROPER user residuals, flattened exports) goes through
`write_peft_lora`, and everything it reads by hand through `read_lora`, so the stored
directories stay loadable by vanilla PEFT, LoRAX and vLLM.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ownlm.errors import ConfigError, StoreError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)


def peft_key(module: str, ab: str) -> str:
    """The safetensors key PEFT uses for `module`'s lora_A ("A") or lora_B ("B") weight."""
    return f"base_model.model.{module}.lora_{ab}.weight"


def write_peft_lora(
    out_dir: Path,
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
    alpha: float,
    base_name: str | None = None,
    **config,
) -> Path:
    """A PEFT LoRA directory from {module name in the bare model: (A (r, in), B (out, r))}.
    PEFT writes the config (`config`: more LoraConfig fields, e.g. task_type="CAUSAL_LM",
    which `AutoPeftModelForCausalLM` needs); the weights are saved on the CPU,
    contiguous, as PEFT does."""
    from peft import LoraConfig  # heavy: only when an adapter is written

    ranks = {a.shape[0] for a, _ in weights.values()}
    if len(ranks) != 1:
        raise ConfigError(f"all modules of one PEFT LoRA need the same rank, got {sorted(ranks)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    LoraConfig(
        r=ranks.pop(),
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=sorted(weights),
        bias="none",
        base_model_name_or_path=base_name,
        **config,
    ).save_pretrained(str(out_dir))
    tensors = {}
    for name, (a, b) in weights.items():
        tensors[peft_key(name, "A")] = a.detach().cpu().contiguous()
        tensors[peft_key(name, "B")] = b.detach().cpu().contiguous()
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    return out_dir


def read_config(path: str | Path) -> dict:
    """A PEFT directory's adapter_config.json, or a StoreError naming what is missing."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists() or not (path / WEIGHTS_FILE).exists():
        raise StoreError(
            f"{path} is not a PEFT LoRA directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "save it with peft's save_pretrained"
        )
    return json.loads((path / CONFIG_FILE).read_text())


def read_lora(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (A (r, in), B (out, r))} as stored, unscaled. Refuses anything but LoRA."""
    cfg = read_config(path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise StoreError(
            f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA; only LoRA adapters can be read here"
        )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(Path(path) / WEIGHTS_FILE)).items():
        m = _KEY.match(key)
        if m is None:
            raise StoreError(
                f"{path}: weight {key!r} is not a LoRA A/B matrix; only plain LoRA is supported"
            )
        pairs.setdefault(m["module"], {})[m["ab"]] = t
    return {module: (ab["A"], ab["B"]) for module, ab in pairs.items()}


@dataclass
class LoadedAdapter:
    """One PEFT adapter read from disk, ready to copy into a slot: module -> (A, scaled B)."""

    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern: a key matches a module name by its suffix."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def read_peft_adapter(path: str | Path) -> LoadedAdapter:
    """Read a PEFT LoRA directory into per-module (A (r, in), B * scaling (out, r)),
    with PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA, per-module alphas."""
    cfg = read_config(path)
    weights, rank = {}, 0
    for module, (a, b) in read_lora(path).items():
        r = a.shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        weights[module] = (a, b * scale)
        rank = max(rank, r)
    return LoadedAdapter(weights, rank)


def max_rank(paths, floor: int = 8) -> int:
    """The largest LoRA rank among PEFT directories (rank patterns included)."""
    rank = floor
    for path in paths:
        cfg = read_config(path)
        rank = max(rank, cfg.get("r", 0), *(cfg.get("rank_pattern") or {0: 0}).values())
    return rank


def target_names(paths) -> set[str]:
    """The last name part of every module the PEFT directories adapt (e.g. {"q_proj"})."""
    from safetensors import safe_open

    names: set[str] = set()
    for path in paths:
        read_config(path)
        with safe_open(str(Path(path) / WEIGHTS_FILE), framework="pt") as f:  # keys only
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                m = _KEY.match(key)
                if m is not None:
                    names.add(m["module"].split(".")[-1])
    return names
