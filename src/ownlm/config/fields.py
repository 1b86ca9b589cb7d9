"""How a setting is declared: its default, its help and its valid values, in one place.

`setting(1e-4, "learning rate", gt=0)` is a `dataclasses.field` whose metadata holds the
help text (`ownlm <command> --help` lists it) and the bound. The bound keys are the ones
pydantic's `Field` takes (`gt`, `ge`, `lt`, `pattern`, `allow_inf_nan`), so the loader's
validation reads them from the metadata as they are; `choices` (a fixed set of strings)
becomes a case-insensitive `pattern` beside them. The messages and --help read the same
metadata through `rule_text` and `within`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from typing import Any

from ownlm.errors import ConfigError, shown

_UNSET: Any = dataclasses.MISSING
ANY_GPU = "cuda:N"  # in `choices`: cuda:0, cuda:1, ...


def setting(
    default: Any = _UNSET,
    help: str = "",  # noqa: A002 (the word --help shows)
    *,
    factory: typing.Callable[[], Any] | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its help and valid values: `gt`/`ge` a lower bound (strict or
    not), `lt` an exclusive upper one, `choices` the strings it may be (any case). A bounded
    number must also be finite: NaN passes every comparison's negation."""
    meta: dict[str, Any] = {"help": help}
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt)) if v is not None}
    if bounds:
        meta.update(bounds, allow_inf_nan=False)
    if choices:
        meta.update(choices=tuple(choices), pattern=choice_pattern(tuple(choices)))
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choice_pattern(choices: tuple[str, ...]) -> str:
    """The regular expression pydantic checks a choice against: any case, surrounding
    spaces allowed (`ownlm.backbone.device` resolves ` CUDA:1 ` as cuda:1)."""
    words = [r"cuda:\d+" if c == ANY_GPU else re.escape(c) for c in choices]
    return rf"(?i)^\s*(?:{'|'.join(words)})\s*$"


def is_bounded(meta: typing.Mapping) -> bool:
    """Whether a field's metadata holds a numeric bound (not a choice)."""
    return any(k in meta for k in ("gt", "ge", "lt"))


def rule_text(meta: typing.Mapping) -> str:
    """The valid values as messages and --help say them: `>= 1`, `> 0`, `in [0, 1)`,
    `one of auto, cpu`; empty for a free field."""
    if "choices" in meta:
        return "one of " + ", ".join(meta["choices"])
    low, strict = (meta["gt"], True) if "gt" in meta else (meta.get("ge"), False)
    if low is None:
        return "" if "lt" not in meta else f"< {meta['lt']:g}"
    if "lt" not in meta:
        return f"{'>' if strict else '>='} {low:g}"
    return f"in {'(' if strict else '['}{low:g}, {meta['lt']:g})"


def within(value: Any, meta: typing.Mapping) -> bool:
    """Whether `value` meets the field's bound or choices (None always does: an unset
    optional limit)."""
    if value is None:
        return True
    if "choices" in meta:
        return re.match(meta["pattern"], str(value)) is not None
    if not math.isfinite(value):
        return not is_bounded(meta)
    above = value > meta["gt"] if "gt" in meta else value >= meta.get("ge", -math.inf)
    return above and value < meta.get("lt", math.inf)


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """`cls`'s field types, resolved from their string annotations once."""
    return typing.get_type_hints(cls)


def base_type(tp: Any) -> Any:
    """The type a field holds when set: `int` for `int | None`, `list` for `list[str]`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, type(int | None)):
        return base_type(args[0])
    return typing.get_origin(tp) or tp


def admits(tp: Any, kind: type) -> bool:
    """Whether a value of type `kind` may fill a field of type `tp` as it is."""
    if typing.get_origin(tp) in (typing.Union, type(int | None)):
        return any(admits(a, kind) for a in typing.get_args(tp))
    return (typing.get_origin(tp) or tp) is kind


def check_bounds(obj: Any, label: str) -> None:
    """Refuse a value of the wrong type or outside its field's bound, for settings built
    in code rather than loaded (`ServeSettings` from the CLI's options): the same bound
    the loader checks, said as `<label><name> is ...; it must be ... (default ...)`."""
    for f in dataclasses.fields(obj):
        if not is_bounded(f.metadata):
            continue
        value, tp = getattr(obj, f.name), base_type(hints(type(obj))[f.name])
        numeric = int if tp is int else (int, float)
        if (
            isinstance(value, bool)
            or not isinstance(value, numeric)
            or not within(value, f.metadata)
        ):
            kind = "an integer" if tp is int else "a number"
            raise ConfigError(
                f"{label}{f.name} is {shown(value)}; it must be {kind} {rule_text(f.metadata)} "
                f"(default {f.default})"
            )
