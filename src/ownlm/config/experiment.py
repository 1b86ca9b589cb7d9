"""An experiment's settings: data, backbone, each stage's settings, and what to evaluate;
and which keys are training keys (what a run records it was trained with)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ownlm.config.backbone import TinyConfig
from ownlm.config.fields import ANY_GPU, setting
from ownlm.config.lora import LoraSettings, UserSettings
from ownlm.config.presets import PRESET_CHOICES
from ownlm.config.proper import ProperSettings
from ownlm.config.stages import TuneSettings, UpdateSettings, ValidationSettings
from ownlm.errors import ConfigError, shown


@dataclass
class ExperimentConfig:
    """An OPPU experiment: data, backbone, the stages' settings, and what to evaluate."""

    # The loader's pydantic validation: a number where a string is expected is that
    # string (`--set name=2024`), as YAML users expect.
    __pydantic_config__ = {"coerce_numbers_to_str": True}

    name: str = setting("experiment", "run name; outputs go to <output_dir>/<name>")
    data: str = setting(
        "demo-tags",
        "a dataset path (LaMP users.json folder, LaMP *_questions.json, PEFT-U folder/CSV, "
        "JSONL) or a built-in demo: demo-tags, demo-headlines, demo-rewrite",
    )
    task: str | dict | None = setting(
        None,
        "task name (e.g. LaMP-2, studemo-valence), a YAML task file (path/to/task.yaml) or a "
        "task mapping (docs/data.md); inferred from the data when empty",
    )
    backbone: str = setting(
        "tiny",
        "tiny (embedded Llama trained here), minilm (pretrained encoder, label tasks), or an "
        "HF causal LM directory / hub id",
    )
    preset: str = setting(
        "auto",
        "budgets for the keys left unset, by backbone size (docs/validation.md): auto (small "
        "for tiny and causal LMs under 100M parameters, encoder for minilm, paper otherwise), "
        "small, encoder, paper (OPPU's 7B values: the dataclass defaults)",
        choices=PRESET_CHOICES,
    )
    output_dir: str = setting("runs", "parent folder of run directories")
    device: str = setting(
        "auto",
        "where models run: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N, mps",
        choices=("auto", "cpu", "cuda", ANY_GPU, "mps"),
    )
    dtype: str = setting(
        "auto",
        "precision of the frozen base: auto (bfloat16 on a GPU that has it, float32 on CPU), "
        "float32, bfloat16, float16; adapters train and are saved in float32",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass (less GPU memory, slower)"
    )
    quantize: str | None = setting(
        None,
        "4bit: load an HF causal base in 4-bit NF4 for QLoRA-style training, serving and "
        "export (CUDA, or the CPU slowly; pip install 'ownlm[qlora]'); empty: the base in "
        "`dtype`",
        choices=("4bit",),
    )
    context_length: int | None = setting(
        None,
        "tokens a prompt and its answer may fill at training, evaluation and serving; empty = "
        "the model's own (max_position_embeddings) up to 4096, for memory; the tiny "
        "backbone's is tiny.max_len. A longer prompt gives up its least relevant retrieved "
        "items, then its profile (docs/serving.md)",
        ge=2,
    )
    prompt_format: str = setting(
        "auto",
        "how prompts reach the model: auto (the tokenizer's chat template when it has one, "
        "else plain), plain (the tokenizer's special tokens such as BOS, the prompt, "
        "'\\nAnswer: '), chat (the chat template); recorded with the base",
        choices=("auto", "plain", "chat"),
    )
    seed: int = setting(0, "seed for splits, sampling and initialisation", ge=0)
    test_frac: float = setting(
        0.3, "fraction of users held out as test users (last in file order)", gt=0, lt=1
    )
    max_users: int | None = setting(None, "use only the first N users (quick runs)", ge=1)
    max_history: int | None = setting(
        None,
        "keep only each user's last N history items (bounds training time on long histories)",
        ge=1,
    )
    max_queries: int | None = setting(None, "evaluate at most N queries per test user", ge=1)
    retrieval_k: int = setting(
        1, "history items retrieved by BM25 into each prompt (OPPU's code uses 1)", ge=0
    )
    profile: bool = setting(True, "add the user's statistical profile to PAG/OPPU prompts")
    tiny: TinyConfig = setting(factory=TinyConfig, help="size and pre-training of the tiny Llama")
    population: LoraSettings = setting(
        factory=lambda: LoraSettings(lr=5e-4, epochs=2.0),
        help="stage 1: task-level LoRA on all train users, merged into the base",
    )
    user: UserSettings = setting(
        factory=UserSettings, help="stage 3: one fresh LoRA per test user (OPPU)"
    )
    proper: ProperSettings = setting(
        factory=ProperSettings,
        help="PROPER's group experts (stage 2) and user routers (stage 3)",
    )
    validation: ValidationSettings = setting(
        factory=ValidationSettings,
        help="dev users, early stopping and tuning (stages that learn)",
    )
    tune: TuneSettings = setting(
        factory=TuneSettings, help="how `ownlm tune` chooses the user stage's lr and epochs"
    )
    update: UpdateSettings = setting(
        factory=UpdateSettings, help="`ownlm update`: the budget of an incremental update"
    )
    methods: list[str] = setting(
        factory=lambda: ["base", "rag", "pag", "peft", "oppu"],
        help="methods to evaluate side by side (references are always added)",
    )
    decode: str = setting(
        "auto",
        "how a label is picked from the model's label distribution for scoring: argmax (the "
        "most likely), median (least expected absolute error: ordinal tasks scored by MAE), "
        "auto (median for ordinal tasks, else argmax)",
        choices=("auto", "argmax", "median"),
    )
    n_boot: int = setting(
        1000,
        "bootstrap resamples of the test users behind each table's 95% intervals and paired "
        "tests (docs/evaluation.md)",
        ge=1,
    )
    boot_seed: int = setting(
        0, "seed of the bootstrap draws, the same draws for every method", ge=0
    )

    @property
    def run_dir(self) -> Path:
        """<output_dir>/<name>; a name that would lead elsewhere is refused."""
        if self.name in ("", ".", "..") or any(c in self.name for c in "/\\\0"):
            raise ConfigError(
                f"run name {shown(self.name)} must be a plain folder name (no '/', '\\' or "
                "'..'); outputs go to <output_dir>/<name>: set output_dir to choose the parent "
                "folder"
            )
        return Path(self.output_dir) / self.name

    def check(self, prefix: str = "") -> None:
        """Settings of two groups valid only together: prompt tuning needs a causal LM."""
        if self.backbone == "minilm" and self.user.method == "prompt":
            raise ConfigError(
                f"config key {prefix}user.method='prompt' needs a causal LM (prompt tuning "
                "prepends learned embeddings to the input; the MiniLM classifier takes token "
                "ids only): with backbone minilm use --set user.method=lora or --set "
                "user.method=ia3"
            )


# Keys that leave what a run learns unchanged. A run records every other key, its
# training keys, in <run>/run.json: `ownlm train` refuses to resume a run under other
# training keys, and `ownlm eval` takes only these from the command line.
EVAL_KEYS = ("methods", "max_queries", "decode", "n_boot", "boot_seed")  # evaluated, not trained
RUNTIME_KEYS = (  # where the run lives and how fast it runs: the same adapters come out
    "preset",  # it only fills other keys, which are recorded with the values it gave
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
TUNE_KEYS = ("tune.auto", "tune.min_dev_users", "tune.lr_factors", "tune.max_epochs",
             "tune.val_frac", "tune.min_items", "tune.max_users")  # fmt: skip
UPDATE_KEYS = ("update.lr", "update.epochs")  # `ownlm update`: its manifest records them


def dotted(tree: dict, prefix: str = "") -> dict:
    """A nested mapping flattened to dotted keys, as `--set` spells them."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def training_values(cfg: ExperimentConfig) -> dict:
    """Every training key of `cfg`, dotted as `--set` spells it, with its value."""
    untrained = EVAL_KEYS + RUNTIME_KEYS + TUNE_KEYS + UPDATE_KEYS
    return {k: v for k, v in dotted(dataclasses.asdict(cfg)).items() if k not in untrained}
