"""One interface over the two kinds of backbone every stage trains and evaluates.

`Backbone` is that interface. `CausalBackbone` wraps any Hugging Face causal LM (the
embedded tiny Llama, a local directory, a hub id): labels are scored by their
log-likelihood, text is generated greedily. `EncoderBackbone` wraps the MiniLM label
classifier. Both take the model to run as an argument, so the same backbone serves the
bare base and any PEFT wrapper of it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from ownlm.backbone.checksum import META_FILE, base_checksums
from ownlm.backbone.context import context_length, fit_ids
from ownlm.backbone.decode import pick_labels
from ownlm.backbone.device import model_device
from ownlm.backbone.encoder import EncoderClassifier
from ownlm.backbone.families import ffn_targets, lora_targets
from ownlm.backbone.heads import logits_at, token_losses
from ownlm.backbone.prompt_format import ANSWER_SEP as ANSWER_SEP  # read here by run, serve
from ownlm.backbone.prompt_format import PromptFormat


@runtime_checkable
class Backbone(Protocol):
    """What every stage, the evaluation and the server need of a backbone."""

    kind: str  # "causal" (generates, scores labels) or "encoder" (scores labels only)
    name: str
    model: nn.Module  # the bare base; a PEFT wrapper of it is passed where one is used
    tokenizer: object
    default_targets: tuple[str, ...]  # modules a LoRA adapts when the config names none
    ffn_targets: tuple[str, ...]  # the feed-forward layers, where PROPER's experts sit
    max_len: int

    def save(self, path: Path) -> None: ...

    def fingerprint(self) -> str:
        """The identity adapters are checked against: the one recorded when the base was
        written (`write_base_meta`), whatever precision it is loaded in, else computed."""
        ...

    def loss(self, model, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """Mean training loss of `model` on (prompt, target) pairs."""
        ...

    def item_losses(self, model, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """(N,) each pair's own loss (its mean over its target tokens), without the batch
        averaging of `loss`: what PROPER's likelihood assignment sums per user."""
        ...

    def score_labels(self, model, prompts: list[str], labels: tuple[str, ...]) -> torch.Tensor:
        """(N, L) log-probability of each label after each prompt."""
        ...

    def predict(
        self, model, task, prompts: list[str], batch_size: int = 16, decode: str = "argmax"
    ) -> list[str]:
        """One answer per prompt: the label `decode` picks ("argmax" or "median",
        `backbone.decode`), or generated text."""
        ...


def fingerprint_model(model: nn.Module) -> str:
    """sha256 over parameter names, shapes and a sample of values: cheap, and it changes
    when a LoRA is merged into the base, which is what adapters must be checked against."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        h.update(flat[::step][:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


class CausalBackbone:
    kind = "causal"
    recorded_fingerprint: str | None = None  # set by `load_base` from ownlm_base.json

    @property
    def default_targets(self) -> tuple[str, ...]:
        """PEFT's LoRA targets for this model type (`backbone.families`); () if none."""
        return lora_targets(self.model, required=False)

    @property
    def ffn_targets(self) -> tuple[str, ...]:
        return ffn_targets(self.model)

    def __init__(
        self,
        model,
        tokenizer,
        name: str = "causal",
        max_len: int | None = None,
        prompt_format: str = "auto",
    ):
        """`max_len`: the context length (default: the model's, `backbone.context`);
        `prompt_format`: auto, plain, chat (or bare), `backbone.prompt_format`."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.name = name
        self.max_len = context_length(model.config, max_len)
        self.prompt_format = PromptFormat(tokenizer, prompt_format)
        self._label_ids: dict[tuple[str, ...], list[list[int]]] = {}

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path,
        name: str | None = None,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
        prompt_format: str = "auto",
    ):
        """Load a Hugging Face causal LM in `dtype` (default: as saved) onto `device`;
        with quantize="4bit" its frozen linear layers are NF4 (QLoRA, bitsandbytes)."""
        if quantize:
            from ownlm.backbone.device import quantization_kwargs

            kwargs = quantization_kwargs(quantize, device, dtype)
            model = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path_or_id, **dtype_kwargs(dtype))
            # a base saved quantized comes back quantized, placed by bitsandbytes already
            if device is not None and not getattr(model, "is_loaded_in_4bit", False):
                model = model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(path_or_id)
        return cls(model, tokenizer, name or Path(str(path_or_id)).name, max_len, prompt_format)

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def fingerprint(self) -> str:
        return self.recorded_fingerprint or fingerprint_model(self.model)

    # -- tokenization ---------------------------------------------------------------
    def encode_pairs(self, prompts: list[str], targets: list[str], target_room: int = 0):
        """Right-padded (B, T) ids, mask and labels supervising only the answer's ids
        (`prompt_format`: the answer and the end of its turn). Each prompt is fitted
        to the context left after its answer, or after `target_room` tokens when more
        (`backbone.context.fit_ids`: personal context given up, the task kept)."""
        fmt, rows = self.prompt_format, []
        for prompt, target in zip(prompts, targets, strict=True):
            t = fmt.answer_ids(target)[: self.max_len // 2]
            room = min(max(len(t), target_room), self.max_len // 2)
            p = fit_ids(fmt, prompt, self.max_len - room)
            rows.append((p + t, [-100] * len(p) + t))
        return self._pad_right(rows)

    def _pad_right(self, rows):
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
        return ids, mask, labels

    # -- training -------------------------------------------------------------------
    def loss(self, model, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """Mean next-token cross-entropy over the batch's answer tokens (HF's `.loss`),
        the output head run at those positions only (`heads.token_losses`)."""
        ids, mask, labels = _to(model_device(model), *self.encode_pairs(prompts, targets))
        tok = token_losses(model, ids, mask, labels)  # (B, T-1)
        return tok.sum() / (labels[:, 1:] != -100).sum().clamp_min(1)

    def item_losses(self, model, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """(B,) each pair's mean cross-entropy over its answer tokens."""
        ids, mask, labels = _to(model_device(model), *self.encode_pairs(prompts, targets))
        tok = token_losses(model, ids, mask, labels)  # (B, T-1)
        return tok.sum(-1) / (labels[:, 1:] != -100).sum(-1).clamp_min(1)

    # -- inference ------------------------------------------------------------------
    @torch.no_grad()
    def score_labels(self, model, prompts: list[str], labels: tuple[str, ...]) -> torch.Tensor:
        """(N, L) log-probability of each label after each prompt.

        When every label starts with its own token (ratings, most tag sets), one forward
        pass per prompt scores them all: the log-probability of each label's first token,
        i.e. the greedy decoder's first step restricted to the label set. Otherwise each
        label's tokens (and the closing </s>) are scored in full, one pass per label.
        """
        device = model_device(model)
        answers = [self.prompt_format.answer_ids(label) for label in labels]
        room = max(map(len, answers))  # every label scored after the same prompt ids
        firsts = [ids[0] if len(ids) > 1 else None for ids in answers]  # ids end with EOS
        if None not in firsts and len(set(firsts)) == len(firsts):
            encoded = self.encode_pairs(prompts, [labels[0]] * len(prompts), room)
            ids, mask, lab = _to(device, *encoded)
            last = (lab != -100).float().argmax(-1) - 1  # predicts the label's first token
            sel = torch.zeros_like(ids, dtype=torch.bool)
            sel[torch.arange(len(prompts), device=device), last] = True  # one per prompt
            logp = logits_at(model, ids, mask, sel).log_softmax(-1)  # (N, V)
            return logp[:, firsts]  # (N, L)
        scores = torch.empty(len(prompts), len(labels), device=device)
        for j, label in enumerate(labels):
            encoded = self.encode_pairs(prompts, [label] * len(prompts), room)
            ids, mask, lab = _to(device, *encoded)
            scores[:, j] = -token_losses(model, ids, mask, lab).sum(-1)  # sum of log p
        return scores

    @torch.no_grad()
    def generate(self, model, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        budget = self.max_len - max_new_tokens
        rows = [fit_ids(self.prompt_format, p, budget) for p in prompts]
        width = max(len(r) for r in rows)
        ids, mask = _to(
            model_device(model),
            torch.tensor([[pad] * (width - len(r)) + r for r in rows]),
            torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows]),
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [t.split("\n")[0].strip() for t in texts]

    def predict(
        self, model, task, prompts: list[str], batch_size: int = 16, decode: str = "argmax"
    ) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            if task.labels:
                scores = self.score_labels(model, chunk, task.labels)
                out.extend(pick_labels(scores, task.labels, decode))
            else:
                out.extend(self.generate(model, chunk))
        return out


class EncoderBackbone:
    kind = "encoder"
    recorded_fingerprint: str | None = None  # set by `load_base` from ownlm_base.json
    default_targets = ("query", "value")
    # the FFN's two layers of each BERT block; regexes, since "output.dense" also names
    # the attention's output projection (attention.output.dense)
    ffn_targets = (r".*intermediate\.dense", r".*layer\.\d+\.output\.dense")
    modules_to_save = ("head",)

    def __init__(
        self, model: EncoderClassifier, tokenizer, name: str = "minilm", max_len: int = 384
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.truncation_side = "left"  # the task input comes last: keep it
        self.name = name
        self.max_len = max_len
        # PEFT's unload() keeps the adapter's trained copy of a modules_to_save module:
        # keep the base's own head to put back (see `detach`).
        self._saved = {
            m: {k: v.clone() for k, v in model.get_submodule(m).state_dict().items()}
            for m in self.modules_to_save
        }

    @classmethod
    def from_pretrained(
        cls,
        path: Path,
        name: str = "minilm",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        model, tok = EncoderClassifier.from_dir(path)
        return cls(model.to(device=device, dtype=dtype), tok, name)

    def save(self, path: Path) -> None:
        self.model.save(path, self.tokenizer)

    def fingerprint(self) -> str:
        return self.recorded_fingerprint or fingerprint_model(self.model)

    def _batch(self, prompts: list[str]):
        enc = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"]

    def loss(self, model, prompts: list[str], targets: list[str]) -> torch.Tensor:
        index = {label: i for i, label in enumerate(self.model.labels)}
        device = model_device(model)
        ids, mask = _to(device, *self._batch(prompts))
        y = torch.tensor([index[t] for t in targets], device=device)
        logits = model(input_ids=ids, attention_mask=mask).float()
        return nn.functional.cross_entropy(logits, y)

    def item_losses(self, model, prompts: list[str], targets: list[str]) -> torch.Tensor:
        index = {label: i for i, label in enumerate(self.model.labels)}
        device = model_device(model)
        ids, mask = _to(device, *self._batch(prompts))
        y = torch.tensor([index[t] for t in targets], device=device)
        logits = model(input_ids=ids, attention_mask=mask).float()
        return nn.functional.cross_entropy(logits, y, reduction="none")

    @torch.no_grad()
    def score_labels(self, model, prompts: list[str], labels: tuple[str, ...]) -> torch.Tensor:
        ids, mask = _to(model_device(model), *self._batch(prompts))
        return model(input_ids=ids, attention_mask=mask).float().log_softmax(-1)

    def predict(
        self, model, task, prompts: list[str], batch_size: int = 32, decode: str = "argmax"
    ) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            scores = self.score_labels(model, prompts[i : i + batch_size], task.labels)
            out.extend(pick_labels(scores, tuple(self.model.labels), decode))  # head order
        return out


def _to(device, *tensors):
    """The batch's tensors on the model's device (batches are built on the CPU)."""
    return tuple(t.to(device) for t in tensors)


def dtype_kwargs(dtype: torch.dtype | None) -> dict:
    """`from_pretrained`'s precision argument: `dtype` since transformers 4.56, before it
    `torch_dtype`. Empty when None (the saved precision)."""
    if dtype is None:
        return {}
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def describe(backbone) -> dict:
    """What `ownlm_base.json` says of a backbone; a causal one's prompt format too, so
    whatever loads the base (evaluation, serving, export) prompts it as it was trained."""
    out = {"kind": backbone.kind, "name": backbone.name, "fingerprint": backbone.fingerprint()}
    fmt = getattr(backbone, "prompt_format", None)
    return out if fmt is None else {**out, "prompt_format": fmt.name}


def write_base_meta(path: Path, backbone, **extra) -> None:
    """Write `ownlm_base.json` into a saved base: its kind, name and fingerprint, and the
    sha256 of every file already saved there, which `load_base` checks (call it last)."""
    meta = {**describe(backbone), **extra, "sha256": base_checksums(path)}
    (Path(path) / META_FILE).write_text(json.dumps(meta, indent=2))
