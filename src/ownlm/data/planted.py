"""Planted groups in data, and how well a method's groups agree with them.

Data with known groups (both demos; any dataset whose history items carry a `group`
field, e.g. a generic JSONL file) lets PROPER's groups view (Zhang et al. 2025: users
who share preferences share an expert) say whether the groups it found are the planted
ones. Agreement is the adjusted Rand index (Hubert & Arabie 1985): 1 for the same
partition under any renaming of the groups, about 0 for a random one.
"""

from __future__ import annotations

from collections.abc import Iterable

from ownlm.data.records import Dataset, User

GROUP_FIELD = "group"  # ground-truth item field; no task template shows it


def planted_groups(users: Dataset | Iterable[User]) -> dict[str, str] | None:
    """user id -> planted group, for each user whose every history item carries the same
    `group` field. Users without history, or whose items lack the field or disagree, are
    left out; None when no user has one (the data carries no groups)."""
    found: dict[str, str] = {}
    for user in users.users if isinstance(users, Dataset) else users:
        groups = {it.fields.get(GROUP_FIELD) for it in user.history}
        if len(groups) == 1 and None not in groups:
            found[user.user_id] = str(groups.pop())
    return found or None


def group_agreement(assigned: dict[str, int | str], planted: dict[str, str]) -> dict:
    """Agreement of `assigned` (user id -> a method's group) with `planted` (user id ->
    true group) over the users in both: `ari` (adjusted Rand index; None without any
    common user), `users` (their number), and the contingency table `counts[i][j]`, the
    number of users assigned `rows[i]` whose planted group is `columns[j]`."""
    from sklearn.metrics import adjusted_rand_score  # heavy import, where work starts

    common = sorted(set(assigned) & set(planted))
    got = [assigned[u] for u in common]
    true = [planted[u] for u in common]
    rows = sorted(set(got), key=lambda g: (str(type(g)), g))
    columns = sorted(set(true))
    counts = [[0] * len(columns) for _ in rows]  # (assigned, planted)
    for a, p in zip(got, true, strict=True):
        counts[rows.index(a)][columns.index(p)] += 1
    return {
        "ari": float(adjusted_rand_score(true, got)) if common else None,
        "users": len(common),
        "rows": rows,
        "columns": columns,
        "counts": counts,
    }
