"""Export a PROPER user with the user-only router as one standard PEFT LoRA.

With gates that depend on the user only (pi_g constant over tokens), a layer's delta is

    sum_g pi_g s B_g A_g + s_u B_u A_u  =  s_new * B_cat A_cat,

    A_cat = [A_1; ...; A_G; A_u]                                   (G*r + r_u, in)
    B_cat = [pi_1 s/s_new B_1, ..., pi_G s/s_new B_G, s_u/s_new B_u] (out, G*r + r_u)

i.e. exactly one LoRA of rank G*r + r_u (stack the A's along the rank, scale and stack
the B's). We write lora_alpha = rank so that PEFT's scaling s_new = alpha / r is exactly 1
and all scales live in B ("merge scaling into lora_B", as LoRAX does). The directory is a
plain PEFT adapter: `PeftModel.from_pretrained(base, dir)` or vLLM `--lora-modules`.
With the input-dependent router, pi varies per token, so no static LoRA equals it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers.pytorch_utils import Conv1D

from ownlm.adapters.mixture import MixtureLoRALinear, MixtureState, UserRouter, mixture_layers
from ownlm.adapters.peft_io import (
    _KEY,
    CONFIG_FILE,
    WEIGHTS_FILE,
    _pattern_value,
    peft_key,
    read_config,
    write_peft_lora,
)
from ownlm.errors import ConfigError

INPUT_ROUTER_MSG = (
    "this user's PROPER adapter uses the input-dependent router: its gates change with "
    "every token, so no single static LoRA equals it. Train the user with the user-only "
    "router (`ownlm train --variants proper-user`) to export a flat PEFT LoRA, or "
    "serve the mixture with ownlm's own server."
)


def flatten_layer(layer: MixtureLoRALinear, user_index: int = 0):
    """(A_cat (R, in), B_cat (out, R)) with scaling 1 for one user of a user-only layer."""
    if not isinstance(layer.router, UserRouter):
        raise ConfigError(INPUT_ROUTER_MSG)
    with torch.no_grad():
        state = MixtureState(user_ids=torch.tensor([user_index]))
        pi = layer.router(layer.A.new_zeros(1, 1, layer.A.shape[-1]), state)[0]  # (G,)
        a = [layer.A[g] for g in range(layer.groups)]  # each (r, in)
        b = [layer.B[g] * (pi[g] * layer.scaling) for g in range(layer.groups)]  # (out, r)
        if layer.user_A is not None:
            a.append(layer.user_A)
            b.append(layer.user_B * layer.user_scaling)
        return torch.cat(a, 0).contiguous(), torch.cat(b, 1).contiguous()


def export_mixture(
    model,
    out_dir: Path,
    user_index: int = 0,
    base_name: str | None = None,
    task_type: str | None = None,
) -> Path:
    """Flatten every mixture layer of `model` (user-only router) into one PEFT LoRA.
    `task_type="CAUSAL_LM"` for a causal base: `AutoPeftModelForCausalLM` loads it then."""
    layers = mixture_layers(model)
    if not layers:
        raise ConfigError("the model has no mixture layers; install the PROPER user first")
    flat = {name: flatten_layer(layer, user_index) for name, layer in layers.items()}
    rank = next(iter(flat.values()))[0].shape[0]
    # GPT-2's Conv1D layers: PEFT's fan_in_fan_out, as PEFT itself sets it for them
    conv = any(isinstance(layer.base, Conv1D) for layer in layers.values())
    return write_peft_lora(out_dir, flat, rank, base_name, task_type=task_type, fan_in_fan_out=conv)


# vLLM's LoRAConfig.max_lora_rank accepts these values only (default 16).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's list of supported models (docs/models/supported_models.md, its LoRA column), for
# the families ownlm is used with: architectures vLLM serves with LoRA, and without.
VLLM_LORA = {
    *("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM"),
    *("Qwen2MoeForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "GemmaForCausalLM"),
    *("Gemma2ForCausalLM", "Gemma3ForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM"),
    *("OPTForCausalLM", "GraniteForCausalLM", "Olmo2ForCausalLM", "GPTBigCodeForCausalLM"),
}
VLLM_NO_LORA = {
    *("GPT2LMHeadModel", "GPTJForCausalLM", "GPTNeoXForCausalLM", "BloomForCausalLM"),
    *("FalconForCausalLM", "MPTForCausalLM", "StableLmForCausalLM"),
}
VLLM_MODELS = "https://docs.vllm.ai/en/latest/models/supported_models.html"


def architecture(base_dir: Path) -> str | None:
    """The base's architecture as its config.json names it (e.g. "GPT2LMHeadModel")."""
    cfg_file = Path(base_dir) / "config.json"
    if not cfg_file.exists():
        return None
    return (json.loads(cfg_file.read_text()).get("architectures") or [None])[0]


def quantization_flag(base_dir: Path) -> str:
    """vLLM's flag for a base saved 4-bit by bitsandbytes (`quantize: 4bit`), else ""."""
    cfg_file = Path(base_dir) / "config.json"
    if not cfg_file.exists():
        return ""
    quant = json.loads(cfg_file.read_text()).get("quantization_config") or {}
    return " --quantization bitsandbytes" if quant.get("quant_method") == "bitsandbytes" else ""


def vllm_problem(base_dir: Path, adapter_dir: Path, kind: str = "causal") -> str | None:
    """Why vLLM cannot serve this exported adapter on its base; None when it can."""
    if kind != "causal":
        return (
            "vLLM serves generative (causal) models only; this adapter is for ownlm's "
            "MiniLM label classifier: use it with `ownlm eval` / `ownlm serve` on its run"
        )
    cfg = json.loads((Path(adapter_dir) / CONFIG_FILE).read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        return (
            f"vLLM serves LoRA adapters only, not this {cfg['peft_type']} adapter; load it "
            "with vanilla PEFT"
        )
    arch = architecture(base_dir)
    if arch in VLLM_NO_LORA:
        return (
            f"vLLM runs {arch} but cannot apply a LoRA to it (its supported-models list, "
            f"{VLLM_MODELS}); serve it with `ownlm serve` or load it with vanilla PEFT"
        )
    if max_lora_rank(int(cfg["r"])) is None:
        return f"rank {cfg['r']} exceeds vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})"
    return None


def max_lora_rank(rank: int) -> int | None:
    """The smallest --max-lora-rank vLLM accepts that holds `rank` (None: none does)."""
    return next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), None)


def vllm_hint(
    base_dir: Path, adapter_dir: Path, name: str, kind: str = "causal", max_loras: int = 16
) -> str:
    """How to serve an exported LoRA with vLLM, or why it cannot be. Its rank sets
    `--max-lora-rank`; `--max-loras` is how many users' adapters one batch may mix
    (vLLM's default is 1; 16 is `ownlm serve`'s max_batch_size). An architecture not in
    vLLM's LoRA list as ownlm knows it gets the line with a pointer to that list."""
    problem = vllm_problem(base_dir, adapter_dir, kind)
    if problem:
        return problem
    rank = int(json.loads((Path(adapter_dir) / CONFIG_FILE).read_text())["r"])
    line = (
        f"vllm serve {base_dir}{quantization_flag(base_dir)} --enable-lora --max-loras "
        f"{max_loras} --max-lora-rank {max_lora_rank(rank)} --lora-modules {name}={adapter_dir}"
    )
    arch = architecture(base_dir)
    if arch is not None and arch not in VLLM_LORA:
        line += f"  (if vLLM lists {arch} with LoRA support: {VLLM_MODELS})"
    return line


def peft_hint(base_dir: Path, adapter_dir: Path, kind: str = "causal") -> str:
    """The Python line that pairs an exported adapter with its base (vanilla PEFT)."""
    if kind != "causal":
        return (
            "from ownlm.backbone.encoder import EncoderClassifier; from peft import PeftModel; "
            f"base, tok = EncoderClassifier.from_dir({str(base_dir)!r}); "
            f"model = PeftModel.from_pretrained(base, {str(adapter_dir)!r})"
        )
    return (
        "from peft import PeftModel; from transformers import AutoModelForCausalLM; "
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
        f"{str(base_dir)!r}), {str(adapter_dir)!r})"
    )


def point_to_base(adapter_dir: Path, base_dir: Path) -> None:
    """Make an exported adapter name its base by absolute path, in adapter_config.json
    (what `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)` loads) and in PEFT's
    model card: a run-relative path (`runs/<name>/base`) resolves nowhere else."""
    cfg_file = Path(adapter_dir) / CONFIG_FILE
    cfg = json.loads(cfg_file.read_text())
    old, new = cfg.get("base_model_name_or_path"), str(Path(base_dir).resolve())
    cfg["base_model_name_or_path"] = new
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    card = Path(adapter_dir) / "README.md"
    if old and card.exists():
        card.write_text(card.read_text().replace(f"base_model: {old}", f"base_model: {new}"))
        card.write_text(card.read_text().replace(f"adapter:{old}", f"adapter:{new}"))


def _scaled_lora(path: Path) -> tuple[dict, int]:
    """({module: (A (r, in), B * scaling (out, r))} in float32, the largest rank) of a
    PEFT LoRA directory; tensors that are no LoRA matrix (a saved head) are skipped."""
    cfg = read_config(path)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(Path(path) / WEIGHTS_FILE)).items():
        if m := _KEY.match(key):
            pairs.setdefault(m["module"], {})[m["ab"]] = t.float()
    out = {}
    for module, ab in pairs.items():
        r = ab["A"].shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", r))
        out[module] = (
            ab["A"],
            ab["B"] * (alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r),
        )
    return out, max((a.shape[0] for a, _ in out.values()), default=0)


def stack_under(adapter_dir: Path, lower: list[Path]) -> int:
    """Make the exported LoRA at `adapter_dir` carry the LoRAs its base keeps unmerged
    (`lower`: stage 1, and the control pass, of a bfloat16 or 4-bit base), in place:

        s_u B_u A_u + sum_k s_k B_k A_k  =  B_cat A_cat   (scaling 1, as `flatten_layer`)

    one PEFT LoRA of rank r_u + sum_k r_k, zero-padded where one of them skips a module,
    so that on the bare base it answers as the served model does. Other tensors it
    saves (a head in modules_to_save) and its other settings are kept; returns the rank."""
    parts = [_scaled_lora(d) for d in [adapter_dir, *lower]]
    total = sum(rank for _, rank in parts)
    stacked = {}
    for module in sorted(set().union(*(set(w) for w, _ in parts))):
        a_in, b_out = next(w[module] for w, _ in parts if module in w)
        d_in, d_out = a_in.shape[1], b_out.shape[0]
        a_cat, b_cat = torch.zeros(total, d_in), torch.zeros(d_out, total)
        at = 0
        for weights, rank in parts:
            if module in weights:
                a, b = weights[module]
                a_cat[at : at + a.shape[0]], b_cat[:, at : at + a.shape[0]] = a, b
            at += rank
        stacked[peft_key(module, "A")], stacked[peft_key(module, "B")] = a_cat, b_cat
    weights_file = Path(adapter_dir) / WEIGHTS_FILE
    kept = {k: v for k, v in load_file(str(weights_file)).items() if not _KEY.match(k)}
    save_file({**kept, **stacked}, str(weights_file), metadata={"format": "pt"})
    cfg_file = Path(adapter_dir) / CONFIG_FILE
    cfg = json.loads(cfg_file.read_text())
    modules = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in stacked})
    cfg |= {"r": total, "lora_alpha": total, "target_modules": modules, "use_rslora": False}
    cfg |= {"rank_pattern": {}, "alpha_pattern": {}}
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return total
