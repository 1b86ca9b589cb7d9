"""Does the tiny backbone learn to copy its prompt? Copy probe and dev loss, with and
without copy sequences in pre-training and the copy phase after it (#24).

For each demo (demo-headlines with configs/demo-headlines.yaml's tiny settings, and
demo-tags with configs/demo-tags.yaml on `backbone: tiny`), each `tiny.copy_share` and
each `tiny.copy_steps`, the tiny Llama is pre-trained from scratch as a run does
(`train.pretrain.train_tiny`: the run's corpus, validated on its dev users' text,
early-stopped on the dev loss, then the copy phase) and the record is read back: the
dev LM loss of the kept model, the copy probe (exact spans of 5-15 dev tokens repeated
after the separator, and the share of tokens right) before training and of the kept
model (after the copy phase when there is one), the steps taken (both phases) and the
seconds.

    python bench/copy_probe.py [--shares 0 0.3] [--copy-steps 0 300]
                               [--demos demo-headlines demo-tags]
                               [--set tiny.epochs=6 ...] [--threads 1]

Prints one markdown table (the ones in docs/validation.md). The copy phase's recipe
against none: `--shares 0 --copy-steps 0 450`; `--set tiny.copy_random=0.4` adds random
repeats to the phase.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from ownlm.config import load_config  # noqa: E402
from ownlm.run import Run  # noqa: E402
from ownlm.train.pretrain import train_tiny  # noqa: E402
from ownlm.train.validation import dev_corpus, dev_users  # noqa: E402

CONFIGS = {
    "demo-headlines": ("configs/demo-headlines.yaml", []),
    "demo-tags": ("configs/demo-tags.yaml", ["backbone=tiny"]),
}


def measure(demo: str, share: float, copy_steps: int, extra: list[str]) -> dict:
    """Pre-train the demo's tiny model with `share` copy sequences and `copy_steps` steps
    of copy phase; its figures."""
    path, keys = CONFIGS[demo]
    settings = [f"tiny.copy_share={share}", f"tiny.copy_steps={copy_steps}"]
    cfg = load_config(path, [*keys, *settings, *extra])
    run = Run(cfg, write=False)
    dev = dev_corpus(run, dev_users(run))
    start = time.perf_counter()
    _, _, meta = train_tiny(run.corpus(), cfg.tiny, "cpu", dev, cfg.validation.patience)
    seconds = time.perf_counter() - start
    v, p = meta["validation"], meta["copy_probe"]
    kept = v["records"][v["kept"]] if v else {}
    return {
        "demo": demo,
        "copy_share": share,
        "copy_steps": copy_steps,
        "dev_loss": kept.get("val_loss"),
        "kept_epoch": kept.get("epoch"),
        "epochs_run": max(r["epoch"] for r in v["records"]) if v else None,
        "steps": meta["steps"],
        "exact_before": p["before"]["copy_exact"],
        "exact_after": p["after"]["copy_exact"],
        "tokens_after": p["after"]["copy_tokens"],
        "seconds": seconds,
        "validation_seconds": v["seconds"] if v else 0.0,
    }


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| demo | copy_share | copy_steps | dev loss (kept) | kept / run epochs | steps | "
        "copy exact before → after | copy tokens after | seconds (validation) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['demo']} | {r['copy_share']:g} | {r['copy_steps']} | {r['dev_loss']:.3f} | "
            f"{r['kept_epoch']:g} / {r['epochs_run']:g} | {r['steps']} | "
            f"{r['exact_before']:.3f} → {r['exact_after']:.3f} | {r['tokens_after']:.3f} | "
            f"{r['seconds']:.0f} ({r['validation_seconds']:.0f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, measure every (demo, share, copy steps), print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--copy-steps", type=int, nargs="+", default=[0], help="tiny.copy_steps")
    ap.add_argument("--demos", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--set", dest="extra", nargs="*", default=[], help="more key=value")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for demo in args.demos:
        for share in args.shares:
            for copy_steps in args.copy_steps:
                rows.append(measure(demo, share, copy_steps, args.extra))
                print(rows[-1], flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
