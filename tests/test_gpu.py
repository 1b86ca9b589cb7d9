"""The OPPU pipeline on a CUDA GPU in bfloat16 (tiny backbone): population, user LoRAs,
evaluation, export, and one served request. Skipped without CUDA; run on a GPU machine:
`HF_HUB_OFFLINE=1 python -m pytest -q -m gpu tests/test_gpu.py`."""

import json

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_oppu_pipeline_on_cuda_in_bfloat16(tiny_cfg, tmp_path):
    from ownlm.config import ServeSettings
    from ownlm.evaluate.runner import evaluate_run
    from ownlm.methods.export import export_user
    from ownlm.run import Run
    from ownlm.serve.engine import Request
    from ownlm.serve.server import build_server
    from ownlm.train.population import train_population
    from ownlm.train.users import train_users

    tiny_cfg.device, tiny_cfg.dtype = "cuda", "bfloat16"
    run = Run(tiny_cfg)
    train_population(run)
    backbone = run.base()
    assert next(backbone.model.parameters()).device.type == "cuda"
    assert train_users(run, "oppu", backbone=backbone)["trained"] == len(run.split.test)
    results = {r.method: r.metrics for r in evaluate_run(run, ["base", "oppu"])}
    assert 0.0 <= results["oppu"]["accuracy"] <= 1.0
    user = run.split.test[0].user_id
    path, hint = export_user(run, user, tmp_path / "export", "oppu")
    assert json.loads((path / "adapter_config.json").read_text())["r"] == run.cfg.user.r
    server = build_server(run.dir, ServeSettings(4, 4, 5, device="cuda", dtype="bfloat16"))
    ids = server.backbone.tokenizer("a movie about", add_special_tokens=False)["input_ids"]
    out = server.engine.generate([Request(ids=ids, slot=server.cache.slots_for([user])[0])])
    assert out[0].prompt_tokens == len(ids)
