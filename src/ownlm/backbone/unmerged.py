"""LoRAs kept beside a low-precision base instead of merged into it.

Stage 1 (and OPPU's control pass) used to be merged into the base. In float32 that is
exact to ~1e-7, but a bfloat16 weight rounds away most of a small update (a merge at
|dW|/|W| = 5e-4 keeps ~25% of its effect on the logits) and a 4-bit NF4 weight nearly
all of it (~1%): the base that users trained on, that was evaluated and served, was not
the one validation scored. So a base written from a bfloat16, float16 or 4-bit model
keeps its weights exactly as they were trained on, and its LoRAs apart:

    <base>/unmerged/<name>/    one PEFT LoRA directory per stage ("population", "control")
    ownlm_base.json            "unmerged": [<name>, ...], in the order they were trained

`load_base` puts each back on its layers as a forward hook computing PEFT's unmerged
LoRA (in float32, added to the layer's output): the model validation scored. Every
wrapper ownlm or PEFT puts on a layer (a user's PEFT LoRA, the serving slots, PROPER's
mixture, the multi-user trainer) calls the layer, so it sits on top of the hook, and
`save_pretrained` never writes a hook: the saved weights stay the bare base's.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

UNMERGED_DIR = "unmerged"
_KEY_SUFFIX = {".lora_A.weight": 0, ".lora_B.weight": 1}
_PREFIX = "base_model.model."


def keeps_unmerged(model: nn.Module) -> bool:
    """Whether a LoRA trained on `model` must stay unmerged: its base is quantized
    (bitsandbytes) or holds weights in less than float32, where a merge rounds it away."""
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return True
    return any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters())


def read_lora_deltas(adapter_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name in the bare model: (A (r, in), B * scaling (out, r))} of a PEFT LoRA
    directory, in float32 (PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    pairs: dict[str, list] = {}
    for key, value in tensors.items():
        for suffix, i in _KEY_SUFFIX.items():
            if key.endswith(suffix):
                module = key[: -len(suffix)].removeprefix(_PREFIX)
                pairs.setdefault(module, [None, None])[i] = value.float()
    out = {}
    for module, (a, b) in pairs.items():
        r = a.shape[0]
        alpha = cfg.get("lora_alpha", r)
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (a, b * scale)
    return out


class LoraHook:
    """y + B(A x) * scaling on a layer's output, as PEFT's unmerged LoRA computes it: the
    input cast to the LoRA's float32, the sum cast back to the layer's output dtype."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b = a, b  # (r, in), (out, r) scaled

    def __call__(self, module, args, out):
        x = args[0]
        delta = (x.to(self.a.dtype) @ self.a.T) @ self.b.T  # (..., in) -> (..., out)
        return (out + delta).to(out.dtype)


def attach(model: nn.Module, adapter_dir: Path) -> None:
    """Hook the LoRA of `adapter_dir` onto the layers of `model` it adapts (unmerged)."""
    for name, (a, b) in read_lora_deltas(adapter_dir).items():
        layer = model.get_submodule(name)
        dev = layer.weight.device
        layer.register_forward_hook(LoraHook(a.to(dev), b.to(dev)))
    kept = getattr(model, "_ownlm_unmerged", [])
    model._ownlm_unmerged = [*kept, Path(adapter_dir)]


def attach_recorded(model: nn.Module, base_dir: Path, meta: dict) -> None:
    """Hook every LoRA a saved base's meta lists as unmerged, in its order."""
    for name in meta.get("unmerged") or ():
        attach(model, Path(base_dir) / UNMERGED_DIR / name)


def unmerged_dirs(model: nn.Module) -> list[Path]:
    """The PEFT directories hooked onto `model` (`attach`), in their order."""
    return list(getattr(model, "_ownlm_unmerged", []))


def save_unmerged(model: nn.Module, peft_model, out: Path, name: str) -> list[str]:
    """Into the base being written at `out`: the LoRAs already hooked onto `model` and
    the new one (`peft_model`'s, as `name`); their names in order, for the meta."""
    names = []
    for src in unmerged_dirs(model):
        shutil.copytree(src, out / UNMERGED_DIR / src.name)
        names.append(src.name)
    peft_model.save_pretrained(str(out / UNMERGED_DIR / name))
    return [*names, name]


def combined_fingerprint(weights_fp: str, out: Path, names: list[str]) -> str:
    """A base's identity with LoRAs kept unmerged: its weights' fingerprint and the bytes
    of each kept LoRA (a new stage 1 on the same weights is a new base)."""
    h = hashlib.sha256(weights_fp.encode())
    for name in names:
        h.update((out / UNMERGED_DIR / name / "adapter_model.safetensors").read_bytes())
    return h.hexdigest()[:20]
