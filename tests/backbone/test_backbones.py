import torch
from peft import PeftModel, get_peft_model

from ownlm.adapters.lora import lora_config
from ownlm.backbone.base import Backbone, CausalBackbone, EncoderBackbone
from ownlm.backbone.encoder import EncoderClassifier, load_minilm_classifier
from ownlm.backbone.load import load_backbone
from ownlm.config import LoraSettings, TinyConfig
from ownlm.data.tasks import get_task
from ownlm.train.pretrain import build_or_load_tiny

SMALL = TinyConfig(
    vocab_size=300,
    hidden_size=32,
    layers=1,
    heads=2,
    intermediate_size=64,
    max_len=128,
    min_steps=3,
    epochs=0.1,
)
TEXTS = [f"user {i} likes movie number {i % 7} with a twist ending" for i in range(60)]


def test_tiny_is_cached_and_reused(tmp_path):
    path = build_or_load_tiny(TEXTS, tmp_path, SMALL)
    stamp = (path / "config.json").stat().st_mtime_ns
    assert build_or_load_tiny(TEXTS, tmp_path, SMALL) == path
    assert (path / "config.json").stat().st_mtime_ns == stamp
    assert build_or_load_tiny(TEXTS[:30], tmp_path, SMALL) != path  # other corpus, other model


def test_causal_label_scoring_and_generation(tmp_path):
    backbone = CausalBackbone.from_pretrained(
        build_or_load_tiny(TEXTS, tmp_path, SMALL), max_len=SMALL.max_len
    )
    scores = backbone.score_labels(
        backbone.model, ["a movie", "another movie"], ("comedy", "sci-fi", "x")
    )
    assert scores.shape == (2, 3) and torch.isfinite(scores).all() and (scores <= 0).all()
    out = backbone.generate(backbone.model, ["user 3 likes"], max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)
    # a long prompt is cut from the left and still fits the context
    ids, mask, labels = backbone.encode_pairs(["word " * 500], ["comedy"])
    assert ids.shape[1] <= SMALL.max_len and (labels != -100).sum() > 0


def test_hf_directory_loads_like_the_tiny_default(tmp_path):
    """A locally saved Hugging Face model directory is a backbone spec like a hub id."""
    path = build_or_load_tiny(TEXTS, tmp_path, SMALL)
    backbone = load_backbone(str(path), get_task("demo-tags"))
    assert backbone.kind == "causal" and backbone.name == path.name
    assert isinstance(backbone, Backbone)  # the protocol every stage relies on


def test_minilm_classifier_zero_shot_save_and_peft(tmp_path):
    labels = ("comedy", "horror", "romance")
    model, tok = load_minilm_classifier(labels)
    backbone = EncoderBackbone(model, tok)
    assert isinstance(backbone, Backbone)
    prompts = [
        "a hilarious comedy full of jokes and laughs",
        "a terrifying horror film with ghosts",
    ]
    # the head starts as cosine similarity to the label names: zero-shot already sensible
    assert backbone.predict(
        model,
        get_task("demo-tags").__class__(**{**get_task("demo-tags").__dict__, "labels": labels}),
        prompts,
    ) == ["comedy", "horror"]
    loss = backbone.loss(model, prompts, ["comedy", "horror"])
    assert loss.item() > 0
    backbone.save(tmp_path / "enc")
    again, _ = EncoderClassifier.from_dir(tmp_path / "enc")
    ids, mask = backbone._batch(prompts)
    assert torch.allclose(model(ids, mask), again(ids, mask), atol=1e-6)
    # PEFT wraps the custom module: LoRA on attention, the head trainable per adapter
    peft_model = get_peft_model(model, lora_config(backbone, LoraSettings()))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("head" in n for n in trainable)
    peft_model.save_pretrained(tmp_path / "adapter")
    base, _ = EncoderClassifier.from_dir(tmp_path / "enc")
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert torch.allclose(loaded(ids, mask), peft_model(ids, mask), atol=1e-5)


def test_first_token_scoring_matches_the_full_pass_ranking(tmp_path):
    """Single-token labels: the one-pass path equals full scoring minus the </s> term."""
    backbone = CausalBackbone.from_pretrained(
        build_or_load_tiny(TEXTS, tmp_path, SMALL), max_len=SMALL.max_len
    )
    words = [backbone.tokenizer.decode([i]) for i in range(40, 120)]
    labels = tuple(
        dict.fromkeys(
            w
            for w in words
            if w.strip() and len(backbone.tokenizer(w, add_special_tokens=False)["input_ids"]) == 1
        )
    )[:4]
    assert len(labels) >= 2
    fast = backbone.score_labels(backbone.model, ["user 3 likes", "a movie"], labels)
    for j, label in enumerate(labels):
        ids, mask, lab = backbone.encode_pairs(["user 3 likes", "a movie"], [label] * 2)
        logp = backbone.model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
        pos = (lab[:, 1:] != -100).float().argmax(-1)
        first = logp[torch.arange(2), pos, lab[torch.arange(2), pos + 1]]
        assert torch.allclose(fast[:, j], first, atol=1e-5)


def test_detach_gives_the_encoder_its_own_head_back(tmp_path):
    """PEFT's unload() leaves the adapter's trained head in place; detach restores the
    base's, so one user's head never reaches the next user's model."""
    from ownlm.adapters.lora import detach

    model, tok = load_minilm_classifier(("a", "b"))
    backbone = EncoderBackbone(model, tok)
    before = backbone.fingerprint()
    peft_model = get_peft_model(backbone.model, lora_config(backbone, LoraSettings()))
    for p in peft_model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)  # a "trained" adapter and head
    detach(backbone, peft_model)
    assert backbone.fingerprint() == before
