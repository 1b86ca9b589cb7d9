"""ownlm on a CUDA GPU in bfloat16: a training step that learns, the head split equal to
the full logits, the serving engine's logits equal to PEFT's, a 4-bit layer's forward,
and the whole OPPU pipeline. Skipped without CUDA; run on a GPU machine:
`HF_HUB_OFFLINE=1 python -m pytest -q -m gpu tests/test_gpu.py` (bench/gpu_check.sh
runs them with its larger checks)."""

import json

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
PROMPTS = ["the user likes movies", "a rating good", "books music news sports science tags"]
TARGETS = ["good", "bad answer", "the tags"]


def _bf16_backbone(family: str = "qwen2"):
    from ownlm.testing import family_backbone

    backbone = family_backbone(family, hidden=128, layers=2, heads=4, intermediate=256)
    backbone.model = backbone.model.to("cuda", torch.bfloat16)
    return backbone


def test_a_bf16_training_step_learns_and_keeps_the_lora_in_float32():
    from peft import get_peft_model

    from ownlm.adapters.lora import lora_config
    from ownlm.config import LoraSettings

    backbone = _bf16_backbone()
    model = get_peft_model(backbone.model, lora_config(backbone, LoraSettings(dropout=0.0)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = backbone.loss(model, PROMPTS, TARGETS)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in params)
        opt.step()
        losses.append(loss.item())
    assert loss.dtype == torch.float32  # the loss is computed in float32, as HF's
    assert losses[-1] < losses[0] - 0.1, losses


def test_the_head_split_equals_the_full_logits_in_bf16():
    backbone = _bf16_backbone("llama")
    ids, mask, labels = (t.cuda() for t in backbone.encode_pairs(PROMPTS, TARGETS))
    with torch.no_grad():
        want = backbone.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = backbone.loss(backbone.model, PROMPTS, TARGETS)
    torch.testing.assert_close(got, want.float(), atol=2e-2, rtol=2e-2)


def test_the_engine_logits_equal_pefts_on_cuda_in_bf16(tmp_path):
    from peft import PeftModel

    from ownlm.backbone.load import load_base
    from ownlm.config import ServeSettings
    from ownlm.serve.server import build_server
    from ownlm.store import AdapterStore
    from ownlm.testing import toy_run

    toy_run(tmp_path, ["ann", "bob"])
    store = AdapterStore(tmp_path / "adapters")
    settings = ServeSettings(cache_size=4, max_batch_size=4, device="cuda", dtype="bfloat16")
    server = build_server(tmp_path, settings)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]], device="cuda")
    for user in ("ann", "bob"):
        slot = server.cache.slots_for([user])[0]
        with torch.inference_mode(), server.engine.lora.use([slot]):
            served = server.engine.model(input_ids=ids).logits.float()
        bare = load_base(tmp_path / "base", "cuda", torch.bfloat16).model
        peft = PeftModel.from_pretrained(bare, store.path(f"user:{user}")).eval()
        with torch.inference_mode():
            want = peft(input_ids=ids).logits.float()
        gap = (served - want).abs().max() / want.abs().max()
        assert gap < 5e-2, f"{user}: engine vs PEFT relative gap {gap:.3g} in bf16"


def test_a_4bit_layer_runs_on_cuda_and_serving_slots_take_its_compute_dtype():
    bnb = pytest.importorskip("bitsandbytes")
    from ownlm.adapters.batched import BatchedLoraLinear, SlotState

    w = torch.randn(64, 128)
    layer = bnb.nn.Linear4bit(128, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.load_state_dict({"weight": w}, strict=False)
    layer = layer.to("cuda")
    x = torch.randn(3, 128, device="cuda", dtype=torch.bfloat16)
    y = layer(x).float()
    ref = x.float() @ w.cuda().T
    assert (y - ref).abs().mean() / ref.abs().mean() < 0.15  # NF4's rounding, no more
    wrapped = BatchedLoraLinear(layer, SlotState(2), max_rank=4)
    assert wrapped.A.dtype == wrapped.B.dtype == torch.float32  # never the weight's uint8


def test_oppu_pipeline_on_cuda_in_bfloat16(tiny_cfg, tmp_path):
    from ownlm.config import ServeSettings
    from ownlm.evaluate.runner import evaluate_run
    from ownlm.oppu.sequential import train_users
    from ownlm.ownership.export import export_user
    from ownlm.run import Run
    from ownlm.serve.engine import Request
    from ownlm.serve.server import build_server
    from ownlm.train.population import train_population

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
