"""The embedded tiny Llama's size and pre-training schedule (`backbone: tiny`)."""

from __future__ import annotations

from dataclasses import dataclass

from ownlm.config.fields import setting
from ownlm.errors import ConfigError


@dataclass
class TinyConfig:
    """Size and pre-training schedule of the embedded tiny Llama."""

    vocab_size: int = setting(4096, "BPE vocabulary size", ge=1)
    hidden_size: int = setting(256, "model width d", ge=1)
    layers: int = setting(4, "transformer blocks", ge=1)
    heads: int = setting(4, "attention heads", ge=1)
    intermediate_size: int = setting(688, "FFN width", ge=1)
    max_len: int = setting(384, "context length in tokens", ge=2)
    epochs: float = setting(3.0, "pre-training epochs over the corpus", gt=0)
    lr: float = setting(2e-3, "peak learning rate (cosine decay)", gt=0)
    batch_size: int = setting(16, "sequences per step", ge=1)
    min_steps: int = setting(150, "at least this many steps, for small corpora", ge=0)
    seed: int = setting(0, "initialisation and shuffling seed", ge=0)
    copy_share: float = setting(
        0.0,
        "share of pre-training sequences that teach copying the prompt (a span then its "
        "repeat; an item then an answer of its words), at most 0.9; 0 = the corpus alone",
        ge=0,
        lt=1,
    )
    copy_steps: int = setting(
        0,
        "steps of a copy phase after the corpus pre-training, on short sequences of corpus "
        "copies and corpus text (half each) at half the lr; 0 = none",
        ge=0,
    )
    copy_random: float = setting(
        0.0,
        "share of the copy phase's sequences that are repeats of random corpus tokens "
        "(the rest: corpus copies and corpus text, half each), below 1; 0 = none",
        ge=0,
        lt=1,
    )

    def check(self, prefix: str = "tiny.") -> None:
        """Each attention head needs an even width (rotary embeddings pair dimensions);
        copy sequences may be at most 0.9 of the corpus (some text must stay)."""
        if self.copy_share > 0.9:
            raise ConfigError(
                f"config key {prefix}copy_share={self.copy_share} is over 0.9: the corpus's "
                f"own text must stay in pre-training; use e.g. --set {prefix}copy_share=0.3"
            )
        if self.hidden_size % (2 * self.heads):
            raise ConfigError(
                f"config keys {prefix}hidden_size={self.hidden_size} and {prefix}heads="
                f"{self.heads} do not fit: each head needs an even width, so hidden_size must "
                f"be a multiple of 2 * heads, e.g. --set {prefix}hidden_size={2 * self.heads * 32}"
            )
