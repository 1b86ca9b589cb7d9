"""Device and precision: `auto` resolves, impossible asks fail clearly, and the stages
train and generate in bfloat16 on the CPU as they will on a GPU."""

import pytest
import torch

from ownlm.backbone.device import model_device, resolve_device, resolve_dtype
from ownlm.errors import ConfigError
from ownlm.oppu.sequential import train_users
from ownlm.run import Run
from ownlm.train.population import train_population


def test_auto_and_explicit_choices():
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert model_device(torch.nn.Linear(2, 2)) == cpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error_not_a_traceback():
    with pytest.raises(ConfigError, match="no CUDA GPU is available.*device=cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:1")


def test_bad_values_name_the_choices():
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="float16 is not supported on the CPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="use auto or one of"):
        resolve_dtype("int8", torch.device("cpu"))


def test_the_cli_says_so_for_device_cuda_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from typer.testing import CliRunner

    from ownlm.cli import app

    r = CliRunner().invoke(
        app, ["prepare", "--set", f"output_dir={tmp_path}", "--set", "device=cuda"]
    )
    assert r.exit_code == 2 and "no CUDA GPU" in r.output and "Traceback" not in r.output


def test_stages_train_and_generate_in_bfloat16(tiny_cfg):
    tiny_cfg.dtype = "bfloat16"
    tiny_cfg.device = "cpu"
    run = Run(tiny_cfg)
    train_population(run)
    backbone = run.base()
    assert next(backbone.model.parameters()).dtype == torch.bfloat16
    user = run.split.test[0]
    stats = train_users(run, "oppu", users=[user], backbone=backbone)
    assert stats["trained"] == 1
    manifest = run.store().manifest(user.name)
    assert manifest.extra["loss_last"] == manifest.extra["loss_last"]  # finite, not NaN
    from safetensors.torch import load_file

    weights = load_file(run.store().path(user.name) / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # adapters stay exact
    out = backbone.generate(backbone.model, ["a movie about"], max_new_tokens=3)
    assert len(out) == 1 and isinstance(out[0], str)
    scores = backbone.score_labels(backbone.model, ["a movie"], run.task.labels)
    assert torch.isfinite(scores).all()


def test_gradient_checkpointing_trains_the_same_lora(tiny_cfg):
    from ownlm.adapters.lora import is_checkpointing

    tiny_cfg.gradient_checkpointing = True
    tiny_cfg.user.dropout = 0.0
    run = Run(tiny_cfg)
    train_population(run)
    backbone = run.base()
    user = run.split.test[0]
    train_users(run, "oppu", users=[user], backbone=backbone)
    assert not is_checkpointing(backbone.model)  # off again
    with_gc = run.store().manifest(user.name).extra["loss_last"]
    run.store().delete(user.name)
    run.cfg.gradient_checkpointing = False
    train_users(run, "oppu", users=[user], backbone=backbone)
    assert run.store().manifest(user.name).extra["loss_last"] == pytest.approx(with_gc, abs=1e-5)


def test_quantize_4bit_refused_where_it_cannot_run(tiny_cfg):
    from ownlm.backbone.device import quantization_kwargs
    from ownlm.train.pretrain import initial_backbone

    with pytest.raises(ConfigError, match="runs on a CUDA GPU or the CPU"):
        quantization_kwargs("4bit", torch.device("meta"), torch.float32)
    with pytest.raises(ConfigError, match="not supported"):
        quantization_kwargs("3bit", torch.device("cpu"), None)
    tiny_cfg.quantize = "4bit"
    with pytest.raises(ConfigError, match="for Hugging Face causal LMs"):
        initial_backbone(Run(tiny_cfg))
