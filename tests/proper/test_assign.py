"""PROPER's groups by likelihood (`ownlm.proper.assign`): the E-step's pieces on
hand-made numbers, the k-means start on hand-made users, and a new user routed by the
likelihood of a few items under each expert."""

import numpy as np
import torch

from ownlm.data.records import Item, User
from ownlm.proper.assign import (
    answer_vectors,
    centred,
    confident_moves,
    group_prior,
    kmeans_groups,
    reseed_empty,
    responsibilities,
    user_gates_from_history,
)


def test_responsibilities_are_prior_times_likelihood_normalised():
    loss = torch.tensor([[1.0, 3.0, 2.0], [4.0, 4.0, 4.0]])  # summed loss, (U=2, G=3)
    prior = torch.tensor([0.5, 0.25, 0.25])
    post = responsibilities(loss, prior)
    want = prior * torch.exp(-loss)
    torch.testing.assert_close(post, want / want.sum(-1, keepdim=True))
    torch.testing.assert_close(post[1], prior)  # equal likelihoods: the prior decides
    assert post[0].argmax() == 0
    torch.testing.assert_close(responsibilities(torch.zeros(1, 3), prior)[0], prior)


def test_group_prior_is_smoothed_sizes_and_centring_takes_each_experts_mean_off():
    torch.testing.assert_close(
        group_prior(torch.tensor([0, 0, 1]), 3), torch.tensor([0.5, 1 / 3, 1 / 6])
    )
    item = torch.tensor([[1.0, 5.0], [3.0, 7.0]])
    torch.testing.assert_close(
        centred(item, item.mean(0)), torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    )


def test_empty_group_is_reseeded_from_the_worst_explained_user_of_a_shared_group():
    assign = torch.tensor([0, 0, 0, 1])  # group 2 is empty
    # per-user summed loss under each of 3 experts, and each user's item count
    loss = torch.tensor([[1.0, 9, 9], [5.0, 9, 9], [12.0, 9, 9], [9.0, 1, 9]])
    items = torch.tensor([1, 1, 4, 1])
    new, moved = reseed_empty(assign, loss, items, 3)
    # worst by mean loss per item: user 1 (5 / 1), not user 2 (12 in all, 3 per item)
    assert moved == [(1, 0, 2)] and new.tolist() == [0, 2, 0, 1]


def test_reseed_takes_the_highest_mean_loss_and_never_empties_another_group():
    assign = torch.tensor([0, 0, 0, 1])
    loss = torch.tensor([[1.0, 9, 9], [2.0, 9, 9], [12.0, 9, 9], [9.0, 1, 9]])
    new, moved = reseed_empty(assign, loss, torch.tensor([1, 1, 1, 1]), 3)
    assert moved == [(2, 0, 2)] and new.tolist() == [0, 0, 2, 1]
    lone = torch.tensor([0, 1])  # one user per group: nobody can move, group 2 stays empty
    same, none = reseed_empty(lone, torch.ones(2, 3), torch.ones(2), 3)
    assert none == [] and same.tolist() == [0, 1]


def test_users_move_only_when_their_items_agree():
    # items (rows) of user 0 (first 4) and user 1 (last 4), loss under experts 0 and 1
    item = torch.tensor(
        [
            [2.0, 1.0],
            [2.1, 1.0],
            [1.9, 1.1],
            [2.0, 0.9],
            [1.0, 0.0],
            [1.0, 2.1],
            [1.0, 0.2],
            [1.0, 1.8],
        ]
    )
    rows = [0, 0, 0, 0, 1, 1, 1, 1]
    assign, proposal = torch.tensor([0, 0]), torch.tensor([1, 1])
    # user 0: every item ~1 nat better on expert 1 -> moves; user 1: mean gain -0.03, noisy
    assert confident_moves(item, rows, assign, proposal).tolist() == [1, 0]


def _tag_user(uid: str, mapping: dict[str, str], cues: list[str]) -> User:
    items = [Item(f"{uid}-{i}", {"description": c, "tag": mapping[c]}) for i, c in enumerate(cues)]
    return User(uid, items)


CUES = ["space", "magic", "heist", "love"]


def _group_maps() -> list[dict[str, str]]:
    """Three groups' cue -> tag habits over the same four tags, permuted."""
    return [
        dict(zip(CUES, p, strict=True))
        for p in (
            ["sci-fi", "fantasy", "action", "romance"],
            ["romance", "action", "fantasy", "sci-fi"],
            ["action", "sci-fi", "romance", "fantasy"],
        )
    ]


def test_kmeans_start_finds_groups_that_share_labels_but_map_inputs_differently():
    from ownlm.data.tasks import get_task

    task = get_task("demo-tags")
    cues, maps = CUES, _group_maps()
    rng = np.random.default_rng(0)
    users = [
        _tag_user(f"u{g}{k}", maps[g], list(rng.choice(cues, 8)))
        for g in range(3)
        for k in range(4)
    ]
    one_hot = {c: np.eye(4)[i] for i, c in enumerate(cues)}
    embed = lambda texts: np.stack([one_hot[t] for t in texts])  # noqa: E731
    x = answer_vectors(task, users, embed)
    hist = np.stack(
        [[sum(it.fields["tag"] == t for it in u.history) for t in task.labels] for u in users]
    )
    from sklearn.metrics import adjusted_rand_score

    planted = [g for g in range(3) for _ in range(4)]
    assert adjusted_rand_score(planted, kmeans_groups(x, 3, seed=0)) == 1.0
    assert adjusted_rand_score(planted, kmeans_groups(hist.astype(float), 3, seed=0)) < 0.5
    assert kmeans_groups(x[:2], 3, seed=0).tolist() in ([0, 1], [1, 0])  # fewer users than G


def test_a_new_user_with_three_items_from_group_g_is_routed_to_g():
    """Three experts that answer differently; a user whose 3 answers are those expert g
    explains best (by a margin over the others) is routed to g, from the prior alone."""
    from ownlm.adapters.mixture import UserRouter, install_mixture, mixture_layers
    from ownlm.proper.assign import item_expert_losses
    from ownlm.testing import WORDS, toy_backbone

    backbone = toy_backbone(hidden=32, layers=1, heads=2, intermediate=64)
    torch.manual_seed(0)
    targets = ("gate_proj", "up_proj", "down_proj")
    state = install_mixture(backbone.model, targets, 3, 4, 8.0, lambda lin: UserRouter(1, 3))
    for layer in mixture_layers(backbone.model).values():
        with torch.no_grad():
            layer.B.normal_(std=4.0)
    prompts = ["the user likes movies", "a good book answer", "music news science"]
    candidates = [(p, w) for p in prompts for w in WORDS]
    loss = item_expert_losses(backbone, state, candidates, 3).view(len(prompts), len(WORDS), 3)
    prior = torch.full((3,), 1 / 3)
    for g in range(3):
        others = torch.cat([loss[..., :g], loss[..., g + 1 :]], -1).min(-1).values
        best = (others - loss[..., g]).argmax(-1)  # (3,) per prompt, g's answer
        pairs = [(p, WORDS[int(w)]) for p, w in zip(prompts, best, strict=True)]
        gates = user_gates_from_history(backbone, state, pairs, 3, prior)
        assert int(gates.argmax()) == g, (g, gates)
        assert abs(float(gates.sum()) - 1) < 1e-5
    assert torch.equal(user_gates_from_history(backbone, state, [], 3, prior), prior)


def test_a_new_user_with_three_items_is_routed_by_their_groups_answers():
    """`route_new: answers` (label tasks): groups that tag the same cues differently; a
    new user's 3 items (one of them tagged off-habit) go to the group that tags alike,
    with a posterior that sums to 1; no items gives the prior; the index leaves out users
    stage 2 did not place (a forgotten user)."""
    from ownlm.data.tasks import get_task
    from ownlm.proper.assign import GroupAnswers, answer_gates

    task = get_task("demo-tags")
    maps = _group_maps()
    users = [_tag_user(f"u{g}{k}", maps[g], CUES * 2) for g in range(3) for k in range(3)]
    groups_of = {u.user_id: g for g, u in zip([0, 0, 0, 1, 1, 1, 2, 2, 2], users, strict=True)}
    answers = GroupAnswers(task, users, groups_of, 3)
    assert answers._models is None  # fitted on first use, not when the group model loads
    prior = torch.full((3,), 1 / 3)
    for g in range(3):
        new = _tag_user("new", maps[g], ["space", "heist", "love"]).history
        new[2].fields["tag"] = maps[(g + 1) % 3]["love"]  # one item off the group's habit
        gates = answer_gates(answers, new, prior)
        assert int(gates.argmax()) == g and gates[g] > 0.8, (g, gates)
        assert abs(float(gates.sum()) - 1) < 1e-5
    assert torch.equal(answer_gates(answers, [], prior), prior)
    # a user stage 2 no longer places is not in the index: group 2 left empty scores uniform
    without = GroupAnswers(task, users, {u: g for u, g in groups_of.items() if g < 2}, 3)
    ll = without.log_likelihood(_tag_user("new", maps[2], ["space"]).history)
    assert ll[2] == np.log(GroupAnswers.EPS / len(task.labels))
