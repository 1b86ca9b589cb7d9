"""The tiny backbone's copy objectives and copy probe (#24): the sequences are built as
specified, the probe counts right, copy_share 0 and copy_steps 0 are the training of
before, and the cache key follows copy_share and copy_steps."""

import hashlib
import json
import random
from dataclasses import asdict, replace

import pytest

from ownlm.backbone.copy_tasks import (
    COPY_LEN,
    COPY_SEP,
    IGNORE,
    RANDOM_REPEATS,
    copy_chunks,
    copy_probe,
    echo_example,
    encode,
    frequent_tokens,
    pack_examples,
    random_repeats,
    repeat_example,
    spans,
)
from ownlm.backbone.prompt_format import ANSWER_SEP
from ownlm.backbone.tiny import (
    copy_phase_corpus,
    corpus_key,
    lm_batch,
    pack_corpus,
    training_corpus,
)
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
    for name in ("copy_share", "copy_steps", "copy_random"):
        del settings[name]  # the key as it was computed before the settings existed
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


def test_random_repeats_repeat_distinct_pool_tokens_and_learn_only_the_repeats():
    pool, sep = list(range(100, 140)), [7, 8]
    chunks = random_repeats(pool, sep, eos=2, n=12, seed=0)
    assert len(chunks) == 12 and random_repeats(pool, sep, 2, 12, 0) == chunks  # seeded
    for ids, labels in chunks:
        assert len(ids) == len(labels) <= COPY_LEN
        cut = next(i for i, t in enumerate(ids) if t == 7)  # the first example's span
        span = ids[:cut]
        assert 5 <= len(span) <= 15 and len(set(span)) == len(span) and set(span) <= set(pool)
        example = span + (sep + span) * RANDOM_REPEATS + [2]
        learned = [IGNORE] * len(span) + ([IGNORE] * 2 + span) * RANDOM_REPEATS + [2]
        n = min(len(example), len(ids))  # one over COPY_LEN is cut to it
        assert ids[:n] == example[:n] and labels[:n] == learned[:n]
    assert random_repeats([5, 6, 7], sep, 2, 4, 0) == []  # too few tokens for a span


def test_frequent_tokens_count_over_all_texts():
    assert frequent_tokens([[5, 6, 6], [7, 6, 5], [9]], 2) == [6, 5]
    assert frequent_tokens([[3]], 10) == [3]


def test_copy_phase_corpus_mixes_random_repeats_copies_and_text(tokenizer):
    text = pack_corpus(tokenizer, TEXTS, COPY_LEN)
    for share, n_random, n_copy in ((0.4, 16, 12), (0.0, 0, 20)):
        cfg = replace(SMALL, copy_steps=5, copy_random=share)
        chunks = copy_phase_corpus(tokenizer, TEXTS, cfg)
        assert len(chunks) == 5 * cfg.batch_size == 40
        pairs = [c for c in chunks if isinstance(c, tuple)]
        assert len(pairs) == n_random + n_copy
        assert pairs[:n_random] == random_repeats(
            frequent_tokens([encode(tokenizer, t) for t in TEXTS], 512),
            encode(tokenizer, COPY_SEP),
            tokenizer.eos_token_id,
            n_random,
            cfg.seed,
        )
        n_text = 40 - len(pairs)
        assert chunks[len(pairs) :] == (text * n_text)[:n_text]  # the corpus, cycled
        assert all(len(c[0] if isinstance(c, tuple) else c) <= COPY_LEN for c in chunks)
        assert copy_phase_corpus(tokenizer, TEXTS, cfg) == chunks  # seeded


def test_copy_steps_and_random_set_the_cache_key_and_an_old_record_had_none():
    from ownlm.run.record import config_changes

    keys = {corpus_key(TEXTS, replace(SMALL, copy_steps=s)) for s in (0, 10, 20)}
    keys |= {corpus_key(TEXTS, replace(SMALL, copy_steps=10, copy_random=0.4))}
    assert len(keys) == 4
    no_phase = replace(SMALL, copy_random=0.4)  # copy_steps 0: the mix does not count
    assert corpus_key(TEXTS, no_phase) == corpus_key(TEXTS, SMALL)
    assert config_changes({}, {"tiny.copy_steps": 0, "tiny.copy_random": 0.0}) == []
    assert config_changes({}, {"tiny.copy_steps": 300}) == ["tiny.copy_steps 0 -> 300"]


def test_the_copy_phase_is_validated_and_kept(tmp_path, capsys):
    cfg = replace(SMALL, copy_steps=4, copy_random=0.4)
    path = build_or_load_tiny(TEXTS, tmp_path, cfg, dev_texts=DEV, patience=2)
    meta = json.loads((path / "ownlm_pretrain.json").read_text())
    v = meta["validation"]
    last = v["records"][-1]
    assert last["phase"] == "copy" and v["kept"] == len(v["records"]) - 1
    assert last["step"] == meta["steps"] == v["records"][-2]["step"] + 4
    assert meta["copy_probe"]["after"] == {k: last[k] for k in ("copy_exact", "copy_tokens")}
    assert "copy" in capsys.readouterr().out  # the table's row of the phase
    bare = build_or_load_tiny(TEXTS, tmp_path, cfg)  # unvalidated: the phase runs too
    assert json.loads((bare / "ownlm_pretrain.json").read_text())["steps"] == meta["steps"]
