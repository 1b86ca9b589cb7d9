"""The tiny backbone's copy objectives and copy probe (#24): the sequences are built as
specified, the probe counts right, copy_share 0 is the corpus of before, and the cache
key follows copy_share."""

import hashlib
import json
import random
from dataclasses import asdict, replace

import pytest

from ownlm.backbone.copy_tasks import (
    COPY_SEP,
    IGNORE,
    copy_chunks,
    copy_probe,
    echo_example,
    encode,
    pack_examples,
    repeat_example,
    spans,
)
from ownlm.backbone.prompt_format import ANSWER_SEP
from ownlm.backbone.tiny import corpus_key, lm_batch, pack_corpus, training_corpus
from ownlm.backbone.tokenizer import train_tokenizer
from ownlm.config import TinyConfig, load_config
from ownlm.errors import ConfigError
from ownlm.train.pretrain import build_or_load_tiny, cache_key

SMALL = TinyConfig(
    vocab_size=300, hidden_size=32, layers=1, heads=2, intermediate_size=64, max_len=64,
    min_steps=3, epochs=1.0, batch_size=8, copy_share=0.3,
)  # fmt: skip
TEXTS = [
    f"the critic {i} reviews film {i % 7} with a twist{ANSWER_SEP}thriller {i % 3}"
    for i in range(40)
]
DEV = [f"the critic {i} reviews film {i % 5} with a sad end{ANSWER_SEP}drama" for i in range(6)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, SMALL.vocab_size)


def test_repeat_example_repeats_the_span_and_learns_only_the_repeat():
    span, sep = [11, 12, 13, 14, 15], [7, 8]
    ids, labels = repeat_example(span, sep, eos=2)
    assert ids == span + sep + span + [2]
    assert labels == [IGNORE] * 7 + span + [2]  # span and separator: context only


def test_echo_example_answers_with_the_items_words_in_order(tokenizer):
    rng = random.Random(0)
    for text in TEXTS[:10]:
        ids, labels = echo_example(tokenizer, text, rng)
        cut = next(i for i, lab in enumerate(labels) if lab != IGNORE)
        prompt, answer = tokenizer.decode(ids[:cut]), tokenizer.decode(ids[cut:-1])
        assert prompt.endswith(ANSWER_SEP) and ids[-1] == tokenizer.eos_token_id
        assert labels[cut:] == ids[cut:]  # the answer and eos are learned, nothing before
        words, it = prompt[: -len(ANSWER_SEP)].split(), iter(prompt.split())
        assert answer.split() and all(w in it for w in answer.split())  # a subsequence
        assert set(answer.split()) <= set(words)


def test_spans_are_5_to_15_consecutive_tokens_of_a_text():
    texts = [list(range(k, k + 30)) for k in (0, 100)] + [[1, 2, 3]]  # too short: skipped
    for span in spans(texts, 50, seed=3):
        assert 5 <= len(span) <= 15
        assert span == list(range(span[0], span[0] + len(span)))
    assert spans([[1, 2]], 4, seed=0) == []


def test_copy_chunks_fit_max_len_and_label_only_their_own_ids(tokenizer):
    chunks = copy_chunks(tokenizer, TEXTS, 9, max_len=64, seed=0)
    assert len(chunks) == 9
    sep = encode(tokenizer, COPY_SEP)
    for ids, labels in chunks:
        assert len(ids) == len(labels) <= 64
        assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels, strict=True))
    assert any(sep == ids[k : k + len(sep)] for ids, _ in chunks for k in range(len(ids)))
    assert copy_chunks(tokenizer, TEXTS, 0, 64, 0) == []
    assert pack_examples([([1] * 50, [1] * 50), ([2] * 20, [2] * 20)], 64) == [
        ([1] * 50, [1] * 50),
        ([2] * 20, [2] * 20),
    ]  # none split across two sequences


def test_lm_batch_keeps_a_copy_sequences_mask():
    ids, mask, labels = lm_batch([[5, 6, 7], ([5, 6], [IGNORE, 6])], pad=0)
    assert ids.tolist() == [[5, 6, 7], [5, 6, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert labels.tolist() == [[5, 6, 7], [IGNORE, 6, IGNORE]]


def test_probe_counts_exact_copies_and_right_tokens():
    probe, sep = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11], [3, 3, 3, 3, 3]], [99]

    def perfect(prompts, n):
        assert all(p[-1] == 99 and len(p) == n + 1 for p in prompts)
        return [p[:n] for p in prompts]

    assert copy_probe(perfect, probe, sep) == {"copy_exact": 1.0, "copy_tokens": 1.0}
    never = copy_probe(lambda prompts, n: [[0] * n for _ in prompts], probe, sep)
    assert never == {"copy_exact": 0.0, "copy_tokens": 0.0}
    last_wrong = copy_probe(lambda ps, n: [p[: n - 1] + [0] for p in ps], probe, sep)
    assert last_wrong == {"copy_exact": 0.0, "copy_tokens": pytest.approx(13 / 16)}
    short = copy_probe(lambda ps, n: [p[:2] for p in ps], probe, sep)  # stopped early
    assert short == {"copy_exact": 0.0, "copy_tokens": pytest.approx(6 / 16)}


def test_copy_share_0_is_the_corpus_and_the_key_of_before(tokenizer):
    off = replace(SMALL, copy_share=0.0)
    assert training_corpus(tokenizer, TEXTS, off) == pack_corpus(tokenizer, TEXTS, 64)
    settings = asdict(off)
    del settings["copy_share"]  # the key as it was computed before the setting existed
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in TEXTS:
        h.update(t.encode() + b"\0")
    assert corpus_key(TEXTS, off) == h.hexdigest()[:16]


def test_copy_share_sets_the_mix_and_the_cache_key(tokenizer):
    text = pack_corpus(tokenizer, TEXTS, 64)
    for share in (0.3, 0.5, 0.9):
        mixed = training_corpus(tokenizer, TEXTS, replace(SMALL, copy_share=share))
        assert mixed[: len(text)] == text
        assert len(mixed) - len(text) == round(len(text) * share / (1 - share))
    keys = {cache_key(TEXTS, replace(SMALL, copy_share=s), DEV, 2) for s in (0, 0.3, 0.5)}
    assert len(keys) == 3
    assert corpus_key(TEXTS, SMALL) != corpus_key(TEXTS, replace(SMALL, copy_share=0.5))


def test_copy_share_over_0_9_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="copy_share=0.95 is over 0.9"):
        load_config(None, ["tiny.copy_share=0.95"])
    assert load_config(None, []).tiny.copy_share == TinyConfig().copy_share


def test_pretraining_records_the_copy_probe(tmp_path, capsys):
    path = build_or_load_tiny(TEXTS, tmp_path, SMALL, dev_texts=DEV, patience=2)
    meta = json.loads((path / "ownlm_pretrain.json").read_text())
    records = meta["validation"]["records"]
    assert all(0 <= r["copy_exact"] <= r["copy_tokens"] <= 1 for r in records)
    probe = meta["copy_probe"]
    assert probe["source"] == "dev text"
    assert probe["before"] == {k: records[0][k] for k in ("copy_exact", "copy_tokens")}
    kept = records[meta["validation"]["kept"]]
    assert probe["after"] == {k: kept[k] for k in ("copy_exact", "copy_tokens")}
    assert "copy exact" in capsys.readouterr().out  # the table shows it
    bare = json.loads(
        (build_or_load_tiny(TEXTS, tmp_path, SMALL) / "ownlm_pretrain.json").read_text()
    )
    assert bare["validation"] is None and set(bare["copy_probe"]["after"]) == {
        "copy_exact",
        "copy_tokens",
    }
