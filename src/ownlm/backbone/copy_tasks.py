"""Copy objectives for the tiny backbone's pre-training, and the probe that measures them.

A model trained from scratch on a few thousand short texts learns their style but not to
carry its prompt into its answer, which every generation task needs. Two kinds of
sequence, built from the same corpus, ask for exactly that:

* **repeat**: a span of 5-15 corpus tokens, `COPY_SEP`, the same span again; the loss is
  on the repeat only. Completing a repeated sequence is what induction heads do; Olsson
  et al. (2022, "In-context learning and induction heads") found them in attention-only
  models of two or more layers, forming in a phase change early in training that
  coincides with a sharp gain in in-context learning.
* **echo**: an item's words, `ANSWER_SEP` (the stages' prompt format), then a run of
  those words with some dropped; the loss is on the answer only. It is the stages' task
  shape with an answer that carries the input's words.

Examples are packed into sequences of at most `max_len` tokens, each a pair (ids,
labels) with -100 where nothing is learned. `copy_probe` greedily continues held-out
spans after `COPY_SEP` and counts the exact copies.

Mixed into the corpus, these barely teach copying in a demo's budget. The **copy phase**
(`tiny.copy_steps`, built by `tiny.copy_phase_corpus`) is a short stage after the corpus
pre-training on sequences of COPY_LEN tokens: repeats and echoes of the corpus, the
corpus itself so that its loss holds, and optionally (`tiny.copy_random`) **random
repeats**: spans of distinct tokens drawn from the corpus's most frequent ones, then
repeated, which only copying predicts (Olsson et al. made induction heads form on
repeated random tokens, much faster than on natural text).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ownlm.backbone.prompt_format import ANSWER_SEP

COPY_SEP = "\nRepeat: "  # between a span and its repeat (the probe's prompt ends with it)
SPAN = (5, 15)  # tokens in a repeated or probed span (inclusive)
ECHO_WORDS = (3, 12)  # words in an echo answer's run, before some are dropped
ECHO_INPUT = 32  # words of an item kept as an echo's input
IGNORE = -100
COPY_LEN = 64  # tokens in a copy phase sequence (short: its steps are cheap)
RANDOM_POOL = 512  # the corpus's most frequent tokens a random repeat draws from
RANDOM_REPEATS = 3  # times a random span is repeated after it

Example = tuple[list[int], list[int]]  # (ids, labels), labels IGNORE where not learned


def encode(tokenizer, text: str) -> list[int]:
    """`text`'s ids without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def repeat_example(span: list[int], sep: list[int], eos: int) -> Example:
    """span, sep, span, eos; learned: the repeated span and the eos."""
    ids = span + sep + span + [eos]
    return ids, [IGNORE] * (len(span) + len(sep)) + span + [eos]


def echo_answer(words: list[str], rng: random.Random) -> list[str]:
    """A run of 3-12 of `words` from a random start, each word after the first dropped
    with probability 0.2: an answer made of the input's words, in their order."""
    n = rng.randint(*ECHO_WORDS)
    start = rng.randrange(max(1, len(words) - n + 1))
    run = words[start : start + n]
    return run[:1] + [w for w in run[1:] if rng.random() >= 0.2]


def echo_example(tokenizer, text: str, rng: random.Random) -> Example | None:
    """An item's prompt (its text before `ANSWER_SEP`, at most ECHO_INPUT words from a
    random start), `ANSWER_SEP`, an `echo_answer` of it, eos; learned: the answer and
    eos. Encoded as `PromptFormat` encodes a prompt and its answer. None: no words."""
    words = text.split(ANSWER_SEP)[0].split()
    if not words:
        return None
    start = rng.randrange(max(1, len(words) - ECHO_INPUT + 1))
    words = words[start : start + ECHO_INPUT]
    prompt = encode(tokenizer, " ".join(words) + ANSWER_SEP)
    answer = encode(tokenizer, " ".join(echo_answer(words, rng))) + [tokenizer.eos_token_id]
    return prompt + answer, [IGNORE] * len(prompt) + answer


def spans(token_lists: list[list[int]], n: int, seed: int) -> list[list[int]]:
    """`n` seeded spans of 5-15 consecutive tokens, each from a random text long enough
    for it (fewer when no text is 5 tokens long)."""
    rng = random.Random(seed)
    pool = [t for t in token_lists if len(t) >= SPAN[0]]
    out = []
    for _ in range(n if pool else 0):
        ids = rng.choice(pool)
        length = rng.randint(SPAN[0], min(SPAN[1], len(ids)))
        start = rng.randrange(len(ids) - length + 1)
        out.append(ids[start : start + length])
    return out


def pack_examples(examples: list[Example], max_len: int) -> list[Example]:
    """Examples laid end to end into sequences of at most `max_len` tokens (an example
    longer than that is cut to it); none is split across two sequences."""
    chunks: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for e_ids, e_labels in examples:
        if ids and len(ids) + len(e_ids) > max_len:
            chunks.append((ids, labels))
            ids, labels = [], []
        ids, labels = ids + e_ids[:max_len], labels + e_labels[:max_len]
    if ids:
        chunks.append((ids, labels))
    return chunks


def copy_chunks(tokenizer, texts: list[str], n_chunks: int, max_len: int, seed: int):
    """`n_chunks` packed sequences of copy examples from `texts`, repeats and echoes
    alternating (seeded). Empty when `n_chunks` is 0 or no text has 5 tokens."""
    token_lists = [encode(tokenizer, t) for t in texts]
    if n_chunks <= 0 or not any(len(t) >= SPAN[0] for t in token_lists):
        return []
    rng = random.Random(seed)
    sep, eos = encode(tokenizer, COPY_SEP), tokenizer.eos_token_id
    chunks: list[Example] = []
    round_ = 0
    while len(chunks) < n_chunks:
        batch = []
        for span in spans(token_lists, 64, seed + round_):
            batch.append(repeat_example(span, sep, eos))
            echo = echo_example(tokenizer, rng.choice(texts), rng)
            if echo is not None:
                batch.append(echo)
        chunks.extend(pack_examples(batch, max_len))
        round_ += 1
    return chunks[:n_chunks]


def random_repeats(pool: list[int], sep: list[int], eos: int, n: int, seed: int):
    """`n` seeded random repeats packed into COPY_LEN tokens: a span of 5-15 distinct
    tokens of `pool`, then RANDOM_REPEATS times `sep` and the span, then eos; learned:
    the repeats and the eos. Empty when `pool` has fewer than 5 tokens."""
    rng = random.Random(seed)
    chunks: list[Example] = []
    while n > 0 and len(pool) >= SPAN[0] and len(chunks) < n:
        batch = []
        for _ in range(64):
            span = rng.sample(pool, rng.randint(SPAN[0], min(SPAN[1], len(pool))))
            ids, labels = list(span), [IGNORE] * len(span)
            for _ in range(RANDOM_REPEATS):
                ids, labels = ids + sep + span, labels + [IGNORE] * len(sep) + span
            batch.append((ids + [eos], labels + [eos]))
        chunks.extend(pack_examples(batch, COPY_LEN))
    return chunks[:n]


def frequent_tokens(token_lists: list[list[int]], k: int) -> list[int]:
    """The `k` most frequent ids of `token_lists` (ties: the smaller id first)."""
    counts: dict[int, int] = {}
    for ids in token_lists:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    return sorted(counts, key=lambda i: (-counts[i], i))[:k]


# -- the probe -----------------------------------------------------------------------------
Generate = Callable[[list[list[int]], int], list[list[int]]]  # prompts, n -> n new ids each


def copy_probe(generate: Generate, probe: list[list[int]], sep: list[int]) -> dict:
    """How well `generate` copies: each span of `probe` is prompted as span + `sep` and
    continued greedily for len(span) tokens. Returns `copy_exact` (the share of spans
    copied exactly) and `copy_tokens` (the share of positions right). Spans of one length
    are generated as one batch."""
    exact = right = total = 0
    for length in sorted({len(s) for s in probe}):
        group = [s for s in probe if len(s) == length]
        outs = generate([s + sep for s in group], length)
        for span, out in zip(group, outs, strict=True):
            out = list(out[:length])
            hits = sum(a == b for a, b in zip(span, out, strict=False))
            exact += hits == length
            right += hits
            total += length
    return {
        "copy_exact": exact / len(probe) if probe else 0.0,
        "copy_tokens": right / total if total else 0.0,
    }


def greedy(model, pad: int) -> Generate:
    """`Generate` by `model`'s greedy decoding (prompts of one length, so no padding)."""
    import torch

    def generate(prompts: list[list[int]], n: int) -> list[list[int]]:
        ids = torch.tensor(prompts, device=model.device)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        return out[:, ids.shape[1] :].tolist()

    return generate
