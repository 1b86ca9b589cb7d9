"""Export a user's model as one vanilla PEFT LoRA directory, whatever method trained it,
with the command that serves it elsewhere (vLLM's multi-LoRA server)."""

from __future__ import annotations

import json
from pathlib import Path

from ownlm.adapters.export import INPUT_ROUTER_MSG, vllm_hint
from ownlm.errors import ConfigError
from ownlm.methods import oppu, proper

EXPORTABLE = ("proper-user", "oppu", "peft")


def export_user(run, user_id: str, out: Path, variant: str = "proper-user") -> tuple[Path, str]:
    """(the exported directory, how to serve it with vLLM). `proper-user` flattens the
    group experts and the user's residual into one LoRA; `oppu` / `peft` copy the user's
    own LoRA. `proper-input` cannot be flattened: its gates change with every token."""
    if variant in oppu.VARIANTS:
        path = oppu.export_user(run, user_id, out, variant)
    elif variant == "proper-user":
        path = proper.export_user(run, user_id, out)
    elif variant == "proper-input":
        raise ConfigError(INPUT_ROUTER_MSG)
    else:
        raise ConfigError(f"unknown variant {variant!r}; choose {', '.join(EXPORTABLE)}")
    base = run.base_dir.resolve()
    kind = json.loads((base / "ownlm_base.json").read_text())["kind"]  # as `load_base` reads it
    return Path(path), vllm_hint(base, Path(path).resolve(), f"user-{user_id}", kind)
