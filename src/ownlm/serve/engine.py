"""Batched generation for many users at once: one KV-cached decode loop, a slot per row.

Rows are left-padded so every row's next token sits in the last column; positions count
only real tokens, so a padded row computes exactly what it would alone. Each row picks
its own LoRA slot (see ownlm.adapters.batched), sampling settings, stop strings and
token budget; the loop ends when every row has finished.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ownlm.adapters.batched import BatchedLora, install_batched_lora
from ownlm.backbone.device import model_device
from ownlm.backbone.families import lora_targets
from ownlm.errors import RequestError


@dataclass
class Request:
    ids: list[int]
    slot: int = -1  # LoRA slot, -1 = the bare base
    max_tokens: int = 16
    min_tokens: int = 0  # </s> is masked out before this many tokens (HF's min_new_tokens)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    on_text: Callable[[str], None] | None = None  # streaming: called with each new piece of text


@dataclass
class Output:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"  # "stop" (</s> or a stop string) or "length"
    prompt_tokens: int = 0


class _Row:
    """Decoding state of one request: tokens so far, text emitted so far, finished?"""

    def __init__(self, req: Request, tokenizer):
        self.req, self.tok = req, tokenizer
        self.out = Output(prompt_tokens=len(req.ids))
        self.done = False
        self.emitted = 0
        self.hold = max((len(s) for s in req.stop), default=1) - 1  # chars a stop may still span
        self.gen = None
        if req.seed is not None:
            self.gen = torch.Generator().manual_seed(req.seed)

    def push(self, token: int, eos: int) -> None:
        if token == eos:
            self._finish("stop")
            return
        self.out.tokens.append(token)
        if self.req.stop or self.req.on_text is not None:  # text needed at every step
            self._check_text()
        if not self.done and len(self.out.tokens) >= self.req.max_tokens:
            self._finish("length")

    def _check_text(self) -> None:
        text = self.tok.decode(self.out.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.req.stop if s) if i >= 0), default=-1)
        if cut >= 0:
            self.out.text = text[:cut]
            self._finish("stop")
            return
        self.out.text = text
        safe = len(text) - self.hold
        if text.endswith("\ufffd"):  # a multi-byte character not complete yet
            safe = min(safe, len(text) - 1)
        self._emit(safe)

    def _emit(self, upto: int) -> None:
        if upto > self.emitted and self.req.on_text is not None:
            self.req.on_text(self.out.text[self.emitted : upto])
        self.emitted = max(self.emitted, upto)

    def _finish(self, reason: str) -> None:
        self.done = True
        self.out.finish_reason = reason
        if reason == "length" or not self.req.stop:  # a stop string has set the text already
            self.out.text = self.tok.decode(self.out.tokens, skip_special_tokens=True)
        self._emit(len(self.out.text))


def _pick(logits: torch.Tensor, rows: list[_Row], eos: int) -> list[int]:
    """Next token per row: (b, V) logits -> greedy, or temperature + nucleus (top_p) sampling."""
    early = [i for i, row in enumerate(rows) if len(row.out.tokens) < row.req.min_tokens]
    if early:
        logits[early, eos] = float("-inf")
    picks = logits.argmax(-1).tolist()
    for i, row in enumerate(rows):
        if row.req.temperature > 0 and not row.done:
            # sampled on the host: a request's seeded generator lives there. In float64,
            # shifted so the best logit is 0: any temperature the protocol accepts (1e-300
            # included) gives finite probabilities, never a NaN that fails the whole batch
            row_logits = logits[i].double().cpu()
            shifted = row_logits - row_logits.max()
            probs = torch.softmax(torch.nan_to_num(shifted / row.req.temperature, nan=0.0), -1)
            if row.req.top_p < 1.0:
                p, order = probs.sort(descending=True)
                keep = p.cumsum(-1) - p < row.req.top_p  # smallest prefix reaching top_p
                keep[0] = True  # at least the most likely token (top_p may be 1e-300)
                probs = torch.zeros_like(probs).scatter(0, order[keep], p[keep])
            picks[i] = int(torch.multinomial(probs, 1, generator=row.gen))
    return picks


class Engine:
    """An HF causal LM with batched LoRA slots installed, and the decode loop over it.

    `targets` names the layers (last name part, e.g. "o_proj") that get slots: exactly
    those the served adapters adapt (`serve.server.stored_targets`); by default PEFT's
    LoRA targets for the model's type (`backbone.families`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        n_slots: int,
        max_rank: int = 8,
        max_len: int = 384,
        targets: tuple[str, ...] | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_len = max_len
        targets = targets or lora_targets(model)
        self.lora: BatchedLora = install_batched_lora(model, n_slots, max_rank, targets)
        self.cache_arg = cache_argument(model)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.device = model_device(model)

    def check(self, req: Request) -> None:
        if len(req.ids) + req.max_tokens > self.max_len:
            raise RequestError(
                f"prompt has {len(req.ids)} tokens and max_tokens is {req.max_tokens}: together "
                f"over the model's context of {self.max_len}; shorten the prompt or lower max_tokens"
            )

    @torch.inference_mode()
    def generate(self, reqs: list[Request]) -> list[Output]:
        for req in reqs:
            self.check(req)
        rows = [_Row(r, self.tokenizer) for r in reqs]
        width = max(len(r.ids) for r in reqs)
        dev = self.device
        ids = torch.tensor(
            [[self.pad] * (width - len(r.ids)) + r.ids for r in reqs], device=dev
        )  # (b, T)
        mask = torch.tensor(
            [[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in reqs], device=dev
        )
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 in every row
        cache = DynamicCache()
        steps = max(r.max_tokens for r in reqs)
        with self.lora.use([r.slot for r in reqs]):
            logits = self._forward(ids, mask, pos, cache)
            for _ in range(steps):
                picks = _pick(logits, rows, self.eos)
                for row, tok in zip(rows, picks, strict=True):
                    if not row.done:
                        row.push(tok, self.eos)
                if all(row.done for row in rows):
                    break
                nxt = torch.tensor(
                    [[self.pad if r.done else t] for r, t in zip(rows, picks, strict=True)],
                    device=dev,
                )
                mask = torch.cat([mask, mask.new_ones(len(reqs), 1)], 1)
                pos = pos[:, -1:] + 1
                logits = self._forward(nxt, mask, pos, cache)
        return [row.out for row in rows]

    def _forward(self, ids, mask, pos, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            **{self.cache_arg: cache},
            logits_to_keep=1,
        )
        return out.logits[:, -1]  # (b, V)


def cache_argument(model) -> str:
    """The name under which `model.forward` takes its KV cache: `cache` since
    transformers 5.x (which warns that `past_key_values` goes in 5.40), else
    `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
