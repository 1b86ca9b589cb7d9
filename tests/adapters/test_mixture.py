import pytest
import torch
import transformers

from ownlm.adapters.mixture import (
    MixtureState,
    TokenUserRouter,
    UserRouter,
    balance_loss,
    install_mixture,
    mixture_layers,
    routing,
    uninstall_mixture,
)
from ownlm.errors import ConfigError


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("top_k", [0, 2])
def test_token_user_router_gates_sum_to_one(top_k):
    router = TokenUserRouter(64, 8, groups=4, top_k=top_k)
    x = torch.randn(3, 5, 64)
    gates = router(x, MixtureState(user_emb=torch.randn(3, 8)))
    assert gates.shape == (3, 5, 4)
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 5))
    if top_k:
        assert ((gates > 0).sum(-1) == top_k).all()


def test_user_router_gates_sum_to_one_and_ignore_input():
    router = UserRouter(n_users=2, groups=4, top_k=0)
    with torch.no_grad():
        router.logits.normal_()
    state = MixtureState(user_ids=torch.tensor([1]))
    g1 = router(torch.randn(2, 5, 64), state)
    g2 = router(torch.randn(2, 7, 64), state)
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(g1.sum(-1), torch.ones(1))


def test_install_uninstall_roundtrip_and_zero_init():
    model = tiny_llama()
    ids = torch.randint(0, 300, (2, 6))
    ref = model(input_ids=ids).logits
    state = install_mixture(
        model,
        ("gate_proj", "up_proj", "down_proj"),
        groups=4,
        r=2,
        alpha=4,
        make_router=lambda lin: TokenUserRouter(lin.in_features, 8, 4),
    )
    assert len(mixture_layers(model)) == 6  # 3 FFN projections x 2 layers
    with routing(state, user_emb=torch.randn(2, 8)):
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref)  # B = 0 at init: the base is unchanged
    uninstall_mixture(model)
    assert not mixture_layers(model)
    torch.testing.assert_close(model(input_ids=ids).logits, ref)


def test_experts_change_output_and_gates_recorded():
    model = tiny_llama()
    state = install_mixture(
        model, ("down_proj",), 3, 2, 2, lambda lin: TokenUserRouter(lin.in_features, 4, 3)
    )
    for layer in mixture_layers(model).values():
        torch.nn.init.normal_(layer.B, std=0.1)
    ids = torch.randint(0, 300, (2, 6))
    with routing(state, user_emb=torch.randn(2, 4), record=True):
        model(input_ids=ids)
        assert len(state.gates) == 2
        loss = balance_loss(state.gates)
    assert 1.0 - 1e-5 <= loss.item() <= 3.0 + 1e-5  # between uniform (1) and collapsed (G)


def test_bad_targets_named():
    with pytest.raises(ConfigError, match="no_such_proj"):
        install_mixture(tiny_llama(), ("no_such_proj",), 2, 2, 2, lambda lin: UserRouter(1, 2))


def test_collapsed_gates_cost_more_than_uniform():
    uniform = [torch.full((10, 4), 0.25)]
    collapsed = [torch.tensor([[1.0, 0, 0, 0]]).repeat(10, 1)]
    assert balance_loss(uniform).item() == pytest.approx(1.0)
    assert balance_loss(collapsed).item() == pytest.approx(4.0)


def test_installs_on_the_minilm_encoder_ffn_only():
    from ownlm.backbone.base import EncoderBackbone
    from ownlm.backbone.encoder import load_minilm_classifier

    model, tok = load_minilm_classifier(("a", "b"))
    backbone = EncoderBackbone(model, tok)
    state = install_mixture(
        backbone.model,
        backbone.ffn_targets,
        4,
        2,
        2,
        lambda lin: TokenUserRouter(lin.in_features, 4, 4),
    )
    names = sorted(mixture_layers(backbone.model))
    assert len(names) == 12 and not any("attention" in n for n in names)  # 6 layers x 2
    with routing(state, user_emb=torch.randn(1, 4), record=True):
        backbone.loss(backbone.model, ["hello there", "x"], ["a", "b"])
    assert len(state.gates) == 12


def test_group_loss_is_minus_one_for_hard_even_groups_and_zero_for_uniform_gates():
    from ownlm.adapters.mixture import group_loss, user_gates

    users = torch.tensor([0, 0, 1, 2, 3])
    hard = torch.eye(4)[[0, 0, 1, 2, 3]][:, None, :].expand(5, 3, 4)  # (B, T, G)
    assert group_loss([hard], users).item() == pytest.approx(-1.0, abs=1e-5)
    uniform = torch.full((5, 3, 4), 0.25)
    assert group_loss([uniform], users).item() == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.eye(4)[[0] * 5][:, None, :].expand(5, 3, 4)  # everyone on expert 0
    assert group_loss([collapsed], users).item() == pytest.approx(0.0, abs=1e-5)
    # a user's gate is the mean over their sequences and tokens
    mixed = torch.stack([torch.eye(4)[0], torch.eye(4)[1]])[:, None, :]  # (2, 1, 4)
    q = user_gates(mixed, torch.tensor([7, 7]))
    torch.testing.assert_close(q, torch.tensor([[0.5, 0.5, 0.0, 0.0]]))


def test_group_loss_alone_sorts_users_into_distinct_confident_groups():
    from ownlm.adapters.mixture import group_loss

    torch.manual_seed(0)
    logits = torch.nn.Parameter(0.01 * torch.randn(8, 4))  # 8 users' gate logits
    opt = torch.optim.Adam([logits], lr=0.1)
    users = torch.arange(8)
    for _ in range(200):
        loss = group_loss([logits.softmax(-1)[:, None, :]], users)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gates = logits.softmax(-1).detach()
    assert gates.max(-1).values.min() > 0.9  # every user sits on one expert
    counts = torch.bincount(gates.argmax(-1), minlength=4)
    assert counts.min() >= 1, counts  # and every expert is some users' group
