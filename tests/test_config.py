import dataclasses
import time
import typing
from pathlib import Path

import pytest

from ownlm.config import (
    ExperimentConfig,
    LoraSettings,
    ProperSettings,
    ServeSettings,
    TinyConfig,
    TuneSettings,
    UpdateSettings,
    UserSettings,
    ValidationSettings,
    describe_fields,
    load_config,
)
from ownlm.errors import ConfigError

SETTINGS = (LoraSettings, UserSettings, ProperSettings, TinyConfig, ValidationSettings,
            TuneSettings, UpdateSettings, ServeSettings, ExperimentConfig)  # fmt: skip
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_yaml_in_configs_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig) and cfg.name


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        None, ["user.lr=1e-3", "methods=base,oppu", "tiny.layers=2", "task=null", "profile=false"]
    )
    assert cfg.user.lr == 1e-3 and cfg.user.r == 8  # untouched nested defaults survive
    assert (
        cfg.methods == ["base", "oppu"]
        and cfg.tiny.layers == 2
        and cfg.task is None
        and cfg.profile is False
    )


def test_paper_defaults():
    u = ExperimentConfig().user
    assert (u.r, u.alpha, u.dropout, u.lr, u.epochs, u.batch_size) == (8, 8, 0.05, 1e-4, 2.0, 16)


@pytest.mark.parametrize(
    "override, message",
    [
        (["usr.lr=1"], "unknown config key.*usr"),
        (["user.lr=fast"], "user.lr.*not a valid float"),
        (["retrieval_k"], "key=value"),
        (["profile=maybe"], "profile"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_field_has_help():
    assert all(help_ for _, _, help_ in describe_fields())


# -- nonsense values: a ConfigError at load naming key, value and valid range ------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ("user.r=0", r"'user.r' is 0; it must be an integer >= 1, e.g. --set user.r=8"),
        ("population.r=-2", r"'population.r' is -2; it must be an integer >= 1"),
        ("user.lr=-1e-3", r"'user.lr' is -0.001; it must be > 0"),
        ("user.lr=0", r"'user.lr' is 0.0; it must be > 0"),
        ("user.lr=nan", r"'user.lr' is nan; it must be > 0"),
        ("user.lr=.inf", r"'user.lr' is inf; it must be > 0"),
        ("user.alpha=0", r"'user.alpha' is 0; it must be an integer > 0"),
        ("user.dropout=1", r"'user.dropout' is 1.0; it must be in \[0, 1\)"),
        ("population.dropout=-0.1", r"'population.dropout' is -0.1; it must be in \[0, 1\)"),
        ("user.epochs=0", r"'user.epochs' is 0.0; it must be > 0"),
        ("user.batch_size=0", r"'user.batch_size' is 0; it must be an integer >= 1"),
        ("user.users_per_batch=0", r"'user.users_per_batch' is 0; it must be an integer >= 1"),
        ("user.chunk_rows=0", r"'user.chunk_rows' is 0; it must be an integer >= 1"),
        ("test_frac=0", r"'test_frac' is 0.0; it must be in \(0, 1\)"),
        ("test_frac=1", r"'test_frac' is 1.0; it must be in \(0, 1\)"),
        ("retrieval_k=-1", r"'retrieval_k' is -1; it must be an integer >= 0"),
        ("max_users=0", r"'max_users' is 0; it must be an integer >= 1 \(or null for no limit\)"),
        ("max_history=-5", r"'max_history' is -5; it must be an integer >= 1"),
        ("max_queries=0", r"'max_queries' is 0"),
        ("seed=-1", r"'seed' is -1; it must be an integer >= 0"),
        ("dtype=float8", r"'dtype' is 'float8'; it must be one of auto, float32, bfloat16"),
        ("device=tpu", r"'device' is 'tpu'; it must be one of auto, cpu, cuda, cuda:N, mps"),
        ("device=cuda:x", r"'device' is 'cuda:x'"),
        ("quantize=8bit", r"'quantize' is '8bit'; it must be one of 4bit"),
        ("tiny.layers=0", r"'tiny.layers' is 0; it must be an integer >= 1"),
        ("tiny.max_len=1", r"'tiny.max_len' is 1; it must be an integer >= 2"),
        ("tiny.lr=0", r"'tiny.lr' is 0.0; it must be > 0"),
        ("tiny.min_steps=-1", r"'tiny.min_steps' is -1"),
        ("tiny.heads=3", r"tiny.hidden_size=256 and tiny.heads=3 do not fit"),
        ("proper.groups=0", r"'proper.groups' is 0"),
        ("proper.top_k=9", r"proper.top_k=9 exceeds proper.groups=4"),
        ("proper.balance=-1", r"'proper.balance' is -1.0; it must be >= 0"),
        ("proper.router_lr=0", r"'proper.router_lr' is 0.0; it must be > 0"),
        ("proper.user_epochs=0", r"'proper.user_epochs' is 0.0"),
        ("proper.new_user=random", r"'proper.new_user' is 'random'; it must be one of projection"),
        ("user.r=8.7", r"'user.r': 8.7 is not a valid int"),
        ("user.r=true", r"'user.r': True is not a valid int"),
        ("profile=7", r"'profile': 7 is not a valid bool"),
        ("data=[a, b]", r"'data': \['a', 'b'\] is not a valid str"),
        ("methods={a: 1}", r"'methods': \{'a': 1\} is not a list"),
        ("name=[unclosed", r"--set name=\[unclosed is not valid YAML: .* at line 1, column"),
        ("user.r.x=1", r"--set user.r.x: 'user.r' is a value, not a group of keys"),
    ],
)
def test_nonsense_values_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, ["user.r=8", override] if override.startswith("user.r.") else [override])
    assert "\n" not in str(err.value)


def test_a_value_then_a_group_under_it_is_refused():
    with pytest.raises(ConfigError, match="'user' is a value, not a group of keys"):
        load_config(None, ["user=5", "user.r=8"])


@pytest.mark.parametrize(
    "override",
    ["device=CUDA:1", "device=mps", "user.dropout=0", "retrieval_k=0", "test_frac=0.5",
     "max_users=null", "user.epochs=0.5", "user.r=8.0", "tiny.heads=8", "proper.top_k=4",
     "quantize=4bit", "seed=3"],
)  # fmt: skip
def test_edge_values_that_are_fine(override):
    load_config(None, [override])


def test_every_numeric_setting_has_a_valid_range():
    """A new numeric field must declare its range beside it (`setting(..., ge=1)`), where
    the loader and --help read it from the field's metadata (a list of numbers: its
    class's own check, as tune.lr_factors)."""
    from ownlm.config.fields import is_bounded

    for cls in SETTINGS:
        hints = typing.get_type_hints(cls)
        numeric = {
            f.name
            for f in dataclasses.fields(cls)
            if typing.get_origin(hints[f.name]) is not list
            and set(typing.get_args(hints[f.name]) or (hints[f.name],)) & {int, float}
        }
        bounded = {f.name for f in dataclasses.fields(cls) if is_bounded(f.metadata)}
        assert numeric <= bounded, (cls.__name__, numeric - bounded)


def test_help_lists_ranges():
    rows = {key: help_ for key, _, help_ in describe_fields()}
    assert rows["user.r"].endswith("[>= 1]") and rows["test_frac"].endswith("[in (0, 1)]")


# -- hostile config files ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, message",
    [
        ("- name: a\n- name: b\n", r"must hold a mapping of keys to values .*not a list"),
        ("just words\n", r"must hold a mapping .*not a str"),
        ("name: x\nbogus: 1\n", r"unknown config key\(s\) \['bogus'\]"),
        ("1: 2\n", r"unknown config key\(s\) \['1'\]"),
        ("user: 5\n", r"config key 'user' must be a mapping of UserSettings fields"),
        ("user:\n  r: 0\n", r"'user.r' is 0; it must be an integer >= 1"),
        ("name: [unclosed\n", r"is not valid YAML: .* at line 2, column 1; fix it"),
        ("user: {targets: 5}\n", r"'user.targets': 5 is not a list"),
    ],
)
def test_hostile_yaml_files(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_yaml_encoding_bom_and_directory(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: bom\n")
    assert load_config(path).name == "bom"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c.yaml is not UTF-8 \(byte 0xe9 at offset 9\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"is a directory, not a file"):
        load_config(tmp_path)


def test_a_billion_laughs_config_is_refused_at_once(tmp_path):
    """432 bytes of nested aliases stood for 10**6 values: 37 s, 1.1 GB and a 5 MB error
    line (issue #19, item 7)."""
    from tests.test_safe_yaml import laughs

    path = tmp_path / "c.yaml"
    path.write_text(laughs(6))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"c.yaml: its aliases .* repeat more than") as err:
        load_config(path)
    assert time.perf_counter() - start < 1.0 and len(str(err.value)) < 300


@pytest.mark.parametrize(
    "content",
    [
        "seed: " + "9x" * 50_000,
        "device: " + "cuda" * 50_000,
        "test_frac: [" + ", ".join(["0.5"] * 20_000) + "]",
        "user: {targets: {" + ", ".join(f"k{i}: 1" for i in range(20_000)) + "}}",
        "".join(f"k{i}: 1\n" for i in range(20_000)),
        "k" * 100_000 + ": 1\n",
    ],
    ids=["long-number", "long-choice", "long-list", "long-mapping", "many-keys", "long-key"],
)
def test_errors_cut_the_values_they_quote(tmp_path, content):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value)) < 1000 and "\n" not in str(err.value)


# -- bounds declared beside the fields, read from their metadata (issue #21 item 4) ---------------
def _bounded_keys():
    """(dotted key, field) for every bounded or choice field an experiment config loads."""
    from ownlm.config.fields import is_bounded

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(tp):
                yield from walk(tp, f"{prefix}{f.name}.")
            elif is_bounded(f.metadata) or "choices" in f.metadata:
                yield prefix + f.name, f

    return list(walk(ExperimentConfig, ""))


def _outside(meta) -> str:
    """A value just outside a field's bound (or not among its choices), as --set spells it."""
    if "choices" in meta:
        return "nonsense"
    if "lt" in meta:
        return str(meta["lt"])
    return str(meta["gt"]) if "gt" in meta else str(meta["ge"] - 1)


@pytest.mark.parametrize("key, field", _bounded_keys(), ids=[k for k, _ in _bounded_keys()])
def test_each_bounded_key_is_refused_outside_its_metadata_bound(key, field):
    from ownlm.config.fields import rule_text

    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={_outside(field.metadata)}"])
    message = str(err.value)
    assert "\n" not in message and f"'{key}' is " in message, message
    assert (
        f"it must be {'an integer ' if 'an integer' in message else ''}{rule_text(field.metadata)}"
        in message
    )
    assert f"e.g. --set {key}=" in message


def test_every_settings_class_has_its_bounds_in_field_metadata():
    """No table of bounds apart from the fields: each class declares them where it
    declares the fields (the loaded classes, and ServeSettings built from CLI options)."""
    import ownlm.config as config

    assert not hasattr(config, "VALID") and not hasattr(config, "LORA_RULES")
    keys = {key.rsplit(".", 1)[0] for key, _ in _bounded_keys() if "." in key}
    assert keys == {"tiny", "population", "user", "proper", "validation", "tune", "update"}


@pytest.mark.parametrize(
    "bad",
    [{"cache_size": 0}, {"max_batch_size": 0}, {"max_wait_ms": -1}, {"default_max_tokens": 0},
     {"max_body_bytes": 0}, {"max_prompt_tokens": -1}, {"max_queued": 0},
     {"header_timeout_s": 0}, {"header_timeout_s": float("inf")}, {"max_connections": 2.5},
     {"max_queued": True}],
)  # fmt: skip
def test_serve_settings_check_their_metadata_bounds_when_built(bad):
    name = next(iter(bad))
    with pytest.raises(
        ConfigError, match=rf"^ServeSettings\.{name} is .*; it must be .*\(default "
    ):
        ServeSettings(**bad)


# -- `--set key=value` typed by the field's type ----------------------------------------------------
@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("tiny.layers=2", "tiny.layers", 2),
        ("user.r=8.0", "user.r", 8),
        ("user.lr=1e-3", "user.lr", float("1e-3")),
        ("user.lr=3", "user.lr", 3.0),
        ("user.epochs=0.5", "user.epochs", 0.5),
        ("profile=no", "profile", False),
        ("gradient_checkpointing=true", "gradient_checkpointing", True),
        ("methods=base", "methods", ["base"]),
        ("methods=[base, oppu]", "methods", ["base", "oppu"]),
        ("user.targets=q_proj, v_proj", "user.targets", ["q_proj", "v_proj"]),
        ("user.targets=", "user.targets", None),
        ("max_users=none", "max_users", None),
        ("max_users=5", "max_users", 5),
        ("context_length=null", "context_length", None),
        ("proper.groups_choices=[2, 4]", "proper.groups_choices", [2, 4]),
        ("tune.lr_factors=0.5,2", "tune.lr_factors", [0.5, 2.0]),
        ("task={name: x}", "task", {"name": "x"}),
        ("task=LaMP-2", "task", "LaMP-2"),
        ("name=2024", "name", "2024"),
        ("user.method=IA3", "user.method", "ia3"),
        ("quantize=4bit", "quantize", "4bit"),
    ],
)
def test_set_values_take_the_fields_type(override, key, expected):
    cfg = load_config(None, [override])
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected), (value, expected)
    if isinstance(expected, float):
        assert value.hex() == expected.hex()


def test_a_group_keeps_its_own_defaults_when_one_key_is_set():
    """`population` defaults to lr 5e-4 (LoraSettings' own is 1e-4): setting its rank keeps it."""
    cfg = load_config(None, ["population.r=4", "preset=paper"])
    assert (cfg.population.r, cfg.population.lr, cfg.user.lr) == (4, 5e-4, 1e-4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("usr.lr=1", r"unknown config key\(s\) \['usr'\]; did you mean 'user'\?"),
        ("user.lrr=1", r"did you mean 'user.lr'\?"),
        ("user.r=", r"config key 'user.r' cannot be empty; give a value, e.g. --set user.r=8"),
        ("tune.lr_factors=[a]", r"'tune.lr_factors': 'a' is not a valid float"),
        ("proper.groups_choices=[true]", r"'proper.groups_choices': True is not a valid int"),
        ("test_frac=true", r"'test_frac': True is not a valid float"),
        ("update.lr=0", r"'update.lr' is 0.0; it must be > 0"),
    ],
)
def test_set_values_of_the_wrong_type_name_key_and_type(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_config_loading_leaves_help_free_of_pydantic():
    """`ownlm --help` reads the fields' help and bounds without the validator library."""
    import subprocess
    import sys

    code = "import sys, ownlm.cli, ownlm.config; print('pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# -- renamed keys keep loading ------------------------------------------------------------------
@pytest.fixture
def warned():
    """The lines ownlm logs while a test runs (its logger does not propagate to pytest's)."""
    import logging

    lines: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("ownlm")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


@pytest.fixture
def renamed(monkeypatch):
    """Two renames as a future version might make: a key, and a whole group."""
    from ownlm.config import load

    monkeypatch.setitem(load.RENAMED, "user.rank", "user.r")
    monkeypatch.setitem(load.RENAMED, "stage1", "population")
    return load.RENAMED


def test_an_old_key_loads_from_set_with_one_warning_naming_the_new(renamed, warned):
    cfg = load_config(None, ["user.rank=4", "stage1.lr=1e-3", "preset=paper"])
    assert (cfg.user.r, cfg.population.lr, cfg.population.epochs) == (4, 1e-3, 2.0)
    assert len(warned) == 2 and all("\n" not in w for w in warned)
    assert (
        "'user.rank' is now 'user.r'" in warned[0] and "'stage1' is now 'population'" in warned[1]
    )


def test_an_old_key_loads_from_a_file_and_an_old_run_record(renamed, warned, tmp_path):
    """A run directory's config.yaml (read by `Run.open` with load_config) and its
    run.json's training keys (through `renamed_values`) written before the rename."""
    from ownlm.config import renamed_values

    path = tmp_path / "config.yaml"
    path.write_text("user:\n  rank: 2\n  lr: 0.001\nstage1:\n  r: 6\n")
    cfg = load_config(path)
    assert (cfg.user.r, cfg.user.lr, cfg.population.r, cfg.population.lr) == (2, 1e-3, 6, 2e-3)
    assert any("user.r'" in w for w in warned)
    record = {"user.rank": 2, "stage1.r": 6, "seed": 0}
    assert renamed_values(record) == {"user.r": 2, "population.r": 6, "seed": 0}


def test_a_file_with_both_names_of_one_key_is_refused(renamed, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("user:\n  rank: 2\n  r: 4\n")
    with pytest.raises(ConfigError, match=r"sets both 'user.rank' and 'user.r'.*keep 'user.r'"):
        load_config(path)
