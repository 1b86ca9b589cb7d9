"""A user's own model, of each family ownlm is used with: a random-init directory with a
BPE tokenizer trained here goes through `ownlm train`, `eval`, `export` and `serve` with
default settings (tiny budgets). Success, or one `error:` line before any work; never a
traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ownlm.cli import app
from ownlm.testing import FAMILIES, save_family
from tests.conftest import TINY_OVERRIDES

runner = CliRunner()
SIZE = {"hidden": 64, "layers": 2, "heads": 4, "intermediate": 128}


def _sets(tmp_path, backbone, *extra) -> list[str]:
    out = []
    for kv in [
        f"output_dir={tmp_path / 'runs'}",
        "name=f",
        "data=demo-tags",
        "max_users=6",
        "max_queries=2",
        f"backbone={backbone}",
        *TINY_OVERRIDES,
        *extra,
    ]:
        out += ["--set", kv]
    return out


def _ok(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    return r.output


def _served_text(run_dir, user: str, monkeypatch) -> str:
    """`ownlm serve` on the run (uvicorn's loop replaced by a test client of the app it
    was given): one completion for the user's model."""
    import uvicorn
    from fastapi.testclient import TestClient

    from ownlm.store import TokenStore

    token = TokenStore(run_dir).create(admin=True)
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: apps.append(application))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: apps.append(self.config.app))
    _ok(["serve", "--run-dir", str(run_dir)])
    with TestClient(apps[0]) as client:
        models = client.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).json()
        model = next(m["id"] for m in models["data"] if m["id"].endswith(f":{user}"))
        body = {"model": model, "prompt": "the user likes", "max_tokens": 4, "temperature": 0}
        r = client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _trained_user(run_dir) -> str:
    return sorted(p.name for p in (run_dir / "adapters" / "users").iterdir())[0]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_evaluates_exports_and_serves_with_defaults(
    tmp_path, monkeypatch, family
):
    from peft import AutoPeftModelForCausalLM

    from ownlm import run as run_module

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    sets = _sets(tmp_path, save_family(tmp_path / family, family, **SIZE))
    _ok(["train", *sets])
    _ok(["eval", *sets])
    run_dir = tmp_path / "runs" / "f"
    assert json.loads((run_dir / "eval" / "results.json").read_text())["results"]
    user = _trained_user(run_dir)
    shown = _ok(["export", *sets, "--user", user, "--out", str(tmp_path / "export")])
    # vLLM cannot apply a LoRA to GPT-2: the export says so instead of a vLLM line
    assert ("vllm serve" in shown) == (family != "gpt2"), shown
    if family != "gpt2":
        assert "--enable-lora --max-loras 16 --max-lora-rank 8" in shown
    AutoPeftModelForCausalLM.from_pretrained(tmp_path / "export")  # from its config alone
    assert isinstance(_served_text(run_dir, user, monkeypatch), str)


@pytest.mark.slow
def test_gpt2_proper_user_exports_one_lora_auto_peft_loads(tmp_path, monkeypatch):
    """PROPER's experts on GPT-2's Conv1D FFN layers, flattened into one PEFT LoRA."""
    from peft import AutoPeftModelForCausalLM

    from ownlm import run as run_module

    monkeypatch.setattr(run_module, "CACHE_DIR", tmp_path / "cache")
    sets = _sets(tmp_path, save_family(tmp_path / "gpt2", "gpt2", **SIZE), "proper.em_rounds=1")
    _ok(["train", *sets, "--stages", "population,groups,users", "--variants", "proper-user"])
    _ok(["eval", *sets, "--set", "methods=base,proper-user"])
    user = sorted(p.name for p in (tmp_path / "runs/f/adapters-proper-user/users").iterdir())[0]
    out = tmp_path / "export"
    shown = _ok(["export", *sets, "--user", user, "--variant", "proper-user", "--out", str(out)])
    assert "vLLM cannot serve it" in shown
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and "mlp.c_proj" in " ".join(cfg["target_modules"])
    AutoPeftModelForCausalLM.from_pretrained(out)


def test_a_family_peft_has_no_targets_for_is_one_line_before_any_work(tmp_path):
    """Phi-3 (fused qkv_proj) is not in PEFT's table: refused before stage 1, naming the
    model type and the settings; named targets are taken as given."""
    path = save_family(tmp_path / "phi3", "phi3", hidden=32, layers=1, heads=2, intermediate=48)
    r = runner.invoke(app, ["train", *_sets(tmp_path, path)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.count("error:") == 1 and "'phi3'" in r.output
    assert "population.targets" in r.output and "qkv_proj" in r.output
    assert not (tmp_path / "runs" / "f" / "base").exists()  # no stage ran
