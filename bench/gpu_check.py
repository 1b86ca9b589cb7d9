"""The GPU check (`bench/gpu_check.sh` runs it): ownlm on a ~0.5B Qwen2-shaped model.

Builds a random-init Qwen2-shaped model (Qwen2-0.5B's shape: d=896, 24 layers, 14
heads, 2 KV heads, FFN 4864, vocabulary 151936) and a BPE tokenizer trained here, then
runs each check and records it (ok, skip with the reason, or fail with the error):

  gpu-tests     pytest -m gpu (tests/test_gpu.py)
  train-eval    `ownlm train` (population, OPPU users) and `ownlm eval` in bf16
  engine-peft   the serving engine's logits against PEFT's on the exported adapter
  serve-16      16 concurrent completions against a live `ownlm serve`
  users-hour    users per hour batched vs one at a time, with peak GPU memory
  qlora         `quantize=4bit` train, eval, export (needs bitsandbytes)
  proper-flat   PROPER's three stages, the flat proper-user export loaded by PEFT

`--cpu` runs the same checks at tiny sizes on the CPU in float32 (the slow test suite
does, so the script does not rot). The summary goes to <out>/gpu_check.json and
<out>/gpu_check.txt, and the text table is printed last.

    python bench/gpu_check.py [--out DIR] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
SRC = Path(__file__).resolve().parent.parent / "src"  # this checkout's ownlm, installed or not
sys.path.insert(0, str(SRC))
os.environ["PYTHONPATH"] = f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"

from gpu_check_steps import STEPS, Check  # noqa: E402

# model shapes: Qwen2-0.5B on the GPU, a few hundred thousand parameters on the CPU
SHAPES = {
    "gpu": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, intermediate_size=4864, vocab_size=151936),
    "cpu": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=128, vocab_size=512),
}  # fmt: skip


def build_model(path: Path, cpu: bool) -> dict:
    """Save a random-init Qwen2-shaped model with a locally trained tokenizer at `path`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ownlm.backbone.base import CausalBackbone
    from ownlm.backbone.tokenizer import train_tokenizer
    from ownlm.data.demo import make_demo_tags

    users = make_demo_tags().users
    texts = [f"{i.fields['description']} {i.fields['tag']}" for u in users for i in u.history]
    tok = train_tokenizer(texts, vocab_size=512 if cpu else 8192)
    shape = SHAPES["cpu" if cpu else "gpu"]
    cfg = AutoConfig.for_model(
        "qwen2", max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{**shape, "vocab_size": max(shape["vocab_size"], len(tok))},
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    if not cpu:
        model = model.to(torch.bfloat16)
    CausalBackbone(model, tok, name="qwen2-check", max_len=512).save(path)
    return {"params": sum(p.numel() for p in model.parameters()), "vocab": cfg.vocab_size}


def environment() -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__}
    env["transformers"] = transformers.__version__
    for name in ("peft", "bitsandbytes", "fastapi", "bm25s"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return env


def table(summary: dict) -> str:
    lines = [f"ownlm GPU check ({summary['mode']}) on {summary['env']['device']}"]
    lines.append(f"model: Qwen2-shaped, {summary['model'].get('params', 0) / 1e6:.1f}M params")
    lines.append(f"{'check':<12} {'status':<6} {'s':>6}  detail")
    for r in summary["checks"]:
        lines.append(f"{r['name']:<12} {r['status']:<6} {r['seconds']:>6.1f}  {r['detail']}")
    n_fail = sum(r["status"] == "fail" for r in summary["checks"])
    lines.append(f"failed={n_fail}")
    return "\n".join(lines)


def run_step(name, fn, check: Check) -> dict:
    start = time.perf_counter()
    try:
        status, detail, metrics = fn(check)
    except Exception as exc:  # a failed check is recorded, the next one still runs
        status, detail, metrics = "fail", f"{type(exc).__name__}: {exc}"[:300], {}
        traceback.print_exc()
    row = {"name": name, "status": status, "seconds": time.perf_counter() - start}
    row.update(detail=detail, metrics=metrics)
    print(f"[gpu_check] {name}: {status} {detail}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU, float32")
    ap.add_argument("--only", default="", help="comma-separated checks to run (default all)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run with --cpu for the small CPU mode", file=sys.stderr)
        return 2
    summary = {"mode": "cpu" if args.cpu else "gpu", "env": environment()}
    model_dir = out / "model"
    summary["model"] = build_model(model_dir, args.cpu)
    check = Check(out=out, model_dir=model_dir, cpu=args.cpu)
    wanted = [s for s in args.only.split(",") if s] or list(STEPS)
    summary["checks"] = [run_step(name, STEPS[name], check) for name in wanted]
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
    text = table(summary)
    (out / "gpu_check.txt").write_text(text + "\n")
    print(text)
    return int(any(r["status"] == "fail" for r in summary["checks"]))


if __name__ == "__main__":
    sys.exit(main())
