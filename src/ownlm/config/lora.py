"""One stage's LoRA and optimisation (`population`), and the user stage's (`user`)."""

from __future__ import annotations

from dataclasses import dataclass

from ownlm.config.fields import setting
from ownlm.errors import ConfigError, shown

USER_METHODS = ("lora", "ia3", "prompt")


@dataclass
class LoraSettings:
    """One stage's LoRA and optimisation. Defaults are OPPU's (Tan et al. 2024, Sec. 4).
    Epochs may be fractional (`train.loop.batch_plan`), so they are only > 0."""

    r: int = setting(8, "LoRA rank", ge=1)
    alpha: int = setting(8, "LoRA alpha (scaling = alpha / r)", gt=0)
    dropout: float = setting(0.05, "LoRA dropout", ge=0, lt=1)
    targets: list[str] | None = setting(
        None,
        "modules to adapt; empty = PEFT's default for the model type (q_proj,v_proj for "
        "Llama, Qwen2, Mistral, Gemma; c_attn for GPT-2; query,value for MiniLM)",
    )
    lr: float = setting(1e-4, "learning rate (AdamW)", gt=0)
    epochs: float = setting(2.0, "passes over the training pairs", gt=0)
    batch_size: int = setting(16, "pairs per optimiser step", ge=1)


@dataclass
class UserSettings(LoraSettings):
    """The user stage: OPPU's per-user adapter (Tan et al. 2024, Sec. 4 defaults: a LoRA),
    its PEFT method, and how many users train together in one batch."""

    method: str = setting(
        "lora",
        "the user adapter's PEFT method (docs/peft_methods.md): lora (r, alpha, dropout, "
        "targets), ia3 (rescaling vectors on keys, values and the feed-forward: "
        "k_proj,v_proj,down_proj for Llama; key,value,output.dense for MiniLM), prompt "
        "(virtual_tokens learned input embeddings; causal backbones only). Only LoRA users "
        "are served by `ownlm serve` and vLLM",
        choices=USER_METHODS,
    )
    virtual_tokens: int = setting(8, "method=prompt: learned virtual tokens per user", ge=1)
    users_per_batch: int = setting(
        16,
        "users trained together in one batch, each row applying its own user's LoRA "
        "(mLoRA's idea; exactly what each would learn alone, bar dropout's random masks); "
        "1 = one user after another. The MiniLM backbone, and methods other than lora, "
        "always train one by one",
        ge=1,
    )
    chunk_rows: int = setting(
        16,
        "batched users: rows run through the model at once, their gradients accumulated "
        "(the same result at any size); peak memory grows with chunk_rows x context length "
        "(docs/own_model.md's table): lower it when a batch runs out of GPU memory",
        ge=1,
    )

    def __post_init__(self):
        """The method in one spelling: "IA3" is ia3."""
        self.method = str(self.method).strip().lower()

    def check(self, prefix: str = "user.") -> None:
        """`targets` name LoRA's modules: another method adapts its own, or none."""
        if self.method != "lora" and self.targets:
            raise ConfigError(
                f"config key {prefix}targets={self.targets} names LoRA's modules, but "
                f"{prefix}method={shown(self.method)} (IA3 adapts keys, values and the "
                f"feed-forward; prompt tuning no module): leave {prefix}targets empty, or "
                f"use --set {prefix}method=lora"
            )
