"""The trainable multi-user LoRA layer equals PEFT: per-row outputs and gradients for
three users in one mixed batch, initial weights, and a base restored exactly."""

import pytest
import torch

from ownlm.adapters.lora import detach, inject
from ownlm.adapters.multi_lora import (
    MultiLoraLinear,
    copy_into_peft,
    install_multi_lora,
    peft_init,
    peft_lora_layers,
)
from ownlm.config import LoraSettings
from ownlm.errors import ConfigError
from ownlm.testing import family_backbone, toy_backbone

USERS = [0, 1, 2, 2, 0, 1]  # row -> user: every user twice, mixed


@pytest.fixture(scope="module")
def backbone():
    return toy_backbone(hidden=32, layers=2, heads=2, intermediate=64, vocab=300)


def _random_inits(backbone, s, seeds=(11, 12, 13)):
    """Three users' LoRAs drawn by PEFT, with random B (PEFT starts B at zero)."""
    inits = [peft_init(backbone, s, seed) for seed in seeds]
    g = torch.Generator().manual_seed(0)
    for init in inits:
        for _, b in init.weights.values():
            b.copy_(torch.randn(b.shape, generator=g) * 0.3)
    return inits


def _batch(backbone):
    prompts = ["the user likes movies", "a book", "news sports", "music", "good bad", "the a"]
    return backbone.encode_pairs(prompts, ["answer", "good", "bad", "tags", "rating", "a"])


def _peft_logits(backbone, s, weights, ids, mask):
    """(logits, {param name: grad of the logits' sum}) of one user's PEFT model."""
    model = inject(backbone, s, 0)
    try:
        copy_into_peft(model, weights)
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits.sum().backward()
        grads = {
            name: (m.lora_A["default"].weight.grad, m.lora_B["default"].weight.grad)
            for name, m in peft_lora_layers(model).items()
        }
        return logits.detach(), grads
    finally:
        detach(backbone, model)


@pytest.mark.parametrize(
    "family, targets",
    [(None, ["q_proj", "v_proj", "down_proj"]), ("gpt2", ["c_attn", "mlp.c_proj"])],
    ids=["llama", "gpt2-conv1d"],
)
def test_mixed_batch_equals_peft_per_row(backbone, family, targets):
    if family:  # GPT-2's layers are Conv1D, their weight (in, out)
        backbone = family_backbone(family, hidden=32, layers=2, heads=2, intermediate=64)
    s = LoraSettings(dropout=0.0, targets=targets)
    inits = _random_inits(backbone, s)
    ids, mask, _ = _batch(backbone)
    multi = install_multi_lora(backbone.model, inits[0].scaling, 0.0)
    try:
        for init in inits:
            multi.add(init.weights)
        with multi.use(USERS):
            logits = backbone.model(input_ids=ids, attention_mask=mask).logits
        assert multi.rows.idx is None  # the row map lives only inside `use`
        logits.sum().backward()  # each user's gradient comes from their own rows only
        grads = [
            {n: (lay.A[k].grad, lay.B[k].grad) for n, lay in multi.layers.items()} for k in range(3)
        ]
    finally:
        multi.uninstall()
    for k in range(3):
        rows = [i for i, u in enumerate(USERS) if u == k]
        want, want_grads = _peft_logits(backbone, s, inits[k].weights, ids[rows], mask[rows])
        assert torch.allclose(logits[rows].detach(), want, atol=1e-5)
        assert grads[k].keys() == want_grads.keys()
        for name, (ga, gb) in want_grads.items():
            assert torch.allclose(grads[k][name][0], ga, atol=1e-5)
            assert torch.allclose(grads[k][name][1], gb, atol=1e-5)


def test_users_without_rows_get_no_gradient(backbone):
    inits = _random_inits(backbone, LoraSettings(dropout=0.0))
    ids, mask, _ = _batch(backbone)
    multi = install_multi_lora(backbone.model, inits[0].scaling, 0.0)
    try:
        for init in inits:
            multi.add(init.weights)
        with multi.use([0, 2, 2, 0, 0, 2]):
            backbone.model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        assert all(p.grad is None for p in multi.params(1))  # None, not zeros
        assert all(p.grad is not None for k in (0, 2) for p in multi.params(k))
        with pytest.raises(ConfigError, match="slots are 0..2"):
            with multi.use([3]):
                pass
    finally:
        multi.uninstall()


def test_uninstall_restores_the_base_exactly(backbone):
    model = backbone.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = {n: type(m) for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    init = peft_init(backbone, LoraSettings(), 3)
    multi = install_multi_lora(model, init.scaling, init.dropout)
    multi.add(init.weights)
    assert any(isinstance(m, MultiLoraLinear) for m in model.modules())
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".base." in n)
    assert multi.uninstall() is model
    assert {n: type(m) for n, m in model.named_modules()} == modules
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_initial_weights_equal_injects(backbone):
    s = LoraSettings(r=4, alpha=16, targets=["q_proj", "k_proj", "v_proj"])
    init = peft_init(backbone, s, seed=1234)
    model = inject(backbone, s, 1234)
    try:
        layers = peft_lora_layers(model)
        assert set(layers) == set(init.weights)
        for name, m in layers.items():
            a, b = init.weights[name]
            assert torch.equal(a, m.lora_A["default"].weight)
            assert torch.equal(b, m.lora_B["default"].weight)
            assert init.scaling[name] == m.scaling["default"] == 4.0
    finally:
        detach(backbone, model)


def test_a_bfloat16_step_moves_the_lora(backbone):
    """Base and LoRA both in bfloat16 (PEFT itself would keep the LoRA in float32)."""
    model = backbone.model.to(torch.bfloat16)
    try:
        init = peft_init(backbone, LoraSettings(dropout=0.0), 5)
        weights = {n: (a.bfloat16(), b.bfloat16()) for n, (a, b) in init.weights.items()}
        multi = install_multi_lora(model, init.scaling, 0.0)
        try:
            multi.add(weights)
            multi.add(weights)
            ids, mask, labels = _batch(backbone)
            opt = torch.optim.AdamW(multi.params(0) + multi.params(1), lr=1e-2)
            with multi.use([0, 1, 1, 0, 0, 1]):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            assert torch.isfinite(loss) and loss.dtype == torch.float32
            for k in (0, 1):
                _, b = multi.weights(k)[next(iter(multi.layers))]
                assert b.dtype == torch.bfloat16 and b.abs().max() > 0  # B started at zero
        finally:
            multi.uninstall()
    finally:
        model.float()


def test_encoder_label_heads_are_refused():
    encoder = type("Enc", (), {"name": "minilm", "modules_to_save": ("head",)})()
    with pytest.raises(ConfigError, match="modules_to_save"):
        peft_init(encoder, LoraSettings(), 0)
