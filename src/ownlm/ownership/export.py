"""Export a user's model as one vanilla PEFT LoRA directory, whatever method trained it,
with how to pair it with its base: the PEFT line and vLLM's multi-LoRA server line. An
OPPU user of another PEFT method (`user.method`: IA3, prompt tuning) is exported as its
PEFT directory, with the PEFT line and the words that vLLM cannot serve it.

The exported `adapter_config.json` names the run's base by absolute path, so
`AutoPeftModelForCausalLM.from_pretrained(export_dir)` works from any directory. A base
that keeps stage 1 unmerged (bfloat16 or 4-bit) has it stacked into the exported LoRA.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ownlm import proper
from ownlm.adapters.export import (
    INPUT_ROUTER_MSG,
    peft_hint,
    point_to_base,
    stack_under,
    vllm_hint,
    vllm_problem,
)
from ownlm.adapters.methods import NAMES, adapter_method, how_served
from ownlm.backbone.checksum import read_base_meta
from ownlm.backbone.prompt_format import ANSWER_SEP, HOW_TO_PROMPT
from ownlm.backbone.unmerged import UNMERGED_DIR
from ownlm.errors import ConfigError, NotFoundError
from ownlm.oppu import model as oppu
from ownlm.paths import RunPaths
from ownlm.variants import EXPORT_ORDER, VARIANTS, names

if TYPE_CHECKING:
    from ownlm.run import Run

BUNDLED = names(bundled=True)  # the variants a user may hold and bundle
EXPORTABLE = EXPORT_ORDER  # in the order `--variant auto` tries them
AUTO = "auto"  # the first of EXPORTABLE the user has an adapter for


def stored_variants(run: Run, user_id: str) -> list[str]:
    """The variants (`oppu`, `peft`, `proper-user`, `proper-input`) holding the user."""
    return [v for v in BUNDLED if run.store(v).exists(f"user:{user_id}")]


def pick_variant(run: Run, user_id: str, variant: str) -> str:
    """`variant`, or with "auto" the first exportable one the user has; a ConfigError or
    NotFoundError that names the variants the user does have and the option to pass."""
    have = stored_variants(run, user_id)
    if variant == AUTO:
        if not have:
            raise NotFoundError(
                f"user {user_id!r} has no adapter in run {run.dir}; train one with `ownlm "
                f"train -c {RunPaths(run.dir).config} --stages users --variants oppu`"
            )
        usable = [v for v in EXPORTABLE if v in have]
        if not usable:  # only proper-input: cannot be flattened
            raise ConfigError(f"user {user_id!r}: " + INPUT_ROUTER_MSG)
        return usable[0]
    if variant not in BUNDLED:
        raise ConfigError(f"unknown variant {variant!r}; choose {AUTO}, {', '.join(EXPORTABLE)}")
    if variant not in have and have:
        raise ConfigError(
            f"user {user_id!r} has no {variant} adapter in run {run.dir}; they have "
            f"{', '.join(have)}: pass --variant {have[0]} (or --variant {AUTO})"
        )
    return variant


def export_user(run: Run, user_id: str, out: Path, variant: str = AUTO) -> tuple[Path, str]:
    """(the exported directory, how to pair it with its base). `proper-user` flattens the
    group experts and the user's residual into one LoRA; `oppu` / `peft` copy the user's
    own LoRA. `proper-input` cannot be flattened: its gates change with every token."""
    variant = pick_variant(run, user_id, variant)
    v = VARIANTS[variant]
    if not v.exportable:
        raise ConfigError(INPUT_ROUTER_MSG)
    path = (proper if v.is_proper else oppu).export_adapter(run, user_id, out, variant)
    base, path = run.base_dir.resolve(), Path(path).resolve()
    point_to_base(path, base)
    meta = read_base_meta(base)  # as `load_base` reads it
    carry_unmerged(base, path, meta.get("unmerged") or [])
    prompt = record_prompt_format(path, meta)
    return path, pairing(base, path, user_id, meta["kind"], variant) + prompt


PROMPT_FILE = "ownlm_prompt.json"  # beside the exported adapter: how it was prompted


def record_prompt_format(adapter: Path, meta: dict) -> str:
    """Write the prompt format the adapter was trained with (the base's, recorded when
    it was written) beside it and into its README, so another engine prompts it as
    ownlm did; returns the line the export prints ("" for an encoder's labels)."""
    if meta["kind"] != "causal":
        return ""
    name = meta.get("prompt_format", "bare")  # a base of before the setting: no specials
    record = {
        "prompt_format": name,
        "answer_sep": None if name == "chat" else ANSWER_SEP,
        "context_length": meta.get("max_len"),
        "how": HOW_TO_PROMPT[name],
    }
    (adapter / PROMPT_FILE).write_text(json.dumps(record, indent=2))
    card = adapter / "README.md"
    text = card.read_text() if card.exists() else ""
    section = f"\n## Prompt format (ownlm)\n\nPrompted as `{name}`: {HOW_TO_PROMPT[name]}.\n"
    card.write_text(text + section)
    return f"\nprompt it as it was trained ({PROMPT_FILE}): {name}: {HOW_TO_PROMPT[name]}"


def carry_unmerged(base: Path, adapter: Path, names: list[str]) -> None:
    """A base that keeps stage 1 unmerged (bfloat16 or 4-bit: `backbone.unmerged`) is
    bare without it: the exported LoRA carries those LoRAs stacked under the user's
    (`adapters.export.stack_under`), so that PEFT or vLLM on the base answers as ownlm
    served it. Another PEFT method cannot carry them: a ConfigError saying so."""
    if not names:
        return
    method = adapter_method(adapter)
    if method != "lora":
        shutil.rmtree(adapter)
        raise ConfigError(
            f"this run's base keeps stage 1 unmerged beside its bfloat16 or 4-bit weights "
            f"({base / UNMERGED_DIR}), which a {NAMES.get(method, method)} adapter cannot "
            "carry; export a LoRA user, or train the run in float32 to merge stage 1"
        )
    stack_under(adapter, [base / UNMERGED_DIR / name for name in names])


def pairing(base: Path, adapter: Path, user_id: str, kind: str, variant: str) -> str:
    """What the export prints: which variant, the base, the PEFT and the vLLM lines. An
    adapter of another PEFT method than LoRA (`user.method`) gets, instead of vLLM's
    line, what serves it: vLLM applies LoRA only; so does a base vLLM cannot apply a
    LoRA to (GPT-2), with the reason."""
    method = adapter_method(adapter)
    what = variant if method == "lora" else f"{variant}, {NAMES.get(method, method)}"
    if method != "lora":
        serve = f"vLLM cannot serve it: {how_served(method)}"
    elif problem := vllm_problem(base, adapter, kind):
        serve = f"vLLM cannot serve it: {problem}"
    else:
        serve = f"or serve with vLLM: {vllm_hint(base, adapter, f'user-{user_id}', kind)}"
    return "\n".join(
        [
            f"exported user {user_id} ({what}) to {adapter}",
            f"its base (the run's merged base; the adapter is only valid on it): {base}",
            f"load with PEFT: {peft_hint(base, adapter, kind)}",
            serve,
        ]
    )
