"""What the HTTP routes serve: one base model, the users' adapters in LoRA slots, a batcher.

`Server` names the models (`<base>` and `<base>:<user_id>`), resolves a request's model
to a user it may reach, and turns a request body into an engine `Request`, its prompt
measured against the limits before any model work. A user whose adapter left the store
(`ownlm forget` in another process) is dropped from memory: slot, retrieval index,
profile. The routes (`serve.routes`) reach it through `get_server`, from `app.state.server`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request as HttpRequest

from ownlm.adapters import peft_io
from ownlm.adapters.methods import adapter_method, how_served
from ownlm.backbone.base import CausalBackbone
from ownlm.backbone.context import fit_ids
from ownlm.config import ServeSettings
from ownlm.data.checks import user_id_problem  # the one rule; also the routes'
from ownlm.errors import ConfigError, StoreError
from ownlm.log import get_logger
from ownlm.paths import RunPaths
from ownlm.serve.batcher import Batcher
from ownlm.serve.cache import AdapterCache, served_key, split_key
from ownlm.serve.engine import Engine, Request
from ownlm.serve.errors import ApiError
from ownlm.serve.personalize import Personalizer
from ownlm.serve.protocol import SamplingBody
from ownlm.serve.variants import ServedVariants, served_variants
from ownlm.store import AdapterStore, Principal, TokenStore
from ownlm.store.guard import ForgottenUsers, forgotten_key
from ownlm.variants import SERVE_ORDER, VARIANTS

log = get_logger(__name__)


def _user_paths(store: AdapterStore) -> list[Path]:
    """The stored user LoRAs whose PEFT config and weight header can be read; one that
    cannot (a corrupt file) is left out with a warning, not a server that fails to
    start: a request for it is refused (409) when the store's checks read it. Adapters
    of other PEFT methods (IA3, prompt tuning) are left out with one warning saying
    what serves them; a request for one is refused (409) with the same words."""
    paths, others = [], {}
    for name in store.names("user"):
        path = store.path(name)
        try:
            method = adapter_method(path)
            if method != "lora":
                others.setdefault(method, []).append(name)
                continue
            peft_io.max_rank([path])
            peft_io.target_names([path])
        except Exception as e:  # safetensors, JSON and OS errors alike
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            log.warning(
                "adapter %s in %s is unreadable (%s); not served until it is retrained",
                name,
                store.root,
                first,
                extra={"markup": False},
            )
            continue
        paths.append(path)
    for method, names in others.items():
        log.warning(
            "%d user adapters in %s are not LoRA (%s) and are not served: %s",
            len(names),
            store.root,
            ", ".join(names[:3]) + (", ..." if len(names) > 3 else ""),
            how_served(method),
            extra={"markup": False},
        )
    return paths


def stored_max_rank(store: AdapterStore, floor: int = 8) -> int:
    """Largest LoRA rank in the store, so every stored adapter fits a slot."""
    return peft_io.max_rank(_user_paths(store), floor=floor)


def stored_targets(store: AdapterStore, default: tuple[str, ...]) -> tuple[str, ...]:
    """The modules the stored user adapters adapt (e.g. ("k_proj", "o_proj")), so the
    engine batches exactly those; `default` (the backbone's) when no user has one yet."""
    return tuple(sorted(peft_io.target_names(_user_paths(store)))) or tuple(default)


class Server:
    def __init__(
        self,
        backbone: CausalBackbone,
        store: AdapterStore,
        tokens: TokenStore,
        settings: ServeSettings,
        personalizer: Personalizer | None = None,
        variants: ServedVariants | None = None,
    ):
        if settings.cache_size < settings.max_batch_size:
            raise ConfigError(
                f"cache_size={settings.cache_size} must be >= max_batch_size={settings.max_batch_size}: "
                "every row of a batch needs a slot; raise cache_size or lower max_batch_size"
            )
        self.backbone, self.store, self.tokens = backbone, store, tokens
        self.settings, self.personalizer = settings, personalizer
        self.forgotten = ForgottenUsers(tokens.run_dir)  # marked by a forget, maybe cut short
        self.base = backbone.name
        fingerprint = backbone.fingerprint()  # before the slots are installed into the model
        variants = variants or ServedVariants()
        targets = stored_targets(store, backbone.default_targets)
        if variants.targets:  # the modules every served variant adapts
            targets = tuple(sorted(set(stored_targets(store, ())) | variants.targets))
        log.info("batched LoRA slots on %s", ", ".join(targets))
        self.engine = Engine(
            backbone.model,
            backbone.tokenizer,
            settings.cache_size,
            max(stored_max_rank(store), variants.rank),
            backbone.max_len,
            targets,
        )
        self.cache = AdapterCache(self.engine.lora, store, fingerprint, variants.served)
        self.batcher = Batcher(
            self.engine,
            self.cache,
            settings.max_batch_size,
            settings.max_wait_ms,
            settings.max_queued,
        )
        self.max_prompt_tokens = settings.max_prompt_tokens or self.engine.max_len
        # no token is longer than this: a text over max_prompt_tokens * this many
        # characters is too long without tokenizing it (added tokens included)
        self.max_token_chars = max(map(len, backbone.tokenizer.get_vocab()), default=1)

    # -- model names ----------------------------------------------------------------
    def model_ids(self, who: Principal) -> list[str]:
        """The base and the users' models this token may use: a user token sees its own
        model only, never other users' names."""
        if not who.admin:  # a few stats, not a listing of every user's folder
            own = who.user is not None and who.user not in self.forgotten
            own = own and self.served_key(who.user) is not None
            return [self.base] + ([f"{self.base}:{who.user}"] if own else [])
        stores = [self.cache.served(v).store for v in self.cache.variant_names]
        users = sorted({n.partition(":")[2] for s in stores for n in s.names("user")})
        gone, marked = set(self.cache.removed), self.forgotten.keys()  # one stat per listing
        return [self.base] + [
            f"{self.base}:{u}" for u in users if u not in gone and forgotten_key(u) not in marked
        ]

    def served_key(self, user: str, variant: str | None = None) -> str | None:
        """The cache key of the adapter `<base>:<user>` answers with: `variant`'s, or the
        first of `SERVE_ORDER` the user has (None: none is served)."""
        for v in [variant] if variant else [*SERVE_ORDER, *self.cache.variant_names]:
            key = served_key(user, v)
            if v in self.cache.variant_names and self.cache.servable(key):
                return key
        return None

    def resolve(self, model: str, who: Principal) -> str | None:
        """The cache key of the adapter `model` names (None = the base): `<base>:<user>`
        or `<base>:<user>@<variant>`; checks access. Blocks briefly when it drops a
        user forgotten meanwhile: call it off the event loop."""
        if model == self.base:
            return None
        base, sep, user = model.partition(":")
        user, variant = named_variant(user)
        problem = user_id_problem(user) if sep else "no ':<user_id>'"
        if base != self.base or problem:
            raise ApiError(
                404,
                f"model {model[:100]!r} does not exist ({problem or 'another base'}); use "
                f"{self.base!r} or '{self.base}:<user_id>' (GET /v1/models lists them)",
                "model",
                "model_not_found",
            )
        if not who.may_use(user):
            raise ApiError(
                403,
                f"this token may not use model {model!r}; a user token reaches '{self.base}:<its own user>' only",
                "model",
                "permission_denied",
            )
        key = None if user in self.forgotten else self.served_key(user, variant)
        if key is None:
            if user in self.forgotten or not self.cache.stored_variants(user):
                self.forget(user)  # forgotten by another process: out of memory too
            kind = f"{variant} adapter" if variant else "adapter"
            what = f"user {user!r} has no {kind} being served"
            if variant and variant not in self.cache.variant_names:
                served = ", ".join(self.cache.variant_names)
                what = f"{variant} models are not served (this server serves {served})"
            raise ApiError(
                404,
                f"model {model!r} does not exist: {what}",
                "model",
                "model_not_found",
            )
        return key

    # -- forgotten users ------------------------------------------------------------
    def forget(self, user: str) -> None:
        """Drop a user whose adapter left the store: slot, index, profile, history."""
        self.cache.drop(user)
        if self.personalizer is not None:
            self.personalizer.forget(user)

    def forget_gone(self) -> list[str]:
        """Drop every user held in memory whose adapter is no longer stored."""
        held = {split_key(k)[0] for k in [*self.cache.loaded(), *self.cache.removed]}
        if self.personalizer is not None:
            held |= self.personalizer.built()
        gone = sorted(u for u in held if not self.cache.stored_variants(u))
        for user in gone:
            self.forget(user)
        return gone

    # -- one request ----------------------------------------------------------------
    def build(self, body: SamplingBody, key: str | None, text: str, chat: bool) -> Request:
        """The engine request for `text`: checked against the prompt limit (before any
        model work), personal context added (when on), in the run's prompt format as
        evaluation builds it (`backbone.prompt_format`; a completion without personal
        context is continued as is), checked against the context length."""
        body.check()
        user = None if key is None else split_key(key)[0]  # every variant reads its prompts
        field = "messages" if chat else "prompt"
        ids = self.prompt_ids(text, field)
        max_tokens = (
            getattr(body, "max_completion_tokens", None)
            or body.max_tokens
            or self.settings.default_max_tokens
        )
        personal = body.ownlm_personalize and self.personalizer and self.personalizer.has(user)
        if personal or chat:  # an answer is asked for: the format the model learned
            prompt = self.personalizer.prompt(user, text) if personal else text
            budget = self.engine.max_len - max_tokens  # retrieved items, profile give way
            ids = fit_ids(self.backbone.prompt_format, prompt, budget, cut_middle=False)
        if len(ids) + max_tokens > self.engine.max_len:
            raise ApiError(
                400,
                f"prompt is {len(ids)} tokens and max_tokens is {max_tokens}: over the context of {self.engine.max_len} tokens; shorten the prompt or lower max_tokens",
                field,
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

    def tokenize(self, text: str) -> list[int]:
        """A completion's text as the model continues it (leading special tokens too)."""
        return self.backbone.prompt_format.raw_ids(text)

    def prompt_ids(self, text: str, field: str) -> list[int]:
        """The client's text as tokens, refused (400) when empty or over
        `max_prompt_tokens`; a text that cannot fit is refused before it is tokenized."""
        limit = self.max_prompt_tokens
        if len(text) > limit * self.max_token_chars:
            raise ApiError(
                400,
                f"{field} has {len(text)} characters: more than {limit} tokens (the prompt "
                f"limit, max_prompt_tokens) can hold, as no token of this model is longer than "
                f"{self.max_token_chars} characters; shorten it",
                field,
                "context_length_exceeded",
            )
        try:  # JSON's "\ud800" escapes give Python text no tokenizer takes (a 500 before)
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ApiError(
                400,
                f"{field} is not valid UTF-8 text: a lone surrogate ({text[e.start]!r}) at "
                f"character {e.start}; send each character whole (an escaped pair "
                r"'\ud83d\ude00' is fine)",
                field,
            ) from None
        ids = self.tokenize(text)
        if len(ids) <= len(self.tokenize("")):  # the leading special tokens alone
            raise ApiError(400, f"{field} is empty; send at least one token of text", field)
        if len(ids) > limit:
            raise ApiError(
                400,
                f"{field} is {len(ids)} tokens, over the limit of {limit} tokens "
                "(max_prompt_tokens); shorten it",
                field,
                "context_length_exceeded",
            )
        return ids


def get_server(request: HttpRequest) -> Server:
    """FastAPI dependency: the Server `create_app` put on the app's state."""
    return request.app.state.server


def _recover(run_dir: Path) -> list[str]:
    """`Run.recover` for a trained run (its cut-short swaps and updates), the stores'
    and files' part alone for a bare served directory (no config.yaml)."""
    from ownlm.run import Run, recover

    if not RunPaths(run_dir).config.exists():
        return recover(run_dir)
    return Run.open(run_dir).recover()


def build_server(
    run_dir: Path, settings: ServeSettings | None = None, personalize: bool = True
) -> Server:
    """A Server over a trained run: <run>/base, <run>/adapters, <run>/tokens.json."""
    from ownlm.backbone.device import resolve_device, resolve_dtype
    from ownlm.backbone.load import load_base

    run_dir = Path(run_dir)
    settings = settings or ServeSettings()
    for done in _recover(run_dir):  # writes cut short by a kill: finished or rolled back
        log.info(f"start-up: {done}")
    device = resolve_device(settings.device)
    backbone = load_base(RunPaths(run_dir).base(), device, resolve_dtype(settings.dtype, device))
    if not isinstance(backbone, CausalBackbone):
        raise StoreError(
            f"run {run_dir} has a {backbone.kind} base; only causal LMs generate text to serve"
        )
    personalizer = Personalizer.from_run(run_dir) if personalize else None
    return Server(
        backbone,
        AdapterStore(RunPaths(run_dir).store()),
        TokenStore(run_dir),
        settings,
        personalizer,
        served_variants(run_dir, backbone.fingerprint()),
    )


def named_variant(name: str) -> tuple[str, str | None]:
    """`<user>@<variant>` -> (user, variant) when the part after the last "@" is a
    variant ownlm trains; else (name, None): a user id may hold "@" (an e-mail)."""
    user, sep, variant = name.rpartition("@")
    return (user, variant) if sep and variant in VARIANTS else (name, None)
