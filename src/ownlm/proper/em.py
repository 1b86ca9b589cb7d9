"""Stage 2 with `proper.assignment: user` (the default): each train user is in one group,
found by likelihood, and the group's expert is trained on its members.

Flow: k-means over how alike train users answer alike inputs (`assign.answer_vectors`)
-> `proper.em_rounds` rounds of
   M: train every expert on its members' history pairs (one `fit_mixture` pass over all
      pairs, each pair's gate one-hot on its user's group, so a pair trains only its
      group's expert) for `proper.epochs / em_rounds` epochs, continuing the experts;
   E: score every train user's pairs under each expert alone and move each user to the
      group of highest posterior (group size prior x exp(-summed loss)); an emptied
      group takes the worst-explained user of a group of two or more;
-> save the experts and the train users' gates (one vector per user for every layer).

Hard EM (not soft): a user's posterior is exp(-summed loss over all their items), which
is all but one-hot for any user with a few items, so soft responsibilities would train
nearly the same experts at G times the cost; with hard gates every pair trains exactly
one expert and "user U is in group g" is one fact. No balance or mutual-information
term: a user's group is chosen by likelihood, not by a gradient on gates, and the empty
group rule keeps every expert in use.

Validation (dev users, `train.validation`): after every round, each dev user's items
are scored with gates from the user's *other* items (the E-step posterior, leave one
out, as a new user is routed from a history that does not contain the query); early
stopping keeps the best round's experts together with the assignment they had.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ownlm.adapters.mixture import (
    UserRouter,
    install_mixture,
    mixture_layers,
    routing,
    uninstall_mixture,
)
from ownlm.backbone.device import model_device
from ownlm.log import get_logger
from ownlm.proper.assign import (
    answer_vectors,
    centred,
    confident_moves,
    group_prior,
    item_expert_losses,
    kmeans_groups,
    one_router,
    per_user,
    reseed_empty,
    responsibilities,
    standardise,
)
from ownlm.proper.experts import proper_settings, save_groups, targets_for
from ownlm.proper.routing import embed, history_vectors
from ownlm.train.loop import fit_mixture, validate_now
from ownlm.train.validation import early_stopping, pair_validator, summary

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def start_features(run: Run, users, backbone) -> np.ndarray:
    """(U, D) what k-means starts from: each user's answer-agreement row (values in
    [0, 1] for every column, so left unscaled), with `proper.features: outputs+inputs`
    also their standardised history embedding."""
    x = answer_vectors(run.task, users, lambda t: embed(run, t, backbone))
    if proper_settings(run).features == "outputs+inputs":
        x = np.concatenate([x, standardise(history_vectors(run, users, backbone))], axis=1)
    return x


def hard_gates(router: UserRouter, assign: torch.Tensor) -> None:
    """Set the train users' gates one-hot on their groups (logits 0 there, -1e4 else)."""
    with torch.no_grad():
        onehot = torch.nn.functional.one_hot(
            assign.to(router.logits.device), router.logits.shape[1]
        )
        router.logits.copy_(torch.where(onehot > 0, 0.0, -1e4))


def e_step(backbone, state, pairs, assign: torch.Tensor, groups: int):
    """Reassign every train user to the group of highest posterior. Returns (new
    assignment (U,), users moved, re-seeds [(user row, from, to)], the experts' mean
    item loss (G,) over all train pairs: the centre `assign.centred` takes off)."""
    rows = [p[2] for p in pairs]
    item = item_expert_losses(backbone, state, pairs, groups)  # (N, G)
    centre = item.mean(0)
    item = centred(item, centre)
    sums, counts = per_user(item, rows, len(assign))
    post = responsibilities(sums, group_prior(assign, groups))
    new = confident_moves(item, rows, assign, post.argmax(-1).cpu())
    new, reseeded = reseed_empty(new, sums.cpu(), counts.cpu(), groups)
    return new, int((new != assign).sum()), reseeded, centre


def fit_groups_em(run: Run, backbone, users, pairs, vset=None, groups=None, save_if=None) -> dict:
    """Stage 2 by likelihood EM (module doc) with `groups` experts (default
    `proper.groups`); validated on `vset` when given; saved unless `save_if(record)`
    says no (`train.group_choice` saves only the best candidate so far)."""
    cfg, s = run.cfg, replace(proper_settings(run), groups=groups or proper_settings(run).groups)
    base_fp = backbone.fingerprint()
    assign = torch.from_numpy(
        kmeans_groups(start_features(run, users, backbone), s.groups, cfg.seed)
    )
    start = assign.clone()
    backbone.model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    device = model_device(backbone.model)
    router = UserRouter(len(users), s.groups).to(device).requires_grad_(False)
    # one router object in every layer: a user's gates are the same everywhere
    state = install_mixture(
        backbone.model, targets_for(backbone, s), s.groups, s.r, s.alpha, lambda lin: router
    )
    layers = mixture_layers(backbone.model)
    experts = [p for layer in layers.values() for p in (layer.A, layer.B)]
    log.info(
        f"[bold]stage 2[/] {s.groups} experts (r={s.r}), {len(layers)} modules, {len(pairs)} "
        f"pairs; k-means start: group sizes {torch.bincount(assign, minlength=s.groups).tolist()}"
    )
    try:
        hard_gates(router, assign)
        centre = torch.zeros(s.groups, device=device)  # the experts' mean train-item loss
        kept = [*experts, router.logits, centre]  # the experts with their groups and centre
        stopper = None
        if vset:
            current = lambda: router.logits.argmax(-1).cpu()  # noqa: E731
            answers = answer_router(run, users, vset, s.groups, current)
            validate = loo_validator(
                backbone, state, run.task, vset, s.groups, current, centre, answers
            )
            stopper = early_stopping(run, vset, validate, stage2_monitor(run))
        losses, rounds = em_rounds(run, s, backbone, state, pairs, kept, router, stopper)
        if stopper is not None:
            stopper.restore(kept)
        assign = router.logits.argmax(-1).cpu()
        tensors = {
            "user_gates": torch.nn.functional.one_hot(assign, s.groups).float().contiguous(),
            "group_prior": group_prior(assign, s.groups),
            "expert_centre": centre.detach().cpu().contiguous(),
        }
        meta = em_meta(s, backbone, layers, users, base_fp)
        record = summary(stopper, vset)
        if save_if is None or save_if(record):
            save_groups(run, layers, tensors, meta, base_fp, losses, record)
    finally:
        uninstall_mixture(backbone.model)
    return em_stats(pairs, assign, start, losses, rounds, s.groups, record)


def em_rounds(run: Run, s, backbone, state, pairs, kept, router, stopper):
    """The M/E rounds of settings `s`; `kept`: the experts' tensors, then the assignment (`router`'s
    one-hot logits) and the centre, what validation keeps at its best. Returns (step
    losses of every M-step, one record per round: users moved, re-seeds)."""
    cfg = run.cfg
    experts, centre = kept[:-2], kept[-1]
    losses: list[float] = []
    rounds = []
    if stopper is not None:
        validate_now(stopper, backbone.model, kept, 0, 0.0, losses)
    for r in range(1, s.em_rounds + 1):
        losses += fit_mixture(
            backbone,
            state,
            pairs,
            [{"params": experts, "lr": s.lr}],
            s.epochs / s.em_rounds,
            s.batch_size,
            cfg.seed + r - 1,
            None,
            user_ids=lambda rows: rows,
        )
        assign = router.logits.argmax(-1).cpu()
        new, moved, reseeded, mean = e_step(backbone, state, pairs, assign, s.groups)
        hard_gates(router, new)
        centre.copy_(mean)
        rounds.append({"round": r, "moved": moved, "reseeded": reseeded})
        log.info(
            f"stage 2 round {r}/{s.em_rounds}: {moved} users changed group; sizes "
            f"{torch.bincount(new, minlength=s.groups).tolist()}"
            + (f"; re-seeded empty groups from users {reseeded}" if reseeded else "")
        )
        epoch = s.epochs * r / s.em_rounds
        if stopper is not None and validate_now(
            stopper, backbone.model, kept, len(losses), epoch, losses
        ):
            break
    return losses, rounds


def stage2_monitor(run: Run) -> str:
    """What stage 2's early stopping watches (`proper.monitor`): 'auto' is the dev
    metric for label tasks, else `validation.monitor`. Why: on demo-tags (MiniLM) the
    experts trained 8 epochs carry the group habits (new users routed by their groups'
    answers: 0.257 / 0.400 / 0.743 accuracy at 2 / 5 / all items, base 0.114 / 0.171 /
    0.457), yet the dev loss rose after epoch 4 (1.60 -> 2.09: confident experts pay
    more for a wrong label) while the dev accuracy rose, so watching the loss kept
    experts that had not learned the groups."""
    how = proper_settings(run).monitor
    if how == "auto":
        return "metric" if run.task.labels else run.cfg.validation.monitor
    return how


def answer_router(run: Run, users, vset, groups: int, assignment):
    """`loss()` -> (N, G) for `loo_validator` when new users are routed by their groups'
    answers (`proper.route_new`, label tasks): each dev pair's user's *other* history
    items, minus log-likelihood under `GroupAnswers` fitted on the train `users` as
    `assignment()` groups them, so that validation routes dev users as serving routes
    new ones (routed by the experts' likelihood instead, demo-tags' dev users were sent
    to wrong experts, and validation kept untrained experts). None: route by the experts.
    The dev pairs are `stage2_pairs` of `dev_users(run)`, sampled by `sample`: the same
    sample of (user row, item index) names each pair's item."""
    from ownlm.proper.assign import GroupAnswers
    from ownlm.proper.experts import route_new
    from ownlm.train.validation import dev_users, sample

    if route_new(run) != "answers":
        return None
    dev = dev_users(run)
    refs = [(row, j) for row, u in enumerate(dev) for j in range(len(u.history))]
    refs = sample(refs, run.cfg.validation.max_items, run.cfg.seed)
    same = len(refs) == len(vset.pairs)
    if not same or any(r != p[2] for (r, _), p in zip(refs, vset.pairs, strict=True)):
        log.warning("stage 2 validation: dev pairs not as expected; routed by the experts")
        return None

    def loss() -> torch.Tensor:
        groups_of = dict(zip([u.user_id for u in users], assignment().tolist(), strict=True))
        model = GroupAnswers(run.task, users, groups_of, groups)
        per_user_ll = [model.item_log_likelihood(u.history) for u in dev]  # (n_u, G) each
        out = [per_user_ll[r].sum(0) - per_user_ll[r][j] for r, j in refs]  # leave one out
        return -torch.as_tensor(np.stack(out), dtype=torch.float32)

    return loss


def loo_validator(backbone, state, task, vset, groups: int, assignment, centre, answers=None):
    """`validate()` on the dev pairs, each routed with the posterior of its user's other
    validation items (leave one out; the prior alone for a user's only item), the train
    groups' sizes (`assignment()`) as prior: by their groups' answers when `answers`
    (`answer_router`) is given, else by their losses under each expert less the
    experts' train `centre`."""
    indexed = replace(vset, pairs=[(*p[:3], i) for i, p in enumerate(vset.pairs)])
    rows = [p[2] for p in vset.pairs]

    def validate() -> dict:
        prior = group_prior(assignment(), groups)
        if answers is not None:
            gates = responsibilities(answers(), prior)  # (N, G)
        else:
            item = centred(item_expert_losses(backbone, state, vset.pairs, groups), centre)
            sums, _ = per_user(item, rows, max(rows) + 1)
            gates = responsibilities(sums[rows] - item, prior)  # (N, G)
        device = next(iter(mixture_layers(backbone.model).values())).A.device
        gates = gates.to(device)
        per_item = UserRouter(len(rows), groups).to(device).requires_grad_(False)
        with torch.no_grad():
            per_item.logits.copy_(gates.clamp_min(1e-30).log())

        @contextmanager
        def wrap(chunk):
            ids = torch.tensor([c[3] for c in chunk], device=device)
            with one_router(backbone.model, per_item), routing(state, user_ids=ids):
                yield

        return pair_validator(backbone, backbone.model, task, indexed, wrap)()

    return validate


def em_meta(s, backbone, layers, users, base_fp: str) -> dict:
    """router.json of a 'user' assignment: the mixture's shape, the train users (rows of
    user_gates), the base it stands on."""
    return {
        **{k: getattr(s, k) for k in ("groups", "r", "alpha", "em_rounds", "features")},
        "assignment": "user",
        "user_dim": 0,
        "top_k": 0,
        "targets": targets_for(backbone, s),
        "layers": list(layers),
        "users": [u.user_id for u in users],
        "base_fingerprint": base_fp,
    }


def em_stats(pairs, assign, start, losses, rounds, groups: int, record) -> dict:
    """What `train_groups` returns and logs: shares of users and pairs per group, how
    far EM moved from the k-means start."""
    from sklearn.metrics import adjusted_rand_score

    users = torch.bincount(assign, minlength=groups).float() / len(assign)
    per_pair = torch.bincount(assign[[p[2] for p in pairs]], minlength=groups).float()
    stats = {
        "pairs": len(pairs),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "tokens": [round(x, 4) for x in (per_pair / per_pair.sum()).tolist()],
        "users": [round(x, 4) for x in users.tolist()],
        "user_top_gate": 1.0,
        "rounds": rounds,
        "ari_vs_start": round(float(adjusted_rand_score(start.numpy(), assign.numpy())), 4),
        "assignment": assign.tolist(),
    }
    log.info(
        f"stage 2 done: loss {losses[0]:.3f} -> {losses[-1]:.3f}; users per group "
        f"{stats['users']}; agreement with the k-means start (ARI) {stats['ari_vs_start']}"
    )
    return {**stats, "validation": record}
