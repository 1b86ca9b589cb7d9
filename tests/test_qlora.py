"""QLoRA end to end on the CPU (bitsandbytes runs NF4 layers there): a random-init Llama
directory with `quantize=4bit` trains (stage 1 kept unmerged beside the 4-bit weights,
users), evaluates, exports (one PEFT LoRA: stage 1 stacked under the user's) and serves
a completion, with the serving slots in the compute dtype, never the weight's uint8."""

from __future__ import annotations

import json

import pytest
import torch

from ownlm.testing import save_family
from tests.test_families import SIZE, _ok, _served_text, _sets, _trained_user

pytest.importorskip("bitsandbytes")


@pytest.mark.slow
def test_a_4bit_run_trains_evaluates_exports_and_serves_on_cpu(tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM

    from ownlm import run as run_module

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    path = save_family(tmp_path / "llama", "llama", **SIZE)
    sets = _sets(tmp_path, path, "quantize=4bit", "device=cpu")
    _ok(["train", *sets])
    run_dir = tmp_path / "runs" / "f"
    meta = json.loads((run_dir / "base" / "ownlm_base.json").read_text())
    assert meta["unmerged"] == ["population"]  # a 4-bit merge would round stage 1 away
    assert json.loads((run_dir / "base" / "config.json").read_text())["quantization_config"]
    _ok(["eval", *sets])
    assert json.loads((run_dir / "eval" / "results.json").read_text())["results"]
    user = _trained_user(run_dir)
    out = tmp_path / "export"
    shown = _ok(["export", *sets, "--user", user, "--out", str(out)])
    # stage 1 (r=8) stacked under the user's LoRA (r=8); vLLM told the base is 4-bit
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 16
    assert "--quantization bitsandbytes --enable-lora" in shown, shown
    assert "--max-lora-rank 16" in shown, shown
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert model.base_model.model.is_loaded_in_4bit
    assert isinstance(_served_text(run_dir, user, monkeypatch), str)


def test_serving_slots_take_the_compute_dtype_of_a_4bit_layer():
    import bitsandbytes as bnb

    from ownlm.adapters.batched import BatchedLoraLinear, SlotState

    layer = bnb.nn.Linear4bit(16, 8, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.load_state_dict({"weight": torch.randn(8, 16)}, strict=False)
    layer = layer.to("cpu")
    wrapped = BatchedLoraLinear(layer, SlotState(2), max_rank=4)
    assert wrapped.A.dtype == wrapped.B.dtype == torch.float32
    wrapped.set_slot(0, torch.randn(4, 16), torch.randn(8, 4))
    wrapped.state.idx = torch.tensor([0, 2])
    x = torch.randn(2, 3, 16)
    y = wrapped(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
