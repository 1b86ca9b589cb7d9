"""Training memory: measured on small CPU runs, fitted, extrapolated to real models.

Each small config (a random-init Qwen2-shaped model in float32 with OPPU's LoRA on
q_proj, v_proj) runs one training step, forward and backward of `backbone.loss` (the
output head at the answer's positions only), in a fresh process; the step's extra
peak resident memory (ru_maxrss after the step minus before it) is what the step's
activations took. A least-squares fit gives the bytes each token keeps per layer:

    activations = rows x T x layers x (a_d x hidden + a_f x ffn)

`--table` prints the estimate for real models in bf16 on a GPU: weights at 2 bytes
per parameter (4-bit NF4: 0.55 for the decoder's linear layers, the embeddings kept
in bf16), activations at half the float32 figure (with gradient checkpointing: each
layer's input kept, one layer's activations live), the output head's logits at 32
answer tokens per row only, and each batched user's LoRA with its gradient and AdamW
state (16 bytes per LoRA parameter, r=8 on q_proj and v_proj). Those GPU figures are
estimates from CPU measurements, not GPU measurements.

    python bench/memory.py            # measure, fit, print the table (about 2 minutes)
    python bench/memory.py --table    # the table from the fitted numbers pinned below
    python bench/memory.py --head     # one step's peak, head at the answer vs full logits
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

# (hidden, ffn, layers, heads, rows, T): hidden, ffn, depth, rows and length each varied
CONFIGS = [
    (256, 1024, 2, 4, 4, 256),
    (256, 2048, 2, 4, 4, 256),
    (512, 1024, 2, 8, 4, 256),
    (256, 1024, 4, 4, 4, 256),
    (256, 1024, 2, 4, 8, 256),
    (256, 1024, 2, 4, 4, 512),
    (512, 2048, 2, 8, 8, 128),
    (384, 1536, 3, 6, 4, 384),
]
ANSWER = 8  # supervised answer tokens per row
# bytes per token per layer, per unit of hidden and of ffn (float32, CPU), as
# `python bench/memory.py` fitted them on 2026-12-07 (2 shared CPU cores, torch 2.x)
FIT = {"a_d": 67.32, "a_f": 15.21}  # worst relative error of the fit: 27% (8 configs)
# real shapes: (params, hidden, ffn, layers, vocab)
MODELS = {
    "Qwen2-0.5B": (0.49e9, 896, 4864, 24, 151936),
    "Llama-3.2-1B": (1.24e9, 2048, 8192, 16, 128256),
    "Qwen2.5-3B": (3.09e9, 2048, 11008, 36, 151936),
    "Llama-3.1-8B": (8.03e9, 4096, 14336, 32, 128256),
}


def child(cfg: tuple) -> None:
    """One step of one config; prints {"delta_mb": ...} as JSON."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from ownlm.adapters.lora import lora_config
    from ownlm.backbone.base import CausalBackbone
    from ownlm.backbone.tokenizer import train_tokenizer
    from ownlm.config import LoraSettings
    from ownlm.testing import toy_texts

    torch.set_num_threads(1)
    hidden, ffn, layers, heads, rows, T = cfg
    tok = train_tokenizer(toy_texts(), vocab_size=300)
    conf = AutoConfig.for_model(
        "qwen2", vocab_size=512, hidden_size=hidden, intermediate_size=ffn,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=T + 64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa")
    backbone = CausalBackbone(model, tok, name="mem", max_len=T + 64)
    peft = get_peft_model(model, lora_config(backbone, LoraSettings(dropout=0.0)))
    words = toy_texts(rows * T)
    prompt = " ".join(words)  # far longer than T: fitted to the context
    target = " ".join(words[0].split()[:ANSWER])
    ids, _, labels = backbone.encode_pairs([prompt] * rows, [target] * rows)
    prompts = [tok.decode(ids[0][: T - (labels[0] != -100).sum()])] * rows
    backbone.loss(peft, prompts[:1], [target]).backward()  # warm-up at one row
    peft.zero_grad()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    backbone.loss(peft, prompts, [target] * rows).backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    width = backbone.encode_pairs(prompts, [target] * rows)[0].shape[1]
    print(json.dumps({"delta_mb": (after - before) / 1024, "T": width}))


def head_child(full: bool) -> None:
    """One step at a 32k vocabulary, 8 rows of 256 tokens: the loss through
    `backbone.heads` (answer positions only) or through the model's full logits."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ownlm.backbone.base import CausalBackbone
    from ownlm.backbone.tokenizer import train_tokenizer
    from ownlm.testing import toy_texts

    torch.set_num_threads(1)
    tok = train_tokenizer(toy_texts(), vocab_size=300)
    conf = AutoConfig.for_model(
        "qwen2", vocab_size=32000, hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(conf)
    backbone = CausalBackbone(model, tok, name="mem", max_len=260)
    prompts, targets = [" ".join(toy_texts(40))] * 8, ["good answer"] * 8
    ids, mask, labels = backbone.encode_pairs(prompts, targets)

    def step(n: int):
        if full:
            out = model(input_ids=ids[:n], attention_mask=mask[:n], labels=labels[:n])
            out.loss.backward()
        else:
            backbone.loss(model, prompts[:n], targets[:n]).backward()

    step(1)  # warm-up at one row: the weights' gradients and pools in place
    model.zero_grad()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(len(prompts))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"full": full, "T": ids.shape[1], "delta_mb": (after - before) / 1024}))


def measure() -> list[dict]:
    out = []
    for cfg in CONFIGS:
        cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        got = json.loads(res.stdout.strip().splitlines()[-1])
        out.append({"cfg": cfg, **got})
        print(f"hidden,ffn,layers,heads,rows,T={cfg} (T={got['T']}): +{got['delta_mb']:.1f} MB")
    return out


def fit(points: list[dict]) -> dict:
    import numpy as np

    x, y = [], []
    for p in points:
        hidden, ffn, layers, _, rows, _ = p["cfg"]
        n = rows * p["T"] * layers
        x.append([n * hidden, n * ffn])
        y.append(p["delta_mb"] * 2**20)
    coef, *_ = np.linalg.lstsq(np.array(x, float), np.array(y, float), rcond=None)
    pred = np.array(x, float) @ coef
    worst = float(np.max(np.abs(pred - y) / np.array(y)))
    print(f"fit: worst relative error {worst:.0%} over {len(y)} configs")
    return {"a_d": float(coef[0]), "a_f": float(coef[1])}


def estimate_gb(model: str, rows: int, T: int, users: int, f: dict, how: str = "bf16"):
    """Peak GPU memory (GB) of one chunk of `rows` rows of T tokens with `users` LoRAs;
    `how`: bf16, ckpt (bf16 with gradient checkpointing) or 4bit."""
    params, hidden, ffn, layers, vocab = MODELS[model]
    embed = vocab * hidden
    weights = 2 * params if how != "4bit" else 0.55 * (params - embed) + 2 * embed
    per_layer = rows * T * (f["a_d"] * hidden + f["a_f"] * ffn) / 2  # bf16: half of fp32
    act = per_layer + rows * T * layers * hidden * 2 if how == "ckpt" else per_layer * layers
    head = rows * 32 * vocab * 4 * 3  # logits, log-softmax and gradient at 32 answer tokens
    lora = users * layers * 2 * 8 * (hidden + hidden) * 16  # r=8 on q, v (v ~ hidden wide)
    return (weights + act + head + lora) / 1e9


def table(f: dict) -> None:
    print(
        "| model | context | users_per_batch | chunk_rows | bf16 | bf16 + checkpointing | 4-bit |"
    )
    print("|---|---|---|---|---|---|---|")
    for model in MODELS:
        for T in (512, 2048):
            for users, rows in ((16, 4), (16, 16), (64, 16)):
                gb = [
                    estimate_gb(model, rows, T, users, f, how) for how in ("bf16", "ckpt", "4bit")
                ]
                cells = " | ".join(f"{g:.1f} GB" for g in gb)
                print(f"| {model} | {T} | {users} | {rows} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", action="store_true", help="the table from the pinned FIT")
    ap.add_argument("--head", action="store_true", help="head split vs full logits")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--head-child", choices=("split", "full"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(tuple(json.loads(args.child)))
    if args.head_child:
        return head_child(args.head_child == "full")
    if args.head:
        for how in ("full", "split"):
            cmd = [sys.executable, __file__, "--head-child", how]
            print(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())
        return None
    f = FIT if args.table else fit(measure())
    print("bytes per token per layer: " + ", ".join(f"{k}={v:.2f}" for k, v in f.items()))
    table(f)


if __name__ == "__main__":
    main()
