import json

import pytest
import torch
from peft import PeftModel

from ownlm.adapters.export import export_mixture
from ownlm.adapters.mixture import (
    TokenUserRouter,
    UserRouter,
    install_mixture,
    mixture_layers,
    routing,
    uninstall_mixture,
)
from ownlm.errors import ConfigError
from tests.adapters.test_mixture import tiny_llama

TARGETS = ("gate_proj", "up_proj", "down_proj")


def random_user_mixture(model, groups=4, r=2, r_u=3):
    state = install_mixture(model, TARGETS, groups, r, 4, lambda lin: UserRouter(1, groups))
    torch.manual_seed(1)
    for layer in mixture_layers(model).values():
        with torch.no_grad():
            layer.B.normal_(std=0.2)
            layer.router.logits.normal_()
        layer.add_user_lora(r_u, 6)
        with torch.no_grad():
            layer.user_B.normal_(std=0.2)
    return state


def test_exported_flat_lora_equals_mixture_under_vanilla_peft(tmp_path):
    model = tiny_llama()
    ids = torch.randint(0, 300, (2, 7))
    state = random_user_mixture(model)
    with torch.no_grad(), routing(state, user_ids=torch.tensor([0])):
        mixed = model(input_ids=ids).logits
    export_mixture(model, tmp_path / "flat")
    cfg = json.loads((tmp_path / "flat" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 * 2 + 3 and cfg["lora_alpha"] == cfg["r"]

    base = uninstall_mixture(model)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    peft_model = PeftModel.from_pretrained(base, tmp_path / "flat").eval()
    with torch.no_grad():
        flat = peft_model(input_ids=ids).logits
    assert (mixed - plain).abs().max() > 1e-3  # the adapter does something
    assert (flat - mixed).abs().max().item() < 1e-5


def test_input_dependent_router_refuses_to_flatten(tmp_path):
    model = tiny_llama()
    install_mixture(model, TARGETS, 2, 2, 2, lambda lin: TokenUserRouter(lin.in_features, 4, 2))
    with pytest.raises(ConfigError, match="user-only"):
        export_mixture(model, tmp_path / "x")


def test_vllm_hint_rounds_the_rank_up_to_a_max_lora_rank_vllm_accepts(tmp_path):
    import json

    from ownlm.adapters.export import vllm_hint

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 40}))
    hint = vllm_hint(tmp_path / "base", tmp_path, "user-u1")
    assert "--max-lora-rank 64" in hint and f"--lora-modules user-u1={tmp_path}" in hint
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 600}))
    assert "exceeds" in vllm_hint(tmp_path / "base", tmp_path, "u")
    assert "causal" in vllm_hint(tmp_path / "base", tmp_path, "u", kind="encoder")
