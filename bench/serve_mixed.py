"""Mixed-user batch throughput: ownlm's gathered LoRA vs PEFT, sequential and merged.

16 requests from 16 distinct users (rank-8 LoRA on q/v), the default tiny backbone size
(Llama, 4 layers, d=256, 4 heads, FFN 688, vocab 4096; random weights), 32 new tokens
each, greedy, every prompt the same length. Generated tokens per second of

  (a) ownlm: one batch, each row its own slot (gathered bmm), KV-cached decode loop
  (b) PEFT's mixed batch: one PeftModel holding all 16 adapters, adapter_names=[...]
  (c) one request at a time, PeftModel.set_adapter per user
  (d) one adapter merged into the base (merge_and_unload), the same batch: upper bound

(b)-(d) run twice: through the same KV-cached greedy loop as (a) ("loop", the fair
comparison the last line reports) and through HF `generate` ("generate", for reference).
Methods run interleaved, in one process; the median of --runs repetitions is reported.

    python bench/serve_mixed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import DynamicCache

from ownlm.serve.engine import Engine, Request
from ownlm.store import AdapterStore
from ownlm.testing import add_user_adapter, toy_backbone

N_USERS, NEW, PROMPT_LEN = 16, 32, 24


@torch.inference_mode()
def greedy_loop(model, ids, steps: int, **kw) -> torch.Tensor:
    """The same KV-cached greedy decode as ownlm's engine, for any HF/PEFT model."""
    mask = torch.ones_like(ids)
    cache = DynamicCache()
    out = model(
        input_ids=ids,
        attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
        **kw,
    )
    toks = []
    for i in range(steps):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (b, 1)
        toks.append(nxt)
        if i == steps - 1:
            break
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        out = model(
            input_ids=nxt,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kw,
        )
    return torch.cat(toks, 1)


@torch.inference_mode()
def hf_generate(model, ids, **kw) -> torch.Tensor:
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW,
        min_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
        **kw,
    )


def setup(tmp: Path):
    backbone = toy_backbone(
        hidden=256, layers=4, heads=4, intermediate=688, vocab=4096, max_len=384
    )
    store = AdapterStore(tmp / "adapters")
    users = [f"u{i}" for i in range(N_USERS)]
    for i, u in enumerate(users):
        add_user_adapter(backbone, store, u, seed=i, r=8, std=0.05)
    dirs = [store.path(f"user:{u}") for u in users]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, backbone.tokenizer.vocab_size, (N_USERS, PROMPT_LEN), generator=g)

    engine = Engine(copy.deepcopy(backbone.model), backbone.tokenizer, n_slots=N_USERS, max_len=384)
    for slot, d in enumerate(dirs):
        engine.lora.load(slot, d)
    peft = PeftModel.from_pretrained(copy.deepcopy(backbone.model), dirs[0], adapter_name=users[0])
    for u, d in zip(users[1:], dirs[1:], strict=True):
        peft.load_adapter(d, adapter_name=u)
    peft.eval()
    merged = (
        PeftModel.from_pretrained(copy.deepcopy(backbone.model), dirs[0]).merge_and_unload().eval()
    )
    return engine, peft, merged, users, ids


def methods(engine, peft, merged, users, ids):
    def ownlm():
        reqs = [
            Request(ids=row, slot=i, max_tokens=NEW, min_tokens=NEW)
            for i, row in enumerate(ids.tolist())
        ]
        outs = engine.generate(reqs)
        assert all(len(o.tokens) == NEW for o in outs)

    def sequential(gen):
        def run():
            for i, u in enumerate(users):
                peft.set_adapter(u)
                gen(peft, ids[i : i + 1])

        return run

    return {
        "(a) ownlm mixed batch": ownlm,
        "(b) peft mixed, loop": lambda: greedy_loop(peft, ids, NEW, adapter_names=users),
        "(b) peft mixed, generate": lambda: hf_generate(peft, ids, adapter_names=users),
        "(c) sequential, loop": sequential(lambda m, x: greedy_loop(m, x, NEW)),
        "(c) sequential, generate": sequential(hf_generate),
        "(d) merged batch, loop": lambda: greedy_loop(merged, ids, NEW),
        "(d) merged batch, generate": lambda: hf_generate(merged, ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="repetitions; the median is reported")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default, one per core)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fns = methods(*setup(Path(tmp)))
        for fn in fns.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.runs):
            for name, fn in fns.items():  # interleaved, so drift hits every method alike
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    tps = {k: N_USERS * NEW / statistics.median(v) for k, v in times.items()}
    print(
        f"torch threads={torch.get_num_threads()}  users={N_USERS} rank=8 new_tokens={NEW} prompt={PROMPT_LEN} runs={args.runs}"
    )
    print(f"{'method':30s} {'median s':>9s} {'tokens/s':>9s}")
    for k, v in times.items():
        print(f"{k:30s} {statistics.median(v):9.3f} {tps[k]:9.0f}")
    a = tps["(a) ownlm mixed batch"]
    print(
        "reference, (b)-(d) through HF generate: "
        f"mixed/sequential={a / tps['(c) sequential, generate']:.2f} "
        f"mixed/peft={a / tps['(b) peft mixed, generate']:.2f} "
        f"mixed/merged={a / tps['(d) merged batch, generate']:.2f}"
    )
    print("(b)-(d) below use the same KV-cached greedy loop as (a):")
    print(
        f"mixed/sequential={a / tps['(c) sequential, loop']:.2f} "
        f"mixed/peft={a / tps['(b) peft mixed, loop']:.2f} "
        f"mixed/merged={a / tps['(d) merged batch, loop']:.2f}"
    )


if __name__ == "__main__":
    main()
