"""demo-rewrite: users who pass on short notices in their own words (issue #24, item 3).

Each item's input is a notice: a subject, what happens to it and when ("The bike shed
closes early on Friday."), then a sentence of chatter that the rewrite leaves out.
Users fall into `REWRITE_GROUPS` planted groups (balanced, as demo-tags'); a group has a
style that wraps the notice's own words (`GROUP_STYLES`), and each user adds a personal
sign-off (`SIGN_OFFS`). A user's answer is therefore mostly the input's words, chosen
and ordered by their group, plus a few words of their own:

    input   The bike shed closes early on Friday. Nobody knows who decided it.
    memo    Note: the bike shed closes early on Friday. Regards, Kim
    casual  heads up, the bike shed closes early on friday lol cheers
    asks    Did you hear? The bike shed closes early on Friday. Thanks!
    terse   Bike shed: closes early. See you

The notices draw from 36 subjects x 20 events x 12 times, so no single answer fits a
user's queries: their most central past answer (the user reference that wins
demo-headlines, whose articles repeat) shares only the style's words with a new one,
and a model has to carry the input into its answer to score. Items carry `group`,
`style` and `sign_off` (ground truth for analysis; prompts never show them).
"""

from __future__ import annotations

import random

from ownlm.data.records import Dataset, Item, Query, User
from ownlm.data.tasks import get_task
from ownlm.errors import ConfigError

REWRITE_GROUPS = 4
SUBJECTS = [
    "the bike shed", "the coffee machine", "the night bus", "the rooftop garden",
    "the copy room", "the staff canteen", "the north gate", "the main library",
    "the swimming pool", "the weekly market", "the parking garage", "the dentist",
    "the team lunch", "the fire drill", "the book club", "the yoga class",
    "the print shop", "the town hall", "the old ferry", "the science fair",
    "the choir practice", "the bakery", "the tram line", "the chess club",
    "the repair shop", "the hockey game", "the art room", "the post office",
    "the pharmacy", "the music school", "the city museum", "the cinema",
    "the lab meeting", "the tennis court", "the food bank", "the photo studio",
]  # fmt: skip
EVENTS = [
    "closes early", "opens late", "is cancelled", "moves upstairs", "is full",
    "needs volunteers", "starts again", "gets a new manager", "is free",
    "changes its hours", "is under repair", "has a long queue", "runs a raffle",
    "is painted blue", "asks for feedback", "is short of staff", "hosts a party",
    "shuts for cleaning", "is booked out", "gets new chairs",
]  # fmt: skip
TIMES = [
    "on Monday", "on Tuesday", "on Wednesday", "on Thursday", "on Friday", "this weekend",
    "next week", "tonight", "tomorrow morning", "after lunch", "until March", "all summer",
]  # fmt: skip
CHATTER = [
    "Nobody knows who decided it.",
    "Someone put up a sign about it.",
    "It was mentioned in the newsletter.",
    "People were talking about it at the door.",
    "The email about it went out late.",
    "A neighbour told me this morning.",
]
SIGN_OFFS = [
    "Regards, Kim", "Thanks!", "See you", "Cheers", "xo", "Best, Lou", "Take care",
    "Bye for now", "Talk soon", "Stay dry",
]  # fmt: skip
GROUP_STYLES = ("memo", "casual", "asks", "terse")


def rewrite(style: str, subject: str, event: str, time: str, sign_off: str) -> str:
    """The rewrite a user of `style` with `sign_off` writes for a notice."""
    notice = f"{subject} {event} {time}"
    if style == "memo":
        return f"Note: {notice}. {sign_off}"
    if style == "casual":
        return f"heads up, {notice.lower()} lol {sign_off.lower()}"
    if style == "asks":
        return f"Did you hear? {notice[:1].upper()}{notice[1:]}. {sign_off}"
    if style == "terse":
        name = subject.removeprefix("the ")
        return f"{name[:1].upper()}{name[1:]}: {event}. {sign_off}"
    raise ConfigError(f"unknown rewrite style {style!r}; use one of {GROUP_STYLES}")


def _item(rng: random.Random, style: str, group: str, sign_off: str, item_id: str) -> Item:
    subject, event, time = rng.choice(SUBJECTS), rng.choice(EVENTS), rng.choice(TIMES)
    text = f"{subject[:1].upper()}{subject[1:]} {event} {time}. {rng.choice(CHATTER)}"
    fields = {
        "text": text,
        "rewrite": rewrite(style, subject, event, time, sign_off),
        "group": group,
        "style": style,
        "sign_off": sign_off,
    }
    return Item(item_id, fields)


def plant_styles(rng: random.Random, n_users: int) -> list[tuple[str, str, str]]:
    """(style, group, sign-off) per user: every run of `REWRITE_GROUPS` users holds one
    member of each group in a shuffled order (any prefix keeps the groups near equal)."""
    out = []
    for start in range(0, n_users, REWRITE_GROUPS):
        for g in rng.sample(range(REWRITE_GROUPS), REWRITE_GROUPS)[: n_users - start]:
            out.append((GROUP_STYLES[g], f"g{g}", rng.choice(SIGN_OFFS)))
    return out


def make_demo_rewrite(
    n_users: int = 40, history: int = 20, queries: int = 5, seed: int = 0
) -> Dataset:
    """Users rewriting notices in their group's style with their own sign-off (see the
    module docstring)."""
    rng = random.Random(seed)
    task = get_task("demo-rewrite")
    users = []
    for u, (style, group, sign_off) in enumerate(plant_styles(rng, n_users)):
        uid = f"r{u:03d}"
        items = [_item(rng, style, group, sign_off, f"{uid}-h{i}") for i in range(history)]
        qs = []
        for j in range(queries):
            item = _item(rng, style, group, sign_off, f"{uid}-q{j}")
            prompt = task.query_prompt(item.fields)
            qs.append(Query(item.id, prompt, item.fields["rewrite"], dict(item.fields)))
        users.append(User(uid, items, qs))
    return Dataset(task.name, users, f"demo-rewrite(seed={seed})")
