"""How a prompt and its answer become token ids: the tokenizer owns the format.

`PromptFormat` is the one place that turns a prompt into the ids its answer follows
and an answer into the ids the model learns, at training, evaluation and serving
alike (the export's README names it for other engines):

* `chat`: the tokenizer's chat template, the prompt as one user message, the answer
  as the assistant's, closed the way the template closes a turn;
* `plain`: the tokenizer's own leading special tokens (a Llama's BOS; none for GPT-2
  or Qwen2), the prompt, then `ANSWER_SEP`; the answer closed by EOS;
* `bare`: `plain` without special tokens, what ownlm did before the setting existed
  (bases written then record no format and are read with it).

The setting `auto` is `chat` when the tokenizer has a chat template, else `plain`.
"""

from __future__ import annotations

from ownlm.errors import ConfigError

ANSWER_SEP = "\nAnswer: "  # between the prompt and the answer in the plain formats
SETTINGS = ("auto", "plain", "chat")  # what `prompt_format` may be set to
FORMATS = ("plain", "chat", "bare")  # what it resolves to, recorded with the base
_PROBE = "\u2063probe\u2063"  # a text no template rewrites, to find what wraps it
# What each format means to another engine (the export's README): how to send a prompt
# so the adapter sees the ids it was trained on.
HOW_TO_PROMPT = {
    "chat": "the tokenizer's chat template, the prompt as one user message with the "
    "generation prompt added (OpenAI-compatible servers: /v1/chat/completions); the "
    "answer is the assistant's turn",
    "plain": "the tokenizer's leading special tokens (its BOS, if it adds one), the prompt, "
    f"then {ANSWER_SEP!r} (OpenAI-compatible servers: /v1/completions with the prompt "
    f"ending in {ANSWER_SEP!r}); the answer ends with EOS",
    "bare": f"the prompt then {ANSWER_SEP!r}, with no special tokens (vLLM: "
    "add_special_tokens=false); the answer ends with EOS",
}


class PromptFormat:
    """A resolved format (`name` in FORMATS) over one tokenizer."""

    def __init__(self, tokenizer, setting: str = "auto"):
        if setting not in (*SETTINGS, *FORMATS):
            raise ConfigError(
                f"prompt_format must be one of {SETTINGS} but the value passed is {setting!r}"
            )
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if setting == "chat" and not has_template:
            raise ConfigError(
                "prompt_format=chat, but the backbone's tokenizer has no chat template; "
                "use --set prompt_format=plain (or auto), or a tokenizer with a template"
            )
        self.tokenizer = tokenizer
        self.name = setting if setting != "auto" else ("chat" if has_template else "plain")
        self.eos = tokenizer.eos_token_id
        self.special = _special_prefix(tokenizer)
        self.prefix = self.special if self.name == "plain" else []
        self.turn_end = _turn_end(tokenizer) if self.name == "chat" else []

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        """The ids the answer to `prompt` follows."""
        if self.name == "chat":
            return self._ids(self.render_chat(prompt))
        return self.prefix + self._ids(prompt + ANSWER_SEP)

    def answer_ids(self, answer: str) -> list[int]:
        """The ids the model learns to answer: the answer and the end of its turn."""
        end = self.turn_end if self.name == "chat" else []
        ids = self._ids(answer) + end
        return ids if ids and ids[-1] == self.eos else ids + [self.eos]

    def raw_ids(self, text: str) -> list[int]:
        """A completion's text continued as is (no answer cue): leading special tokens
        as the tokenizer adds them, as other OpenAI-compatible servers do."""
        return ([] if self.name == "bare" else self.special) + self._ids(text)

    def render_chat(self, prompt: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )


def _special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. [BOS]; [] for most)."""
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start])
    return []


def _turn_end(tokenizer) -> list[int]:
    """The ids that close an assistant turn in the chat template (e.g. <|im_end|>),
    found by rendering one turn; [] when the template writes nothing after it."""
    user = [{"role": "user", "content": "q"}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": _PROBE}], tokenize=False
    )
    at = whole.find(_PROBE, len(head) if whole.startswith(head) else 0)
    if at < 0:
        return []
    end = whole[at + len(_PROBE) :].rstrip()
    return tokenizer(end, add_special_tokens=False)["input_ids"] if end else []
