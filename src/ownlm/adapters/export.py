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
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from ownlm.adapters.mixture import MixtureLoRALinear, MixtureState, UserRouter, mixture_layers
from ownlm.errors import ConfigError

INPUT_ROUTER_MSG = (
    "this user's PROPER adapter uses the input-dependent router: its gates change with "
    "every token, so no single static LoRA equals it. Train the user with the user-only "
    "router (`train_proper_users(run, router='user')`) to export a flat PEFT LoRA, or "
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


def write_peft_lora(
    out_dir: Path,
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
    alpha: float,
    base_name: str | None = None,
) -> Path:
    """A PEFT LoRA directory from {module name in the bare model: (A (r, in), B (out, r))}.
    PEFT writes the config; the keys follow PEFT's own `base_model.model.<module>.lora_A.weight`."""
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
    ).save_pretrained(str(out_dir))
    tensors = {}
    for name, (a, b) in weights.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().cpu().contiguous()
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out_dir


def export_mixture(model, out_dir: Path, user_index: int = 0, base_name: str | None = None) -> Path:
    """Flatten every mixture layer of `model` (user-only router) into one PEFT LoRA."""
    layers = mixture_layers(model)
    if not layers:
        raise ConfigError("the model has no mixture layers; install the PROPER user first")
    flat = {name: flatten_layer(layer, user_index) for name, layer in layers.items()}
    rank = next(iter(flat.values()))[0].shape[0]
    return write_peft_lora(out_dir, flat, alpha=rank, base_name=base_name)


def export_user(run, user_id: str, out_dir: Path) -> Path:
    """Write user `user_id`'s effective PROPER model (user-only router) as a PEFT LoRA
    over the run's merged base (`run.base_dir`)."""
    from ownlm.train.proper import load_user_model

    user = next((u for u in run.dataset.users if u.user_id == user_id), None)
    if user is None:
        raise ConfigError(f"no user {user_id!r} in {run.cfg.data}; check the id")
    if not run.store("proper-user").exists(user.name):
        if run.store("proper-input").exists(user.name):
            raise ConfigError(f"user {user_id!r}: " + INPUT_ROUTER_MSG)
        raise ConfigError(
            f"user {user_id!r} has no PROPER adapter; run `train_proper_users(run, router='user')`"
        )
    backbone = run.base()
    model = load_user_model(run, backbone, user, "user")
    return export_mixture(model, out_dir, 0, str(run.base_dir.resolve()))


# vLLM's LoRAConfig.max_lora_rank accepts these values only (default 16).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_hint(base_dir: Path, adapter_dir: Path, name: str, kind: str = "causal") -> str:
    """How to serve an exported LoRA with vLLM; its rank sets `--max-lora-rank`."""
    if kind != "causal":
        return (
            "vLLM serves generative (causal) models only: load this encoder adapter with "
            "PeftModel.from_pretrained or `ownlm serve`"
        )
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    rank = int(cfg["r"])
    fits = [r for r in VLLM_MAX_LORA_RANKS if r >= rank]
    if not fits:
        return f"rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})"
    return (
        f"vllm serve {base_dir} --enable-lora --max-lora-rank {fits[0]} "
        f"--lora-modules {name}={adapter_dir}"
    )
