"""OPPU's control for PROPER (docs/proper.md, "A fair control"): the extra pass over the
train users that PROPER's stage 2 makes, with no groups.

PROPER trains stage 1 and then stage 2 on the same train users; OPPU trains stage 1
only, so a PROPER win mixes "more training" with "groups". The control gives OPPU the
same second pass: stage 2's pairs (`group_stage.stage2_pairs`), learning rate, epochs, batch
size, seed and so batch plan, on the modules that carry the experts, with one plain LoRA
of rank G*r (as many trainable weights as the G experts of rank r) and the LM loss only:
no experts, no routers, no user embeddings, no routing terms. It is validated as stage 2
is (`train.validation`: the same dev users' pairs, patience and monitor; it keeps its
best epoch), so both get the same budget and the same rule for what they keep.

Flow: load run.base() -> inject the control LoRA -> train it on stage 2's pairs ->
store it (`run.store("oppu-control")`, name "control") -> merge (kept unmerged on a
bfloat16 or 4-bit base: `backbone.unmerged`) -> write
<run>/base-control/ whole or not at all, with its fingerprint, checksums and the
stage-1 base it stands on -> record in run.json (`train.resume`: a resume keeps it while
its inputs and stored results hold). The "oppu-control" users are then trained on that
base exactly as OPPU's are on base/ (`pipeline.stages.train_control_users`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from ownlm.adapters.lora import inject
from ownlm.adapters.mixture import matching_linears
from ownlm.config import LoraSettings
from ownlm.log import get_logger
from ownlm.paths import CONTROL_BASE
from ownlm.proper.em import stage2_monitor
from ownlm.proper.experts import ROUTER, proper_settings, require_groups, targets_for
from ownlm.proper.group_stage import stage2_pairs
from ownlm.store import Manifest
from ownlm.train.loop import fit
from ownlm.train.population import write_merged
from ownlm.train.stage import StagePlan, run_stage, validated_inputs
from ownlm.train.validation import (
    dev_users,
    early_stopping,
    pair_validator,
    summary,
    tuning_hints,
)
from ownlm.variants import CONTROL

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)
NAME = "control"  # the control LoRA's name in run.store("oppu-control")


def control_lora(run: Run, backbone) -> LoraSettings:
    """Stage 2's experts side by side as one LoRA: rank G*r on exactly the modules the
    mixture wraps, stage 2's lr, epochs and batch size, no dropout (the experts have
    none). alpha stays the experts' alpha, so the scaling is alpha/(G*r): the control is
    stage 2's mixture with every gate fixed at 1/G (B_cat A_cat = sum_g B_g A_g)."""
    s = proper_settings(run)
    modules = [name for name, _ in matching_linears(backbone.model, targets_for(backbone, s))]
    return LoraSettings(
        r=stored_groups(run) * s.r,
        alpha=s.alpha,
        dropout=0.0,
        targets=modules,
        lr=s.lr,
        epochs=s.epochs,
        batch_size=s.batch_size,
    )


def stored_groups(run: Run) -> int:
    """Stage 2's G as stored: with `proper.groups_choices` the chosen one, which may not
    be `proper.groups` (`train.group_choice`)."""
    s = proper_settings(run)
    if not s.groups_choices:
        return s.groups
    meta = require_groups(run).path(ROUTER) / "router.json"
    return int(json.loads(meta.read_text())["groups"])


def stored_identity(run: Run) -> list:
    """What the control leaves behind: its base's fingerprint, its LoRA's checksums."""
    return [run.base_fingerprint(CONTROL_BASE), run.store(CONTROL).manifest(NAME).sha256]


def train_control(run: Run, backbone=None) -> dict:
    """Train the control pass on stage 1's base and merge it into base-control/, or keep
    the stored one if it still holds. Returns statistics (pairs, steps, trainable)."""
    backbone = backbone or run.base()
    base_fp = backbone.fingerprint()
    users = [u for u in run.split.train if u.history]  # stage 2's users, in its order
    pairs = stage2_pairs(run, users)
    lora = control_lora(run, backbone)
    vset, inputs = validated_inputs(
        run,
        stage2_pairs(run, dev_users(run)),  # stage 2's dev pairs
        base=base_fp,
        users=[[u.user_id, u.history_digest()] for u in users],
        pairs=pairs,
        lora=asdict(lora),
        seed=run.cfg.seed,
    )
    plan = StagePlan(
        NAME,
        "control",
        pairs,
        vset,
        inputs,
        lambda: stored_identity(run),
        f"[bold]control[/] kept: trained from the same base, {len(users)} users and "
        f"{len(pairs)} pairs ({CONTROL_BASE}/ untouched)",
        tuning_hints("proper", lora.epochs, lora.lr),  # its budget is stage 2's
    )

    def fit() -> dict:
        stats, model = fit_control(run, backbone, pairs, lora, vset)
        write_control_base(run, backbone, model, parent=base_fp)
        return stats

    return run_stage(run, plan, fit)


def fit_control(run: Run, backbone, pairs, lora: LoraSettings, vset=None) -> tuple[dict, object]:
    """Train the control LoRA on stage 2's (prompt, target, user row) pairs (the row is
    unused: nothing is routed), validated on `vset` when given, and store it; returns
    (statistics, the PEFT model) for `write_control_base` to fold in."""
    # seeded as stage 2 seeds its experts; no label head: stage 2 leaves it frozen
    model = inject(backbone, lora, run.cfg.seed, head=False)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    log.info(
        f"[bold]control[/] one LoRA (r={lora.r}, {trainable} weights, "
        f"{len(lora.targets)} modules) on stage 2's {len(pairs)} pairs, no groups"
    )
    stopper = None
    if vset:  # stage 2's rule: validate every epoch on its dev pairs, keep the best
        by_user = proper_settings(run).assignment == "user"
        watch = stage2_monitor(run) if by_user else None  # as stage 2
        stopper = early_stopping(run, vset, pair_validator(backbone, model, run.task, vset), watch)
    losses = fit(
        lambda batch: backbone.loss(model, [b[0] for b in batch], [b[1] for b in batch]),
        pairs,
        [{"params": params, "lr": lora.lr}],
        epochs=lora.epochs,
        batch_size=lora.batch_size,
        seed=run.cfg.seed,
        module=model,
        desc=None if len(pairs) < 200 else "control",
        early_stopping=stopper,
    )
    stats = {"pairs": len(pairs), "steps": len(losses), "trainable": trainable}
    stats |= {"loss_first": losses[0], "loss_last": losses[-1]}
    record = summary(stopper, vset)
    run.store(CONTROL).save(
        NAME,
        model.save_pretrained,
        Manifest(NAME, "control", run.task.name, backbone.fingerprint(), extra=stats),
    )
    log.info(f"control done: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps")
    return {**stats, "validation": record}, model


def write_control_base(run: Run, backbone, model, parent: str) -> None:
    """Fold the control LoRA (`model`) in and save the control base to
    <run>/base-control whole or not at all, recording the stage-1 base it stands on
    (`run.control.control_problem` checks it)."""
    lora = (model, "control")
    write_merged(run, backbone, run.dir / CONTROL_BASE, lora, parent_fingerprint=parent)
