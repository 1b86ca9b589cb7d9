"""The OpenAI-compatible HTTP server: one base model, every user's adapter, mixed batches.

    GET  /v1/models               the base and the users' adapters (`<base>:<user_id>`)
    POST /v1/completions          text completion (stream or not)
    POST /v1/chat/completions     chat: the last user message is the task input
    GET  /health
    POST/DELETE /admin/adapters/{user_id}, GET /admin/adapters, POST /admin/tokens

The `model` field selects the user; the base name alone means no adapter. A user's
token reaches the base and their own adapter only.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ownlm.backbone.base import ANSWER_SEP, CausalBackbone
from ownlm.errors import StoreError
from ownlm.serve import protocol as P
from ownlm.serve.auth import Principal, TokenStore
from ownlm.serve.batcher import Batcher
from ownlm.serve.cache import AdapterCache, AdapterRemoved
from ownlm.serve.engine import Engine, Request
from ownlm.serve.personalize import Personalizer
from ownlm.store import AdapterStore


class TokenBody(BaseModel):
    user: str | None = None
    admin: bool = False


@dataclass
class ServeSettings:
    cache_size: int = 64  # adapters held in memory (LRU); also the number of LoRA slots
    max_batch_size: int = 16  # rows per forward pass
    max_wait_ms: float = 10  # how long the first request of a batch waits for company
    default_max_tokens: int = 16  # when a request names no max_tokens (OpenAI's default)


def stored_max_rank(store: AdapterStore, floor: int = 8) -> int:
    """Largest LoRA rank in the store, so every stored adapter fits a slot."""
    rank = floor
    for name in store.names("user"):
        cfg = json.loads((store.path(name) / "adapter_config.json").read_text())
        rank = max(rank, cfg.get("r", 0), *(cfg.get("rank_pattern") or {0: 0}).values())
    return rank


class Server:
    def __init__(
        self,
        backbone: CausalBackbone,
        store: AdapterStore,
        tokens: TokenStore,
        settings: ServeSettings,
        personalizer: Personalizer | None = None,
    ):
        if settings.cache_size < settings.max_batch_size:
            raise ValueError(
                f"cache_size={settings.cache_size} must be >= max_batch_size={settings.max_batch_size}: every row of a batch needs a slot"
            )
        self.backbone, self.store, self.tokens = backbone, store, tokens
        self.settings, self.personalizer = settings, personalizer
        self.base = backbone.name
        fingerprint = backbone.fingerprint()  # before the slots are installed into the model
        self.engine = Engine(
            backbone.model,
            backbone.tokenizer,
            settings.cache_size,
            stored_max_rank(store),
            backbone.max_len,
        )
        self.cache = AdapterCache(self.engine.lora, store, fingerprint)
        self.batcher = Batcher(
            self.engine, self.cache, settings.max_batch_size, settings.max_wait_ms
        )

    # -- model names ----------------------------------------------------------------
    def model_ids(self, who: Principal) -> list[str]:
        users = [n.partition(":")[2] for n in self.store.names("user")]
        return [self.base] + [
            f"{self.base}:{u}" for u in users if who.may_use(u) and u not in self.cache.removed
        ]

    def resolve(self, model: str, who: Principal) -> str | None:
        """The user whose adapter `model` names (None = the base); checks access."""
        if model == self.base:
            return None
        base, sep, user = model.partition(":")
        if base != self.base or not sep or not user:
            raise P.ApiError(
                404,
                f"model {model!r} does not exist; use {self.base!r} or '{self.base}:<user_id>' (GET /v1/models lists them)",
                "model",
                "model_not_found",
            )
        if not who.may_use(user):
            raise P.ApiError(
                403,
                f"this token may not use model {model!r}; a user token reaches '{self.base}:<its own user>' only",
                "model",
                "permission_denied",
            )
        if not self.cache.servable(user):
            raise P.ApiError(
                404,
                f"model {model!r} does not exist: user {user!r} has no adapter being served",
                "model",
                "model_not_found",
            )
        return user

    # -- one request ----------------------------------------------------------------
    def build(self, body: P._Sampling, user: str | None, text: str, chat: bool) -> Request:
        body.check()
        if body.ownlm_personalize and self.personalizer and self.personalizer.has(user):
            text = self.personalizer.prompt(user, text)
        elif chat:
            text = text + ANSWER_SEP  # chat asks for an answer: the format the model learned
        max_tokens = (
            getattr(body, "max_completion_tokens", None)
            or body.max_tokens
            or self.settings.default_max_tokens
        )
        ids = self.backbone.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise P.ApiError(400, "prompt is empty; send at least one token of text", "prompt")
        if len(ids) + max_tokens > self.engine.max_len:
            raise P.ApiError(
                400,
                f"prompt is {len(ids)} tokens and max_tokens is {max_tokens}: over the context of {self.engine.max_len} tokens; shorten the prompt or lower max_tokens",
                "messages" if chat else "prompt",
                "context_length_exceeded",
            )
        return Request(
            ids=ids,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=body.stops(),
            seed=body.seed,
        )


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        server.batcher.start()
        yield
        await server.batcher.stop()

    app = FastAPI(title="ownlm", lifespan=lifespan)
    app.add_exception_handler(P.ApiError, P.api_error_handler)
    app.add_exception_handler(RequestValidationError, P.validation_error_handler)

    def principal(authorization: str | None = Header(default=None)) -> Principal:
        if not authorization or not authorization.startswith("Bearer "):
            raise P.ApiError(
                401,
                "missing API key: send 'Authorization: Bearer <token>' (create one with `ownlm token create --user U`)",
                code="invalid_api_key",
            )
        who = server.tokens.check(authorization.removeprefix("Bearer ").strip())
        if who is None:
            raise P.ApiError(
                401,
                "unknown API key; create one with `ownlm token create --user U`",
                code="invalid_api_key",
            )
        return who

    def admin(who: Principal = Depends(principal)) -> Principal:
        if not who.admin:
            raise P.ApiError(
                403,
                "this endpoint needs an admin token (`ownlm token create --admin`)",
                code="permission_denied",
            )
        return who

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "base": server.base,
            "loaded_adapters": len(server.cache.loaded()),
            "batches": server.batcher.batches,
            "rows": server.batcher.rows,
        }

    @app.get("/v1/models")
    async def models(who: Principal = Depends(principal)):
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "ownlm"}
            for m in server.model_ids(who)
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: P.CompletionBody, who: Principal = Depends(principal)):
        user = server.resolve(body.model, who)
        req = await run_in_threadpool(server.build, body, user, body.text(), False)
        job = await server.batcher.submit(req, user, body.stream)
        cid = P.new_id("cmpl")
        if body.stream:
            return _stream(job, lambda text, fin: P.completion(cid, body.model, text, fin))
        out = await _result(job)
        return P.completion(
            cid,
            body.model,
            out.text,
            out.finish_reason,
            P.usage(out.prompt_tokens, len(out.tokens)),
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: P.ChatBody, who: Principal = Depends(principal)):
        user = server.resolve(body.model, who)
        req = await run_in_threadpool(server.build, body, user, body.last_user_text(), True)
        job = await server.batcher.submit(req, user, body.stream)
        cid = P.new_id("chatcmpl")
        if body.stream:
            first = P.chat_chunk(cid, body.model, {"role": "assistant", "content": ""}, None)
            return _stream(
                job,
                lambda text, fin: P.chat_chunk(
                    cid, body.model, {"content": text} if fin is None else {}, fin
                ),
                first,
            )
        out = await _result(job)
        return P.chat(
            cid,
            body.model,
            out.text,
            out.finish_reason,
            P.usage(out.prompt_tokens, len(out.tokens)),
        )

    # -- admin ----------------------------------------------------------------------
    @app.get("/admin/adapters")
    async def loaded(_: Principal = Depends(admin)):
        return {"loaded": server.cache.loaded(), "removed": sorted(server.cache.removed)}

    @app.post("/admin/adapters/{user_id}")
    async def load_adapter(user_id: str, _: Principal = Depends(admin)):
        try:
            slot = await run_in_threadpool(server.cache.reload, user_id)
        except StoreError as e:
            raise P.ApiError(404 if "no adapter" in str(e) else 409, str(e), "user_id") from e
        return {
            "user": user_id,
            "model": f"{server.base}:{user_id}",
            "slot": slot,
            "status": "loaded",
        }

    @app.delete("/admin/adapters/{user_id}")
    async def remove_adapter(user_id: str, _: Principal = Depends(admin)):
        was_loaded = await run_in_threadpool(server.cache.remove, user_id)
        return {"user": user_id, "was_loaded": was_loaded, "status": "removed"}

    @app.post("/admin/tokens")
    async def new_token(body: TokenBody, _: Principal = Depends(admin)):
        try:
            return {
                "token": server.tokens.create(body.user, body.admin),
                "user": body.user,
                "admin": body.admin,
            }
        except ValueError as e:
            raise P.ApiError(400, str(e), "user") from e

    return app


async def _result(job):
    try:
        return await job.result()
    except AdapterRemoved as e:
        raise P.ApiError(404, str(e), "model", "model_not_found") from e
    except StoreError as e:
        raise P.ApiError(409, str(e), "model") from e
    except ValueError as e:
        raise P.ApiError(400, str(e)) from e


def _stream(job, chunk, first: dict | None = None) -> StreamingResponse:
    """Server-sent events: `data: {chunk}` per piece of text, a final chunk, `data: [DONE]`."""

    async def events():
        if first is not None:
            yield P.sse(first)
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield P.sse(chunk(value, None))
            elif kind == "done":
                yield P.sse(chunk("", value.finish_reason))
                break
            else:
                yield P.sse(
                    {
                        "error": {
                            "message": str(value),
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                break
        yield P.sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def build_server(
    run_dir: Path, settings: ServeSettings | None = None, personalize: bool = True
) -> Server:
    """A Server over a trained run: <run>/base, <run>/adapters, <run>/tokens.json."""
    from ownlm.backbone.load import load_base

    run_dir = Path(run_dir)
    backbone = load_base(run_dir / "base")
    if not isinstance(backbone, CausalBackbone):
        raise StoreError(
            f"run {run_dir} has a {backbone.kind} base; only causal LMs generate text to serve"
        )
    personalizer = Personalizer.from_run(run_dir) if personalize else None
    return Server(
        backbone,
        AdapterStore(run_dir / "adapters"),
        TokenStore(run_dir),
        settings or ServeSettings(),
        personalizer,
    )
