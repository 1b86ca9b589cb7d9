"""A mapping of values (a YAML file's, with `--set` overrides applied) made into typed
settings by pydantic, each problem one line naming the dotted key, the value and the fix.

Pydantic converts and bounds the values (the bounds are the fields' metadata, see
`ownlm.config.fields`) in its lax mode, which takes YAML's spellings: `1e-4` (a string to
YAML 1.1) as a float, 8.0 as the integer 8, an integer where a float is expected. Before
it, `prepared` does what pydantic cannot know: unknown keys (with the nearest valid one),
a group's unset keys from that group's own defaults (`population` has its own lr), and
the CLI's spellings (`a,b` for a list, `none` for empty, no True where a number goes).
After it, each settings class's `check()` refuses the values only valid together.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any

from ownlm.config.fields import admits, base_type, hints, rule_text
from ownlm.errors import ConfigError, shown

_EMPTY = ("none", "null", "")
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "finite_number"}


def validated(cls: type, values: dict) -> Any:
    """`cls` built from `values`, every key, type, bound and cross-field rule checked."""
    from pydantic import ValidationError

    ready = prepared(cls, values, "")
    try:
        obj = _adapter(cls).validate_python(ready)
    except ValidationError as e:
        raise ConfigError(_problem(cls, e.errors(include_url=False)[0])) from None
    _check_tree(obj, "")
    return obj


@functools.cache
def _adapter(cls: type):
    """Pydantic's validator of `cls`, built once per process (and only when a config is
    loaded, so that `ownlm --help` never imports pydantic)."""
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def prepared(cls: type, values: Any, prefix: str) -> dict:
    """`values` for `cls` with unknown keys refused, each nested group completed from its
    defaults, and the CLI's spellings put as pydantic reads them."""
    if not isinstance(values, dict):
        where = prefix[:-1] or "the config"
        raise ConfigError(f"config key {where!r} must be a mapping of {cls.__name__} fields")
    _refuse_unknown(cls, values, prefix)
    defaults, types = cls(), hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        key, value, tp = prefix + f.name, values[f.name], types[f.name]
        if dataclasses.is_dataclass(tp):
            group = prepared(tp, value, key + ".")
            out[f.name] = {**dataclasses.asdict(getattr(defaults, f.name)), **group}
        else:
            out[f.name] = _spelled(tp, value, key)
    return out


def _refuse_unknown(cls: type, values: dict, prefix: str) -> None:
    """An unknown key is a typo more often than not: name the nearest valid key."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in values if k not in names)
    if not unknown:
        return
    near = difflib.get_close_matches(unknown[0][:100], names, n=1)
    hint = f"did you mean {prefix + near[0]!r}? " if near else ""
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    listed = ", ".join(shown(prefix + k) for k in unknown[:5])
    raise ConfigError(
        f"unknown config key(s) [{listed}]{more}; {hint}valid keys: {sorted(prefix + n for n in names)}"
    )


def _spelled(tp: Any, value: Any, key: str) -> Any:
    """A value as the CLI may spell it, in the form pydantic validates: `none`/`null`/empty
    for an optional field is None; `a,b` for a list is ['a', 'b']; a bool where no bool
    goes is refused (pydantic would take True as 1)."""
    if isinstance(value, str) and admits(tp, type(None)) and value.strip().lower() in _EMPTY:
        return None
    if base_type(tp) is list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if base_type(tp) is list and isinstance(value, list):
        item = typing.get_args(_without_none(tp))[0]
        for v in value:
            _refuse_bool(item, v, key)
        return value
    _refuse_bool(tp, value, key)
    return value


def _refuse_bool(tp: Any, value: Any, key: str) -> None:
    """True and False are no numbers here: `user.r=true` is a mistake, not r=1."""
    if isinstance(value, bool) and not admits(tp, bool):
        raise ConfigError(f"config key {key!r}: {shown(value)} is not a valid {_type_name(tp)}")


def _without_none(tp: Any) -> Any:
    """`list[str]` for `list[str] | None`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, type(int | None)) else tp


def _type_name(tp: Any) -> str:
    """`int` for `int | None`, `str` for `str | dict | None`: the type messages name."""
    return getattr(base_type(tp), "__name__", str(tp))


def _problem(cls: type, error: dict) -> str:
    """Pydantic's first error as one line naming the dotted key, the value and the fix."""
    key, f, tp, in_list = _located(cls, error["loc"])
    value, kind = error["input"], error["type"]
    if value is None:
        return f"config key {key!r} cannot be empty; give a value, e.g. --set {key}={_example(f)}"
    if kind in _BOUND_ERRORS or kind == "string_pattern_mismatch":
        return _out_of_bounds(key, f, tp, value)
    if kind == "list_type":
        return f"config key {key!r}: {shown(value)} is not a list; write a,b or [a, b]"
    if kind.startswith("dataclass"):
        return f"config key {key!r} must be a mapping of {_type_name(tp)} fields"
    item = typing.get_args(_without_none(tp))[0] if in_list else tp
    return f"config key {key!r}: {shown(value)} is not a valid {_type_name(item)}"


def _located(cls: type, loc: tuple) -> tuple[str, dataclasses.Field, Any, bool]:
    """The dotted key, field and type that pydantic's error location points into, and
    whether it points at an item of that field's list."""
    parts, field, tp = [], None, cls
    for part in loc:
        names = {f.name: f for f in dataclasses.fields(tp)} if dataclasses.is_dataclass(tp) else {}
        if part not in names:
            return ".".join(parts), field, tp, isinstance(part, int)
        parts.append(part)
        field, tp = names[part], hints(tp)[part]
    return ".".join(parts), field, tp, False


def _out_of_bounds(key: str, f: dataclasses.Field, tp: Any, raw: Any) -> str:
    """`'user.r' is 0; it must be an integer >= 1, e.g. --set user.r=8`: the value as the
    field holds it (0.0 for a float), its bound or choices, and a valid example."""
    meta, kind = f.metadata, base_type(tp)
    try:
        value = kind(raw) if kind in (float, str) else raw
    except ValueError:
        value = raw
    article = "an integer " if kind is int else ""
    unlimited = f.name.startswith("max_") and admits(tp, type(None))
    unset = " (or null for no limit)" if unlimited else ""
    return (
        f"config key {key!r} is {shown(value)}; it must be {article}{rule_text(meta)}{unset}, "
        f"e.g. --set {key}={_example(f)}"
    )


def _example(f: dataclasses.Field) -> Any:
    """A valid value of `f` for a message's `--set key=...`: its default, else its first
    choice, else 8 (an optional limit)."""
    if f.default_factory is not dataclasses.MISSING:
        return ",".join(map(str, f.default_factory()))
    if f.default is not None and f.default is not dataclasses.MISSING:
        return f.default
    return f.metadata["choices"][0] if "choices" in f.metadata else 8


def _check_tree(obj: Any, prefix: str) -> None:
    """Each group's own `check()` (rules between its fields), innermost first, then the
    experiment's (rules between groups)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_tree(value, f"{prefix}{f.name}.")
    if hasattr(obj, "check"):
        obj.check(prefix)
