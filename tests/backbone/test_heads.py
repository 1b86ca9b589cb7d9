"""Logits only where read (backbone/heads.py): losses and label scores equal those of
the full (B, T, V) logits, for plain families, a LoRA'd PEFT model and the fallbacks."""

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model
from torch.nn import functional as F

from ownlm.adapters.lora import lora_config
from ownlm.backbone import heads
from ownlm.config import LoraSettings
from ownlm.testing import family_backbone

PROMPTS = ["the user likes movies", "a rating good", "books music news sports science tags"]
TARGETS = ["good", "bad answer", "the tags"]
LABELS = ("good", "bad", "music")  # each its own first token (one pass)
LONG_LABELS = ("good movies", "good books", "bad")  # shared first token: scored in full


def full(model, ids, mask):
    """(B, T, V) logits; a prompt-tuned model's virtual positions dropped."""
    return model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]


def reference(backbone, model, prompts, targets):
    """(B, T-1) token cross-entropy from the model's full logits."""
    ids, mask, labels = backbone.encode_pairs(prompts, targets)
    logits = full(model, ids, mask)
    tgt = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt, reduction="none")
    return ce, tgt != -100


def reference_first(backbone, model, labels):
    """(N, L) log-probability of each label's first token from the full logits."""
    answers = [backbone.prompt_format.answer_ids(lab) for lab in labels]
    ids, mask, lab = backbone.encode_pairs(
        PROMPTS, [labels[0]] * len(PROMPTS), max(map(len, answers))
    )
    logp = full(model, ids, mask).float().log_softmax(-1)
    last = (lab != -100).float().argmax(-1) - 1
    return logp[torch.arange(len(PROMPTS)), last][:, [a[0] for a in answers]]


def reference_scores(backbone, model, labels):
    out = torch.empty(len(PROMPTS), len(labels))
    room = max(len(backbone.prompt_format.answer_ids(lab)) for lab in labels)
    for j, label in enumerate(labels):
        ids, mask, lab = backbone.encode_pairs(PROMPTS, [label] * len(PROMPTS), room)
        logp = full(model, ids, mask)[:, :-1].float().log_softmax(-1)
        tgt = lab[:, 1:]
        tok = logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        out[:, j] = (tok * (tgt != -100)).sum(-1)
    return out


def check_equal(backbone, model):
    ce, keep = reference(backbone, model, PROMPTS, TARGETS)
    tok = heads.token_losses(model, *backbone.encode_pairs(PROMPTS, TARGETS))
    torch.testing.assert_close(tok, ce * keep, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        loss = backbone.loss(model, PROMPTS, TARGETS)
        items = backbone.item_losses(model, PROMPTS, TARGETS)
    torch.testing.assert_close(loss, (ce * keep).sum() / keep.sum(), atol=1e-5, rtol=1e-5)
    per_item = (ce * keep).sum(-1) / keep.sum(-1)
    torch.testing.assert_close(items, per_item, atol=1e-5, rtol=1e-5)
    for labels in (LABELS, LONG_LABELS):
        scores = backbone.score_labels(model, PROMPTS, labels)
        one_pass = labels is LABELS  # each label its own first token: one pass scores all
        want = (reference_first if one_pass else reference_scores)(backbone, model, labels)
        torch.testing.assert_close(scores, want.detach(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gpt2"])
def test_split_head_equals_full_logits(family):
    backbone = family_backbone(family)
    assert heads.body_and_head(backbone.model) is not None
    check_equal(backbone, backbone.model)


def test_lora_peft_model_is_split_and_equal():
    backbone = family_backbone("qwen2")
    model = get_peft_model(backbone.model, lora_config(backbone, LoraSettings(dropout=0.0)))
    for name, p in model.named_parameters():  # a trained-looking LoRA: B off zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    assert heads.body_and_head(model) is not None
    check_equal(backbone, model)
    loss = backbone.loss(model, PROMPTS, TARGETS)
    loss.backward()  # gradients reach the LoRA through the split
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_prompt_tuned_model_falls_back_to_full_logits():
    backbone = family_backbone("llama")
    cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    model = get_peft_model(backbone.model, cfg)
    assert heads.body_and_head(model) is None  # its forward prepends virtual tokens
    check_equal(backbone, model)


def test_logits_at_selects_row_major_positions():
    backbone = family_backbone("mistral")
    ids, mask, _ = backbone.encode_pairs(PROMPTS, TARGETS)
    sel = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    full = backbone.model(input_ids=ids, attention_mask=mask).logits
    got = heads.logits_at(backbone.model, ids, mask, sel)
    torch.testing.assert_close(got, full[sel].float(), atol=1e-5, rtol=1e-5)
