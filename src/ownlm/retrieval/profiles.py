"""User profiles: a short text summary of a user's history, prepended to the prompt.

OPPU (Sec. 3) asks an LLM to summarise 10 history items with a task-specific
instruction ("most popular tag", "most common score", "template of their
headlines"). A small backbone cannot write such summaries, so `build_profile`
computes the same facts statistically: the label distribution, the mean and most
common score, or the length, frequent words and opening/closing habits of the
user's texts. For a real LLM, pass a `ProfileGenerator` (any callable prompt -> text)
and the OPPU-style prompt of `profile_prompt` is sent to it instead.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from statistics import mean, median
from typing import Protocol

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from ownlm.data.tasks import MAX_PROFILE_CHARS, check_kind

# OPPU-style instructions per task kind (paraphrasing the paper's profile prompts).
PROFILE_INSTRUCTIONS = {
    "classification": (
        "Look at the following past items of this user and the label they gave each. "
        "Describe the labels this user uses most. Answer in one short sentence."
    ),
    "rating": (
        "Look at the following past reviews of this user and the score they gave each. "
        "Give the most common score and how generous this user is. Answer in one short sentence."
    ),
    "generation": (
        "Look at the following past texts this user wrote. Describe the template of their "
        "writing: typical length, words and phrasing. Answer in one short sentence."
    ),
}

_WORD = re.compile(r"[a-z0-9']+")
_SHARE = 0.3  # a habit is reported when at least this share of outputs show it


class ProfileGenerator(Protocol):
    """Hook for LLM-written profiles: takes the full prompt text, returns the profile text."""

    def __call__(self, prompt: str) -> str: ...


def _clip(text: str) -> str:
    # Profiles share the prompt with retrieved items: keep them to one short line.
    if len(text) <= MAX_PROFILE_CHARS:
        return text
    return text[: MAX_PROFILE_CHARS - 3].rstrip() + "..."


def _label_profile(outputs: list[str], labels: Sequence[str]) -> str:
    counts = Counter(outputs)
    # Ties: the task's label order first, then alphabetical, so the profile is deterministic.
    rank = {lab: i for i, lab in enumerate(labels)}
    top = sorted(counts.items(), key=lambda kv: (-kv[1], rank.get(kv[0], len(rank)), kv[0]))[:3]
    parts = [f"{lab} ({100 * n / len(outputs):.0f}%)" for lab, n in top]
    return "This user's most used labels: " + ", ".join(parts) + "."


def _rating_profile(outputs: list[str]) -> str:
    values: list[float] = []
    for out in outputs:
        try:
            values.append(float(out))
        except ValueError:
            continue
    if not values:
        return ""
    common = Counter(values).most_common()
    best = min(v for v, n in common if n == common[0][1])  # tie -> the lower score
    return (
        f"This user's scores: mean {mean(values):.1f}, most common {best:g} "
        f"(over {len(values)} ratings)."
    )


def _habit(values: list[str], n_outputs: int) -> str | None:
    """The most common value if it is shared by enough outputs (and more than one)."""
    if not values:
        return None
    counts = Counter(values)
    top_n = counts.most_common(1)[0][1]
    value = min(v for v, n in counts.items() if n == top_n)
    return value if top_n >= 2 and top_n >= _SHARE * n_outputs else None


def _text_profile(outputs: list[str]) -> str:
    words = [_WORD.findall(o.lower()) for o in outputs]
    length = median(len(o.split()) for o in outputs)
    parts = [f"This user's texts: about {length:.0f} words"]
    content = Counter(w for ws in words for w in ws if w not in ENGLISH_STOP_WORDS and len(w) > 2)
    frequent = [w for w, n in sorted(content.items(), key=lambda kv: (-kv[1], kv[0])) if n >= 2]
    if frequent:
        parts.append("frequent words: " + ", ".join(frequent[:4]))
    first = _habit([o.split()[0] for o in outputs if o.split()], len(outputs))
    if first is not None:
        parts.append(f"often starts with '{first}'")
    last = _habit([o[-1] for o in outputs if o and not o[-1].isalnum()], len(outputs))
    if last is not None:
        parts.append(f"often ends with '{last}'")
    return "; ".join(parts) + "."


def build_profile(
    kind: str,
    outputs: Sequence[str],
    inputs: Sequence[str] | None = None,
    labels: Sequence[str] = (),
    generator: ProfileGenerator | None = None,
) -> str:
    """A short (< 200 chars), deterministic summary of a user's history outputs.

    `outputs` are the user's history outputs (tags, scores, headlines), `inputs` the
    matching item texts, used only by the LLM path. An empty history gives "".
    With `generator`, the OPPU-style prompt of `profile_prompt` is sent to it instead.
    """
    check_kind(kind, "profile kind")
    outs = [o.strip() for o in outputs if o and o.strip()]
    if not outs:
        return ""
    if generator is not None:
        return _clip(generator(profile_prompt(kind, outputs, inputs)).strip())
    if kind == "classification":
        return _clip(_label_profile(outs, labels))
    if kind == "rating":
        return _clip(_rating_profile(outs))
    return _clip(_text_profile(outs))


def profile_prompt(
    kind: str,
    outputs: Sequence[str],
    inputs: Sequence[str] | None = None,
    n_items: int = 10,
    seed: int = 0,
) -> str:
    """The OPPU-style profile prompt: an instruction and up to `n_items` sampled history items.

    OPPU samples 10 history items per user; the sample is seeded so that it is reproducible.
    """
    check_kind(kind, "profile kind")
    pairs = list(zip(inputs if inputs is not None else [""] * len(outputs), outputs, strict=True))
    if len(pairs) > n_items:
        pairs = random.Random(seed).sample(pairs, n_items)
    lines = [PROFILE_INSTRUCTIONS[kind], ""]
    for inp, out in pairs:
        lines.append(
            f"- input: {inp.strip()} | output: {out.strip()}" if inp else f"- {out.strip()}"
        )
    lines += ["", "Profile:"]
    return "\n".join(lines)
