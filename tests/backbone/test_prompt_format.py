"""The prompt format (`backbone.prompt_format`): one format at training, evaluation,
serving and export, for a tokenizer with a chat template and for one without."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from ownlm.backbone.base import CausalBackbone, write_base_meta
from ownlm.backbone.checksum import read_base_meta
from ownlm.backbone.prompt_format import ANSWER_SEP, PromptFormat
from ownlm.config import ServeSettings
from ownlm.errors import ConfigError
from ownlm.ownership.export import PROMPT_FILE, record_prompt_format
from ownlm.serve.protocol import ChatBody, CompletionBody
from ownlm.serve.server import build_server
from ownlm.testing import family_backbone, toy_backbone

# a ChatML-like template, written here: no tokenizer with one can be downloaded
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = "Which tag does this movie relate to? description: a quiet film about the sea"


def chat_backbone() -> CausalBackbone:
    """A random-init Llama whose locally trained tokenizer has a chat template."""
    bb = family_backbone("llama")
    tok = bb.tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    bb.model.resize_token_embeddings(len(tok))
    return CausalBackbone(bb.model, tok, "llama")


def bos_backbone() -> CausalBackbone:
    """A random-init Llama whose tokenizer adds BOS itself, as Llama's do; no template."""
    bb = family_backbone("llama")
    tok = bb.tokenizer
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return CausalBackbone(bb.model, tok, "llama")


def test_auto_is_the_chat_template_when_there_is_one_else_plain_with_bos():
    chat, plain = chat_backbone().prompt_format, bos_backbone().prompt_format
    assert (chat.name, plain.name) == ("chat", "plain")
    tok = chat.tokenizer
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    assert chat.prompt_ids(PROMPT) == tok(rendered, add_special_tokens=False)["input_ids"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert chat.answer_ids("comedy")[-2:] == [end, tok.eos_token_id]  # the turn, then EOS
    bos = plain.tokenizer.bos_token_id
    bare = plain.tokenizer(PROMPT + ANSWER_SEP, add_special_tokens=False)["input_ids"]
    assert plain.prompt_ids(PROMPT) == [bos] + bare
    assert plain.answer_ids("comedy")[-1] == plain.tokenizer.eos_token_id


def test_tiny_tokenizer_keeps_todays_tokens():
    """The tiny backbone's tokenizer has no template and adds no special token: `auto`
    gives the ids ownlm always gave it (prompt + separator; answer + EOS)."""
    bb = toy_backbone()
    ids = bb.tokenizer(PROMPT + ANSWER_SEP, add_special_tokens=False)["input_ids"]
    assert bb.prompt_format.name == "plain" and bb.prompt_format.prompt_ids(PROMPT) == ids
    assert PromptFormat(bb.tokenizer, "bare").prompt_ids(PROMPT) == ids


def test_chat_without_a_template_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="no chat template.*prompt_format=plain"):
        PromptFormat(toy_backbone().tokenizer, "chat")
    with pytest.raises(ConfigError, match="prompt_format must be one of"):
        PromptFormat(toy_backbone().tokenizer, "llama")


def _served(tmp_path, backbone):
    backbone.save(tmp_path / "base")
    write_base_meta(tmp_path / "base", backbone, max_len=backbone.max_len)
    settings = ServeSettings(cache_size=2, max_batch_size=2)
    return build_server(tmp_path, settings, personalize=False)


def _trained_ids(backbone, prompt: str) -> list[int]:
    ids, mask, labels = backbone.encode_pairs([prompt], ["comedy"])
    return ids[0][(labels[0] == -100) & mask[0].bool()].tolist()


def _evaluated_ids(backbone, prompt: str, monkeypatch) -> list[int]:
    seen = {}

    def generate(input_ids, attention_mask, **kwargs):
        seen["ids"] = input_ids[0][attention_mask[0].bool()].tolist()
        return torch.cat([input_ids, input_ids[:, :1]], 1)

    monkeypatch.setattr(backbone.model, "generate", generate)
    backbone.generate(backbone.model, [prompt], max_new_tokens=4)
    return seen["ids"]


@pytest.mark.parametrize("make", [chat_backbone, bos_backbone], ids=["chat", "plain-bos"])
def test_prompt_ids_are_identical_in_training_evaluation_and_serving(tmp_path, make, monkeypatch):
    built = make()
    expected = built.prompt_format.prompt_ids(PROMPT)
    server = _served(tmp_path, built)
    loaded = server.backbone  # as `load_base` reads the base back: its recorded format
    assert loaded.prompt_format.name == built.prompt_format.name
    assert read_base_meta(tmp_path / "base")["prompt_format"] == built.prompt_format.name
    trained = _trained_ids(loaded, PROMPT)
    evaluated = _evaluated_ids(loaded, PROMPT, monkeypatch)
    chat = ChatBody(model="llama", messages=[{"role": "user", "content": PROMPT}], max_tokens=4)
    served = server.build(chat, None, PROMPT, chat=True).ids
    assert trained == evaluated == served == expected
    # a completion without personal context is continued as is, with the leading BOS
    raw = server.build(CompletionBody(model="llama", prompt=PROMPT), None, PROMPT, False).ids
    assert (
        raw
        == loaded.prompt_format.special
        + loaded.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    )


def test_a_base_of_before_the_setting_is_read_without_special_tokens(tmp_path):
    built = bos_backbone()
    built.save(tmp_path / "base")
    write_base_meta(tmp_path / "base", built, max_len=built.max_len)
    meta_file = tmp_path / "base" / "ownlm_base.json"
    meta = json.loads(meta_file.read_text())
    del meta["prompt_format"]
    meta_file.write_text(json.dumps(meta))
    from ownlm.backbone.load import load_base

    fmt = load_base(tmp_path / "base").prompt_format
    bare = built.tokenizer(PROMPT + ANSWER_SEP, add_special_tokens=False)["input_ids"]
    assert fmt.name == "bare" and fmt.prompt_ids(PROMPT) == bare


def test_the_export_records_the_format_it_was_trained_with(tmp_path):
    built = chat_backbone()
    built.save(tmp_path / "base")
    write_base_meta(tmp_path / "base", built, max_len=built.max_len)
    adapter = tmp_path / "export"
    adapter.mkdir()
    (adapter / "README.md").write_text("---\nlibrary_name: peft\n---\n")
    line = record_prompt_format(adapter, read_base_meta(tmp_path / "base"))
    record = json.loads((adapter / PROMPT_FILE).read_text())
    assert record["prompt_format"] == "chat" and record["context_length"] == built.max_len
    assert "chat template" in (adapter / "README.md").read_text() and "chat" in line
