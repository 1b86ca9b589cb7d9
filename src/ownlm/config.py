"""Typed experiment configuration: every settings dataclass of ownlm lives here.

One YAML per experiment in `configs/` mirrors these dataclasses; every field carries its
help text, which `ownlm <command> --help` lists. Command-line overrides use dotted keys:
`--set user.lr=1e-3 --set retrieval_k=2`. This module imports no torch, so that the CLI
answers `--help` at once.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ownlm.errors import ConfigError, shown
from ownlm.safe_yaml import load_yaml


@dataclass
class TinyConfig:
    """Size and pre-training schedule of the embedded tiny Llama."""

    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary size"})
    hidden_size: int = field(default=256, metadata={"help": "model width d"})
    layers: int = field(default=4, metadata={"help": "transformer blocks"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    intermediate_size: int = field(default=688, metadata={"help": "FFN width"})
    max_len: int = field(default=384, metadata={"help": "context length in tokens"})
    epochs: float = field(default=3.0, metadata={"help": "pre-training epochs over the corpus"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (cosine decay)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    min_steps: int = field(
        default=150, metadata={"help": "at least this many steps, for small corpora"}
    )
    seed: int = field(default=0, metadata={"help": "initialisation and shuffling seed"})


@dataclass
class ProperSettings:
    """PROPER's group and user stages (Zhang et al. 2025). Defaults sized for the demo."""

    groups: int = field(default=4, metadata={"help": "number of group LoRA experts G"})
    groups_choices: list[int] | None = field(
        default=None,
        metadata={
            "help": "assignment 'user': candidate G, e.g. [2, 4, 6]: stage 2 is trained for "
            "each and the one with the best dev-user validation is kept (needs dev users); "
            "empty = use `groups`"
        },
    )
    assignment: str = field(
        default="user",
        metadata={
            "help": "how stage 2 routes: 'user' (each train user is in one group, found by "
            "likelihood EM from a k-means start; one gate vector per user for every layer) "
            "or 'token' (per-layer, per-token routers on the token and a user embedding)"
        },
    )
    em_rounds: int = field(
        default=4,
        metadata={
            "help": "assignment 'user': rounds of (train each expert on its members for "
            "epochs/em_rounds, reassign every train user to the expert that best explains "
            "their history)"
        },
    )
    features: str = field(
        default="outputs",
        metadata={
            "help": "assignment 'user': what k-means starts the groups from: 'outputs' (a "
            "user's label histogram, or mean MiniLM embedding of their answers) or "
            "'outputs+inputs' (with their history embedding concatenated)"
        },
    )
    r: int = field(default=8, metadata={"help": "rank of each group expert"})
    alpha: float = field(default=8.0, metadata={"help": "group experts' LoRA alpha"})
    targets: list[str] | None = field(
        default=None,
        metadata={
            "help": "modules carrying the experts; empty = the FFN's layers (gate/up/down_proj for Llama, c_fc,mlp.c_proj for GPT-2, intermediate/output dense for MiniLM)"
        },
    )
    user_dim: int = field(default=16, metadata={"help": "size of the learned user embedding"})
    top_k: int = field(default=0, metadata={"help": "experts per token (0 = dense gating)"})
    balance: float = field(
        default=0.1, metadata={"help": "weight of the switch load-balancing term (stage 2)"}
    )
    diversity: float = field(
        default=0.5,
        metadata={
            "help": "weight of the user-group term (stage 2): minus the user/expert mutual "
            "information, so each user picks a group and the groups stay diverse"
        },
    )
    lr: float = field(default=5e-4, metadata={"help": "stage-2 learning rate (AdamW)"})
    epochs: float = field(default=2.0, metadata={"help": "stage-2 passes over all train pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimiser step"})
    user_r: int = field(default=8, metadata={"help": "rank r_u of each user's residual LoRA"})
    user_alpha: float = field(default=8.0, metadata={"help": "alpha of the user LoRA"})
    user_lr: float = field(default=1e-4, metadata={"help": "stage-3 learning rate (AdamW)"})
    user_epochs: float = field(default=2.0, metadata={"help": "stage-3 passes per user"})
    new_user: str = field(
        default="projection",
        metadata={
            "help": "how a user without a stage-2 row gets their embedding: 'projection' (PCA "
            "of their history embedding, as the table was initialised) or 'neighbours' (mean "
            "learned embedding of the train users with the most similar histories)"
        },
    )
    neighbours: int = field(default=3, metadata={"help": "train users averaged by 'neighbours'"})
    monitor: str = field(
        default="auto",
        metadata={
            "help": "'user' assignment: what stage 2's early stopping watches on the dev "
            "users: 'loss', 'metric', or 'auto' (the metric for label tasks, else "
            "validation.monitor); confident experts can raise the dev loss while they "
            "answer better"
        },
    )
    route_new: str = field(
        default="auto",
        metadata={
            "help": "'user' assignment: how a user stage 2 did not train on joins a group with "
            "no training (and where stage 3 starts): 'likelihood' (their history items' "
            "likelihood under each expert), 'answers' (how often each group's members gave "
            "their labels to such inputs: a TF-IDF logistic regression per group; label tasks), 'auto' (answers for label "
            "tasks, likelihood otherwise)"
        },
    )
    router_lr: float = field(
        default=5e-2,
        metadata={
            "help": "learning rate of the routing parameters: routers and user embeddings "
            "(stage 2), the user's embedding or gate logits (stage 3; a sparse user takes "
            "few steps, which must be enough to move them to another group)"
        },
    )


@dataclass
class LoraSettings:
    """One stage's LoRA and optimisation. Defaults are OPPU's (Tan et al. 2024, Sec. 4)."""

    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=8, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    targets: list[str] | None = field(
        default=None,
        metadata={
            "help": "modules to adapt; empty = PEFT's default for the model type (q_proj,v_proj for Llama, Qwen2, Mistral, Gemma; c_attn for GPT-2; query,value for MiniLM)"
        },
    )
    lr: float = field(default=1e-4, metadata={"help": "learning rate (AdamW)"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the training pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimiser step"})


@dataclass
class UserSettings(LoraSettings):
    """The user stage: OPPU's per-user adapter (Tan et al. 2024, Sec. 4 defaults: a LoRA),
    its PEFT method, and how many users train together in one batch."""

    method: str = field(
        default="lora",
        metadata={
            "help": "the user adapter's PEFT method (docs/peft_methods.md): lora (r, alpha, "
            "dropout, targets), ia3 (rescaling vectors on keys, values and the feed-forward: "
            "k_proj,v_proj,down_proj for Llama; key,value,output.dense for MiniLM), prompt "
            "(virtual_tokens learned input embeddings; causal backbones only). Only LoRA "
            "users are served by `ownlm serve` and vLLM"
        },
    )
    virtual_tokens: int = field(
        default=8, metadata={"help": "method=prompt: learned virtual tokens per user"}
    )
    users_per_batch: int = field(
        default=16,
        metadata={
            "help": "users trained together in one batch, each row applying its own user's "
            "LoRA (mLoRA's idea; exactly what each would learn alone, bar dropout's random "
            "masks); 1 = one user after another. The MiniLM backbone, and methods other "
            "than lora, always train one by one"
        },
    )
    chunk_rows: int = field(
        default=16,
        metadata={
            "help": "batched users: rows run through the model at once, their gradients "
            "accumulated (the same result at any size); peak memory grows with chunk_rows x "
            "context length (docs/own_model.md's table): lower it when a batch runs out of "
            "GPU memory"
        },
    )

    def __post_init__(self):
        self.method = str(self.method).strip().lower()  # "IA3" is ia3


@dataclass
class ValidationSettings:
    """Held-out users that tell whether a stage learned (stages that learn, #12). Dev
    users are taken out of the train users by user, not by item: a stage exists to serve
    users it never saw, so it is judged on users it never saw. Stages 1 and 2 (and the
    tiny pre-training) validate on their items every epoch, stop early, keep the best
    state; `ownlm tune` splits each dev user's history to choose the user stage's budget."""

    dev_frac: float = field(
        default=0.15,
        metadata={
            "help": "fraction of the non-test users held out as dev users (validation, "
            "tuning); 0 = none: stages train the fixed epochs without validation"
        },
    )
    patience: int = field(
        default=2, metadata={"help": "validations without improvement before a stage stops"}
    )
    monitor: str = field(
        default="loss",
        metadata={"help": "what early stopping watches: loss (validation LM loss) or metric"},
    )
    max_items: int = field(
        default=200,
        metadata={"help": "at most this many dev items per validation (a seeded sample)"},
    )


@dataclass
class TuneSettings:
    """`ownlm tune`: the user stage's learning rate and epochs chosen on the dev users
    (#12). Each dev user's history is split in history order, the last `val_frac`
    validating what a user LoRA trained on the rest learned; every learning rate of the
    grid trains once per dev user for up to `max_epochs`, validated after each epoch,
    and the (lr, epochs) with the best mean validation metric is the run's."""

    lr_factors: list[float] = field(
        default_factory=lambda: [1 / 3, 1.0, 3.0],
        metadata={"help": "learning rates tried, as multiples of the configured one"},
    )
    max_epochs: int = field(
        default=0,
        metadata={"help": "longest budget tried, in epochs; 0 = twice the configured (at least 4)"},
    )
    val_frac: float = field(
        default=0.25,
        metadata={"help": "each dev user's last fraction of history items validates (>= 1 item)"},
    )
    min_items: int = field(
        default=3, metadata={"help": "dev users with fewer history items are left out"}
    )
    max_users: int | None = field(
        default=None, metadata={"help": "tune on at most the first N dev users (empty: all)"}
    )

    def __post_init__(self):
        """Every factor a positive finite number: a learning rate of 0 learns nothing."""
        bad = [f for f in self.lr_factors if not (isinstance(f, int | float) and 0 < f < math.inf)]
        if not self.lr_factors or bad:
            raise ConfigError(
                f"config key 'tune.lr_factors' is {shown(self.lr_factors)}; it must list positive "
                "numbers, e.g. --set tune.lr_factors=[0.333,1,3]"
            )


@dataclass
class UpdateSettings:
    """`ownlm update`: a user's OPPU adapter continued on new history items
    (docs/update.md). Not a training key: an update records its budget in the manifest."""

    lr: float | None = field(
        default=None, metadata={"help": "learning rate (empty: the user stage's, tuned or not)"}
    )
    epochs: float = field(default=1.0, metadata={"help": "epochs over the new items"})


@dataclass
class ServeSettings:
    """`ownlm serve`: how many adapters stay loaded, how requests are batched, and the
    limits that keep one client from taking the server's memory or time."""

    cache_size: int = field(
        default=64, metadata={"help": "user adapters held in memory (LRU); also the LoRA slots"}
    )
    max_batch_size: int = field(default=16, metadata={"help": "rows per forward pass"})
    max_wait_ms: float = field(
        default=10, metadata={"help": "how long a batch's first request waits for company"}
    )
    default_max_tokens: int = field(
        default=16, metadata={"help": "when a request names no max_tokens (OpenAI's default)"}
    )
    device: str = field(default="auto", metadata={"help": "where the base runs (as the run's)"})
    dtype: str = field(default="auto", metadata={"help": "precision of the base (as the run's)"})
    max_body_bytes: int = field(
        default=4 * 2**20,
        metadata={"help": "largest request body; a larger one is refused (413) before it is read"},
    )
    max_prompt_tokens: int = field(
        default=0,
        metadata={"help": "longest prompt in tokens, checked before model work (0 = context)"},
    )
    max_queued: int = field(
        default=1024,
        metadata={"help": "requests waiting for a batch at most; more are refused (429)"},
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata={
            "help": "seconds a connection has to send a request's headers (from connecting, "
            "or from its previous response); a slower one is answered 408 and closed"
        },
    )
    max_connections: int = field(
        default=512,
        metadata={
            "help": "open connections at most (and below the file-descriptor limit); past "
            "it, the one waiting longest for its headers is closed to make room"
        },
    )

    def __post_init__(self):
        """The limits, checked where they are set: a server must never start unlimited."""
        ints = (("max_body_bytes", 1), ("max_prompt_tokens", 0), ("max_queued", 1))
        for name, low in (*ints, ("max_connections", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"ServeSettings.{name} is {shown(value)}; it must be an integer >= {low} "
                    f"(default {getattr(ServeSettings, name)})"
                )
        t = self.header_timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < math.inf:
            raise ConfigError(
                f"ServeSettings.header_timeout_s is {shown(t)}; it must be a number of "
                "seconds > 0 (default 10)"
            )


@dataclass
class ExperimentConfig:
    """An OPPU experiment: data, backbone, the stages' settings, and what to evaluate."""

    name: str = field(
        default="experiment", metadata={"help": "run name; outputs go to <output_dir>/<name>"}
    )
    data: str = field(
        default="demo-tags",
        metadata={
            "help": "a dataset path (LaMP users.json folder, LaMP *_questions.json, PEFT-U folder/CSV, JSONL) or a built-in demo: demo-tags, demo-headlines"
        },
    )
    task: str | dict | None = field(
        default=None,
        metadata={
            "help": "task name (e.g. LaMP-2, studemo-valence), a YAML task file "
            "(path/to/task.yaml) or a task mapping (docs/data.md); inferred from the data when empty"
        },
    )
    backbone: str = field(
        default="tiny",
        metadata={
            "help": "tiny (embedded Llama trained here), minilm (pretrained encoder, label tasks), or an HF causal LM directory / hub id"
        },
    )
    output_dir: str = field(default="runs", metadata={"help": "parent folder of run directories"})
    device: str = field(
        default="auto",
        metadata={
            "help": "where models run: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps"
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "precision of the frozen base: auto (bfloat16 on a GPU that has it, float32 "
            "on CPU), float32, bfloat16, float16; adapters train and are saved in float32"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute activations in the backward pass (less GPU memory, slower)"},
    )
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "4bit: load an HF causal base in 4-bit NF4 for QLoRA-style training, "
            "serving and export (CUDA, or the CPU slowly; pip install 'ownlm[qlora]'); "
            "empty: the base in `dtype`"
        },
    )
    context_length: int | None = field(
        default=None,
        metadata={
            "help": "tokens a prompt and its answer may fill at training, evaluation and "
            "serving; empty = the model's own (max_position_embeddings) up to 4096, for "
            "memory; the tiny backbone's is tiny.max_len. A longer prompt gives up its least "
            "relevant retrieved items, then its profile (docs/serving.md)"
        },
    )
    prompt_format: str = field(
        default="auto",
        metadata={
            "help": "how prompts reach the model: auto (the tokenizer's chat template when it "
            "has one, else plain), plain (the tokenizer's special tokens such as BOS, the "
            "prompt, '\\nAnswer: '), chat (the chat template); recorded with the base"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for splits, sampling and initialisation"})
    test_frac: float = field(
        default=0.3,
        metadata={"help": "fraction of users held out as test users (last in file order)"},
    )
    max_users: int | None = field(
        default=None, metadata={"help": "use only the first N users (quick runs)"}
    )
    max_history: int | None = field(
        default=None,
        metadata={
            "help": "keep only each user's last N history items (bounds training time on long histories)"
        },
    )
    max_queries: int | None = field(
        default=None, metadata={"help": "evaluate at most N queries per test user"}
    )
    retrieval_k: int = field(
        default=1,
        metadata={"help": "history items retrieved by BM25 into each prompt (OPPU's code uses 1)"},
    )
    profile: bool = field(
        default=True, metadata={"help": "add the user's statistical profile to PAG/OPPU prompts"}
    )
    tiny: TinyConfig = field(
        default_factory=TinyConfig, metadata={"help": "size and pre-training of the tiny Llama"}
    )
    population: LoraSettings = field(
        default_factory=lambda: LoraSettings(lr=5e-4, epochs=2.0),
        metadata={"help": "stage 1: task-level LoRA on all train users, merged into the base"},
    )
    user: UserSettings = field(
        default_factory=UserSettings,
        metadata={"help": "stage 3: one fresh LoRA per test user (OPPU)"},
    )
    proper: ProperSettings = field(
        default_factory=ProperSettings,
        metadata={"help": "PROPER's group experts (stage 2) and user routers (stage 3)"},
    )
    validation: ValidationSettings = field(
        default_factory=ValidationSettings,
        metadata={"help": "dev users, early stopping and tuning (stages that learn)"},
    )
    tune: TuneSettings = field(
        default_factory=TuneSettings,
        metadata={"help": "how `ownlm tune` chooses the user stage's lr and epochs"},
    )
    update: UpdateSettings = field(
        default_factory=UpdateSettings,
        metadata={"help": "`ownlm update`: the budget of an incremental update"},
    )
    methods: list[str] = field(
        default_factory=lambda: ["base", "rag", "pag", "peft", "oppu"],
        metadata={"help": "methods to evaluate side by side (references are always added)"},
    )
    decode: str = field(
        default="auto",
        metadata={
            "help": "how a label is picked from the model's label distribution for scoring: "
            "argmax (the most likely), median (least expected absolute error: ordinal "
            "tasks scored by MAE), auto (median for ordinal tasks, else argmax)"
        },
    )
    n_boot: int = field(
        default=1000,
        metadata={
            "help": "bootstrap resamples of the test users behind each table's 95% intervals "
            "and paired tests (docs/evaluation.md)"
        },
    )
    boot_seed: int = field(
        default=0,
        metadata={"help": "seed of the bootstrap draws, the same draws for every method"},
    )

    @property
    def run_dir(self) -> Path:
        """<output_dir>/<name>; a name that would lead elsewhere is refused."""
        if self.name in ("", ".", "..") or any(c in self.name for c in "/\\\0"):
            raise ConfigError(
                f"run name {shown(self.name)} must be a plain folder name (no '/', '\\' or '..'); "
                "outputs go to <output_dir>/<name>: set output_dir to choose the parent folder"
            )
        return Path(self.output_dir) / self.name


# Keys that leave what a run learns unchanged. A run records every other key, its
# training keys, in <run>/run.json: `ownlm train` refuses to resume a run under other
# training keys, and `ownlm eval` takes only these from the command line.
EVAL_KEYS = ("methods", "max_queries", "decode", "n_boot", "boot_seed")  # evaluated, not trained
RUNTIME_KEYS = (  # where the run lives and how fast it runs: the same adapters come out
    "name",
    "output_dir",
    "device",
    "dtype",
    "gradient_checkpointing",
    "user.users_per_batch",  # batched users learn what each would alone
    "user.chunk_rows",  # rows per forward: the same gradients, accumulated
)
# How `ownlm tune` searches: what it chose is recorded in run.json, and each user
# adapter records the lr and epochs it was trained with, so another search is no
# change of what the run was trained from (adapters of another budget are retrained).
TUNE_KEYS = ("tune.lr_factors", "tune.max_epochs", "tune.val_frac", "tune.min_items",
             "tune.max_users")  # fmt: skip
UPDATE_KEYS = ("update.lr", "update.epochs")  # `ownlm update`: its manifest records them


def training_values(cfg: ExperimentConfig) -> dict:
    """Every training key of `cfg`, dotted as `--set` spells it, with its value."""

    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[prefix + key] = value
        return out

    return {
        k: v
        for k, v in flat(dataclasses.asdict(cfg)).items()
        if k not in EVAL_KEYS + RUNTIME_KEYS + TUNE_KEYS + UPDATE_KEYS
    }


def _coerce(tp, value, key: str):
    """Turn a YAML/CLI value into the field's declared type, or name the problem."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args or tp is typing.Any:
            return None
        raise ConfigError(f"config key {key!r} cannot be empty")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null", ""):
            return None
        if isinstance(value, dict) and dict in inner:  # a `task:` mapping, checked where read
            return value
        return _coerce(inner[0], value, key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"config key {key!r}: {shown(value)} is not a list; write a,b or [a, b]"
            )
        return [_coerce(args[0], v, key) for v in value]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping of {tp.__name__} fields")
        return build(tp, value, prefix=key + ".")
    try:
        return _scalar(tp, value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(
            f"config key {key!r}: {shown(value)} is not a valid {getattr(tp, '__name__', tp)}"
        ) from e


def _scalar(tp, value):
    """`tp(value)` without Python's silent conversions: True as 1, 8.7 as 8, a list as
    the string "[...]"; those raise ValueError instead."""
    if tp is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(value)
    if isinstance(value, bool | list | dict):
        raise ValueError(value)
    if tp is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return tp(value)


# -- valid values ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    """The valid values of a numeric setting, checked at load so that `--set user.r=0`
    fails in one line before any work; `str()` says them as messages and --help do."""

    low: float
    strict: bool = False  # `low` itself is invalid (a learning rate must be > 0)
    high: float | None = None  # exclusive upper bound (dropout < 1)

    def __contains__(self, value) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.strict else value >= self.low
        return above and (self.high is None or value < self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.strict else '>='} {self.low:g}"
        return f"in {'(' if self.strict else '['}{self.low:g}, {self.high:g})"


@dataclass(frozen=True)
class Choice:
    """The valid values of a string setting (`cuda:N` stands for any GPU index); the
    case-insensitive spelling `ownlm.backbone.device` resolves."""

    names: tuple[str, ...]

    def __contains__(self, value) -> bool:
        v = str(value).strip().lower()
        return v in self.names or ("cuda:N" in self.names and re.fullmatch(r"cuda:\d+", v))

    def __str__(self) -> str:
        return "one of " + ", ".join(self.names)


AT_LEAST_1, AT_LEAST_0, POSITIVE = Bound(1), Bound(0), Bound(0, strict=True)
LORA_RULES = {"r": AT_LEAST_1, "alpha": POSITIVE, "dropout": Bound(0, high=1), "lr": POSITIVE,
              "epochs": POSITIVE, "batch_size": AT_LEAST_1}  # fmt: skip
# Every numeric or choice setting's valid values, by settings class (ServeSettings
# checks its own). Epochs may be fractional (`train.loop.batch_plan`), so only > 0.
VALID: dict[type, dict[str, Bound | Choice]] = {
    LoraSettings: LORA_RULES,
    UserSettings: {**LORA_RULES, "users_per_batch": AT_LEAST_1, "virtual_tokens": AT_LEAST_1,
                   "chunk_rows": AT_LEAST_1,
                   "method": Choice(("lora", "ia3", "prompt"))},
    TinyConfig: {**dict.fromkeys(("vocab_size", "hidden_size", "layers", "heads",
                                  "intermediate_size", "batch_size"), AT_LEAST_1),
                 "max_len": Bound(2), "epochs": POSITIVE, "lr": POSITIVE,
                 "min_steps": AT_LEAST_0, "seed": AT_LEAST_0},
    ProperSettings: {**dict.fromkeys(("groups", "r", "user_dim", "batch_size", "user_r",
                                      "neighbours"), AT_LEAST_1),
                     **dict.fromkeys(("alpha", "lr", "epochs", "user_alpha", "user_lr",
                                      "user_epochs", "router_lr"), POSITIVE),
                     **dict.fromkeys(("top_k", "balance", "diversity"), AT_LEAST_0),
                     "new_user": Choice(("projection", "neighbours")),
                     "assignment": Choice(("user", "token")), "em_rounds": AT_LEAST_1,
                     "features": Choice(("outputs", "outputs+inputs")),
                     "route_new": Choice(("auto", "likelihood", "answers")),
                     "monitor": Choice(("auto", "loss", "metric"))},
    ValidationSettings: {"dev_frac": Bound(0, high=1), "patience": AT_LEAST_1,
                         "monitor": Choice(("loss", "metric")), "max_items": AT_LEAST_1},
    UpdateSettings: {"epochs": POSITIVE},
    TuneSettings: {"max_epochs": AT_LEAST_0, "val_frac": Bound(0, strict=True, high=1),
                   "min_items": Bound(2), "max_users": AT_LEAST_1},
    ExperimentConfig: {"device": Choice(("auto", "cpu", "cuda", "cuda:N", "mps")),
                       "dtype": Choice(("auto", "float32", "bfloat16", "float16")),
                       "quantize": Choice(("4bit",)), "seed": AT_LEAST_0,
                       "context_length": Bound(2),
                       "prompt_format": Choice(("auto", "plain", "chat")),
                       "n_boot": AT_LEAST_1, "boot_seed": AT_LEAST_0,
                       "decode": Choice(("auto", "argmax", "median")),
                       "test_frac": Bound(0, strict=True, high=1), "retrieval_k": AT_LEAST_0,
                       **dict.fromkeys(("max_users", "max_history", "max_queries"), AT_LEAST_1)},
}  # fmt: skip


def _check_values(obj, prefix: str) -> None:
    """Refuse a value outside its field's valid values, naming key, value and range."""
    defaults = type(obj)()
    for name, rule in VALID.get(type(obj), {}).items():
        value = getattr(obj, name)
        if value is None or value in rule:
            continue
        unset = " (or null for no limit)" if name.startswith("max_") else ""
        kind = "an integer " if isinstance(value, int) else ""
        example = getattr(defaults, name)
        raise ConfigError(
            f"config key {prefix + name!r} is {shown(value)}; it must be {kind}{rule}{unset}, "
            f"e.g. --set {prefix + name}={8 if example is None else example}"
        )
    _check_together(obj, prefix)


def _check_together(obj, prefix: str) -> None:
    """Settings that are only valid together."""
    if isinstance(obj, TinyConfig) and obj.hidden_size % (2 * obj.heads):
        raise ConfigError(
            f"config keys {prefix}hidden_size={obj.hidden_size} and {prefix}heads={obj.heads} "
            "do not fit: each head needs an even width, so hidden_size must be a multiple of "
            f"2 * heads, e.g. --set {prefix}hidden_size={2 * obj.heads * 32}"
        )
    if isinstance(obj, UserSettings) and obj.method != "lora" and obj.targets:
        raise ConfigError(
            f"config key {prefix}targets={obj.targets} names LoRA's modules, but "
            f"{prefix}method={shown(obj.method)} (IA3 adapts keys, values and the feed-forward; "
            f"prompt tuning no module): leave {prefix}targets empty, or use --set {prefix}method=lora"
        )
    if (
        isinstance(obj, ExperimentConfig)
        and obj.backbone == "minilm"
        and obj.user.method == "prompt"
    ):
        raise ConfigError(
            "config key user.method='prompt' needs a causal LM (prompt tuning prepends learned "
            "embeddings to the input; the MiniLM classifier takes token ids only): with "
            "backbone minilm use --set user.method=lora or --set user.method=ia3"
        )
    if isinstance(obj, ProperSettings) and obj.groups_choices:
        _check_groups_choices(obj, prefix)
    if isinstance(obj, ProperSettings) and obj.top_k > obj.groups:
        raise ConfigError(
            f"config key {prefix}top_k={obj.top_k} exceeds {prefix}groups={obj.groups}; "
            f"route to at most every expert (0 = dense gating), e.g. --set {prefix}top_k=0"
        )


def _check_groups_choices(obj, prefix: str) -> None:
    """`groups_choices`: integers >= 1, and only with the 'user' assignment."""
    bad = [g for g in obj.groups_choices if not isinstance(g, int) or g < 1]
    if bad:
        raise ConfigError(
            f"config key {prefix}groups_choices={obj.groups_choices} holds {bad}; each "
            f"candidate G must be an integer >= 1, e.g. --set {prefix}groups_choices=[2,4,6]"
        )
    if obj.assignment != "user":
        raise ConfigError(
            f"config key {prefix}groups_choices is only for {prefix}assignment=user (got "
            f"{shown(obj.assignment)}); use --set {prefix}assignment=user or --set {prefix}groups_choices=[]"
        )


def build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {_listed(prefix + str(u) for u in unknown)}; "
            f"valid keys: {sorted(prefix + n for n in names)}"
        )
    defaults = cls()
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(v, dict):
            base = dataclasses.asdict(getattr(defaults, f.name))
            base.update(v)
            v = base
        kwargs[f.name] = _coerce(hints[f.name], v, prefix + f.name)
    obj = cls(**kwargs)
    _check_values(obj, prefix)
    return obj


def _listed(keys, most: int = 5) -> str:
    """`['a', 'b']`, each key cut by `shown` and at most `most` of them: a file's keys are
    its author's to choose, and may be a megabyte long or a hundred thousand."""
    keys = sorted(keys)
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return f"[{', '.join(shown(k) for k in keys[:most])}]{more}"


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):  # `--set user=5 --set user.r=8`, or `r.x=1`
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {_cut(key)}: {shown(where)} is a value, not a group of keys")
    tree[parts[-1]] = value


def _read_yaml_file(p: Path) -> dict:
    """A config file's mapping: UTF-8 (a BOM is fine), YAML, a mapping at the top."""
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise ConfigError(f"config file {p} {what}; see configs/ for examples")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {p} is not UTF-8 (byte {e.object[e.start]:#04x} at offset "
            f"{e.start}); re-encode it as UTF-8"
        ) from None
    values = load_yaml(text, f"config file {p}") or {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {p} must hold a mapping of keys to values (key: value lines), "
            f"not a {type(values).__name__}; see configs/ for examples"
        )
    return values


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML config (optional) and apply `key=value` overrides (dotted for nesting)."""
    values: dict = {} if path is None else _read_yaml_file(Path(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {shown(item)} must look like key=value, e.g. user.lr=1e-3")
        value = load_yaml(raw, f"the value of --set {_cut(item)}") if raw.strip() else None
        _set_dotted(values, key.strip(), value)
    return build(ExperimentConfig, values)


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def describe_fields(cls=ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for every field, nested ones dotted: the CLI's help text."""
    rows = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(type(value), prefix + f.name + ".")
        else:
            rule = VALID.get(cls, {}).get(f.name)
            help_ = f.metadata.get("help", "") + (f" [{rule}]" if isinstance(rule, Bound) else "")
            rows.append((prefix + f.name, repr(value), help_))
    return rows
