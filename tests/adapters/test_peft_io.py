"""PEFT's file format in one place: what ownlm writes by hand PEFT reads, and back."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from ownlm.adapters.peft_io import (
    max_rank,
    peft_key,
    read_lora,
    read_peft_adapter,
    target_names,
    write_peft_lora,
)
from ownlm.errors import ConfigError, StoreError
from tests.adapters.test_mixture import tiny_llama


def test_keys_written_by_hand_are_the_keys_peft_saves(tmp_path):
    model = tiny_llama()
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "peft")
    theirs = read_lora(tmp_path / "peft")
    assert theirs and all(".q_proj" in m for m in theirs)
    write_peft_lora(tmp_path / "ours", theirs, alpha=4)
    ours = read_lora(tmp_path / "ours")
    assert ours.keys() == theirs.keys()
    for m in ours:
        assert torch.equal(ours[m][0], theirs[m][0]) and torch.equal(ours[m][1], theirs[m][1])
    module = next(iter(ours))
    assert peft_key(module, "A") == f"base_model.model.{module}.lora_A.weight"
    scaled = read_peft_adapter(tmp_path / "ours").weights[module][1]
    torch.testing.assert_close(scaled, ours[module][1] * 2.0)  # alpha / r = 4 / 2
    assert max_rank([tmp_path / "ours"], floor=1) == 2
    assert target_names([tmp_path / "ours"]) == {"q_proj"}


def test_bad_directories_and_ranks_are_refused(tmp_path):
    with pytest.raises(StoreError, match="not a PEFT LoRA directory"):
        read_lora(tmp_path)
    a = torch.zeros(2, 4)
    with pytest.raises(ConfigError, match="same rank"):
        write_peft_lora(tmp_path / "x", {"a": (a, torch.zeros(4, 2)), "b": (a[:1], a.T[:, :1])}, 1)
