"""A personalized prompt and the shorter prompts it falls back on.

`Task.build_prompt` returns a `Prompt`: the text (it is a `str`), and `shorter`, the
same prompt with less personal context, in the order it is given up when the prompt
does not fit the model's context: the least relevant retrieved item first, then the
next, and the profile last. The task instruction and the task input are in every one,
so whoever fits a prompt to a token budget (`backbone.context.fit_ids`) keeps them.
"""

from __future__ import annotations


class Prompt(str):
    """A prompt's text, with `shorter`: its fallbacks, longest first."""

    shorter: tuple[str, ...] = ()

    def __new__(cls, text: str, shorter: tuple[str, ...] = ()):
        obj = super().__new__(cls, text)
        obj.shorter = tuple(shorter)
        return obj

    def __reduce__(self):  # pickled (Ray workers, multiprocessing) with its fallbacks
        return (Prompt, (str(self), self.shorter))


def assemble(
    task_input: str, rendered: list[str], profile: str | None, join: str, note: str
) -> Prompt:
    """The prompt of one task input, one part per line, absent parts left out::

        User profile: {profile}
        {item 1}, and {item 2}.{note}
        {task_input}

    `rendered`: the retrieved items as the task writes them, most relevant first;
    `profile` already cut to its length. The fallbacks drop the items from the last
    (least relevant) and then the profile."""

    def text(items: list[str], with_profile: bool) -> str:
        parts = [f"User profile: {profile}"] if with_profile else []
        if items:
            parts.append(f"{join.join(items)}.{note}")
        return "\n".join([*parts, task_input]) if parts else task_input

    has_profile = bool(profile and profile.strip())
    shorter = [text(rendered[:n], has_profile) for n in range(len(rendered) - 1, -1, -1)]
    if has_profile:
        shorter.append(task_input)
    full = text(rendered, has_profile)
    return Prompt(full, tuple(s for s in shorter if s != full))
