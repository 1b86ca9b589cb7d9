"""Logits only where a loss or a score reads them.

A causal LM's forward returns (B, T, V) logits; at a 152k vocabulary and 16 x 384
positions that is 3.7 GB in float32 before softmax and gradients, while a loss reads
only the answer's few positions and a label score one position per prompt. For a
model whose logits are exactly `head(last hidden state)`, the decoder runs alone and
the output head runs at the positions asked for (`hidden_at`, `token_losses`). Other
models (soft-capped or scaled logits, prompt-tuned PEFT models, which prepend virtual
tokens in their own forward) fall back to their full logits, with the same results.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Model families whose logits are exactly `get_output_embeddings()(last hidden state)`:
# no soft-capping, logit scaling or auxiliary loss (Gemma 2, Cohere, Granite, MoE routers
# have those). Others fall back to the model's own full logits.
PLAIN_HEAD = frozenset(
    "llama mistral qwen2 qwen3 gemma gpt2 gpt_neox gptj opt phi phi3 olmo olmo2 stablelm "
    "starcoder2".split()
)


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder returning hidden states, output head) of a plain HF causal LM, else None.
    A PEFT model is split through the model it wraps (its LoRA layers sit inside the
    decoder), except a prompt-learning one, whose forward adds its virtual tokens."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None
    if getattr(getattr(model, "config", None), "model_type", None) not in PLAIN_HEAD:
        return None
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    if not isinstance(head, nn.Linear) or body is None or body is model:
        return None
    return body, head


def full_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of the positions of `ids`. A prompt-tuned PEFT model prepends
    its virtual tokens and returns their positions' logits first (B, n + T, V): those
    are dropped, so position t is token t's for every PEFT method."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logits[:, -ids.shape[1] :]


def logits_at(model, ids: torch.Tensor, mask: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """(N, V) float32 logits at the N positions where `sel` (B, T) is true, in row-major
    order, as `full_logits(...)[sel]`; the head runs at those positions only."""
    split = body_and_head(model)
    if split is None:
        return full_logits(model, ids, mask)[sel].float()
    body, head = split
    hidden = body(input_ids=ids, attention_mask=mask, use_cache=False)[0]  # (B, T, d)
    return head(hidden[sel]).float()  # (N, V)


def token_losses(model, ids, mask, labels) -> torch.Tensor:
    """(B, T-1) next-token cross-entropy (float32, as HF's loss) at each position whose
    next label is supervised, 0 elsewhere. Position t predicts token t + 1."""
    tgt = labels[:, 1:]  # (B, T-1)
    sel = torch.zeros_like(labels, dtype=torch.bool)
    sel[:, :-1] = tgt != -100  # (B, T) positions whose logits the loss reads
    ce = F.cross_entropy(logits_at(model, ids, mask, sel), tgt[tgt != -100], reduction="none")
    out = torch.zeros(tgt.shape, device=ce.device, dtype=ce.dtype)
    return out.masked_scatter(tgt != -100, ce)
