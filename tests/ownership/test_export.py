"""Exported adapters name their base by absolute path and come with how to pair them."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ownlm.errors import ConfigError
from ownlm.ownership.export import export_user
from ownlm.store import AdapterStore
from ownlm.testing import toy_run


def _toy(run_dir: Path, family: str | None = None):
    """A run object over a toy run (base + OPPU adapter of u1), as `export_user` reads it."""
    toy_run(run_dir, ["u1"], hidden=32, layers=1, heads=2, intermediate=64, family=family)
    meta = json.loads((run_dir / "base" / "ownlm_base.json").read_text())

    def store(variant="oppu"):
        return AdapterStore(run_dir / ("adapters" if variant == "oppu" else f"adapters-{variant}"))

    return SimpleNamespace(
        dir=run_dir,
        base_dir=run_dir / "base",
        store=store,
        base_fingerprint=lambda: meta["fingerprint"],
    )


def test_export_names_the_base_by_absolute_path_and_loads_from_anywhere(tmp_path, monkeypatch):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    run = _toy(Path("runs/t"))  # a relative run directory, as `output_dir: runs` gives
    path, message = export_user(run, "u1", Path("export"))  # auto: the user's OPPU LoRA
    base = (tmp_path / "runs/t/base").resolve()
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base)
    assert "exported user u1 (oppu)" in message and f"vllm serve {base}" in message
    assert f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{base}')" in message

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = AutoPeftModelForCausalLM.from_pretrained(path).eval()
    paired = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).eval()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, paired(input_ids=ids).logits)


def test_export_advice_is_a_command_line_option(tmp_path):
    run = _toy(tmp_path / "run")
    with pytest.raises(ConfigError, match="has no proper-user adapter.*pass --variant oppu"):
        export_user(run, "u1", tmp_path / "x", "proper-user")
    with pytest.raises(ConfigError, match="already exists"):
        export_user(run, "u1", tmp_path / "run", "oppu")


def test_a_gpt2_export_says_vllm_cannot_serve_it_instead_of_a_vllm_line(tmp_path):
    from peft import AutoPeftModelForCausalLM

    run = _toy(tmp_path / "run", family="gpt2")
    path, message = export_user(run, "u1", tmp_path / "export")
    assert "vllm serve" not in message
    assert "vLLM cannot serve it: vLLM runs GPT2LMHeadModel but cannot apply a LoRA" in message
    assert "load with PEFT" in message
    AutoPeftModelForCausalLM.from_pretrained(path)  # PEFT loads it from its config alone
