"""`ownlm export` of an OPPU user trained with IA3 or prompt tuning: the PEFT directory,
loadable by vanilla PEFT from anywhere, and the words that vLLM cannot serve it."""

import json
from pathlib import Path

import pytest
import torch

from ownlm.ownership.export import export_user
from tests.ownership.test_export import _toy
from tests.serve.test_peft_methods import add_method_adapter


@pytest.mark.parametrize("method", ["ia3", "prompt"])
def test_export_of_another_method_says_vllm_cannot_serve_it(tmp_path, method):
    from peft import AutoPeftModelForCausalLM

    run = _toy(tmp_path / "run")
    add_method_adapter(tmp_path / "run", "u2", method)
    path, message = export_user(run, "u2", tmp_path / "export")
    cfg = json.loads((Path(path) / "adapter_config.json").read_text())
    assert cfg["peft_type"] == {"ia3": "IA3", "prompt": "PROMPT_TUNING"}[method]
    assert "load with PEFT: " in message and "vllm serve" not in message
    assert "vLLM cannot serve it" in message and "LoRA only" in message
    model = AutoPeftModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 5, 9]])).logits.shape[0] == 1
