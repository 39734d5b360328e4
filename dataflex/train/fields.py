"""Declared component settings: keyword-only fields with a type and an optional range.

A component declares each config key as an annotated class attribute (the component kinds make
every subclass a keyword-only dataclass); :func:`param` adds what the type alone does not say::

    class MySelector(BudgetSelector):
        window: float = param(0.2, gt=0, le=1)      # a float in (0, 1]
        rule: str = param("topk", choices=RULES)    # one of RULES
        batch_size: int = param(16, ge=1)           # an int >= 1

:func:`check_values` compares given values with those declarations (before anything is built) and
names the key, what it expects and the value given in one line (a :class:`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dataflex.errors import ConfigError

_NUMERIC = (int, float)


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    expects: str | None = None,
    key: str | None = None,
) -> Any:
    """A declared setting with a range.

    Args:
        default / default_factory: as for :func:`dataclasses.field` (neither: the key is required).
        ge, gt, le, lt: bounds of a number (``None`` passes them all).
        choices: the allowed values.
        check: ``value -> problem or None`` for what bounds cannot say; the problem continues the
            key's name, e.g. ``"as a fraction must lie in (0, 1]"``.
        expects: how a wrong type is described (default: from the annotation and the bounds).
        key: the config (and keyword) name when it differs from the attribute's, e.g. a key that
            would hide a method of the component (DoReMi's ``update`` is the attribute ``update_rule``).
    """
    metadata = {
        k: v
        for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, check=check, expects=expects, key=key).items()
        if v is not None
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def config_key(f: dataclasses.Field) -> str:
    """The config key of the field ``f`` (its name unless :func:`param` gave another ``key``)."""
    return f.metadata.get("key", f.name)


def config_values(obj: Any) -> dict[str, Any]:
    """The settings of the component ``obj`` by config key."""
    return {config_key(f): getattr(obj, f.name) for f in dataclasses.fields(obj)}


def accept_config_keys(cls: type) -> None:
    """Let the dataclass ``cls``'s ``__init__`` take each field under its config key (and report
    those names in its signature), when one differs from the attribute name."""
    renames = {f.metadata["key"]: f.name for f in dataclasses.fields(cls) if "key" in f.metadata}
    if not renames:
        return
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{renames.get(k, k): v for k, v in kwargs.items()})

    by_name = {name: key for key, name in renames.items()}
    signature = inspect.signature(init)
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(name=by_name.get(p.name, p.name)) for p in signature.parameters.values()]
    )
    cls.__init__ = __init__


# -- types -------------------------------------------------------------------------------------------------
def declared_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of the dataclass ``cls`` (``Any`` where one cannot be
    resolved, e.g. a name imported only for type checking)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - resolve field by field below
        pass
    hints: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        owner = next((c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {})), cls)
        namespace = vars(sys.modules.get(owner.__module__, typing))
        try:
            hints[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type  # noqa: S307
        except Exception:  # noqa: BLE001 - not resolvable: not checked
            hints[f.name] = Any
    return hints


def _args(tp: Any) -> tuple[Any, ...]:
    return tuple(a for a in typing.get_args(tp) if a is not Ellipsis)


def matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (a YAML value: None, bool, int, float, str, list, dict) is a ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, _NUMERIC) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is os.PathLike:
        return isinstance(value, (str, os.PathLike))
    container = origin or tp
    if container in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        items = set(_args(tp))
        return all(matches(v, next(iter(items))) for v in value) if len(items) == 1 else True
    if container in (dict, Mapping):
        if not isinstance(value, Mapping):
            return False
        if len(_args(tp)) == 2:
            key, item = _args(tp)
            return all(matches(k, key) and matches(v, item) for k, v in value.items())
        return True
    if container is Callable:
        return callable(value)
    return isinstance(value, container) if isinstance(container, type) else True


_NAMES = {int: "an int", float: "a float", str: "a string", bool: "true or false", type(None): "null"}


def describe_type(tp: Any) -> str:
    """``tp`` in words (``an int or null``, ``a list``, ...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(a) for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp):
            parts.append("null")
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return f"one of {typing.get_args(tp)}"
    if tp in _NAMES:
        return _NAMES[tp]
    container = origin or tp
    if container in (list, tuple, Sequence):
        return "a list"
    if container in (dict, Mapping):
        return "a mapping"
    return f"a {getattr(tp, '__name__', tp)}"


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_range(meta: Mapping[str, Any]) -> str:
    """The bounds of ``meta`` in words: ``in (0, 1]``, ``>= 1``, ``one of ('a', 'b')`` (or '')."""
    if "choices" in meta:
        return f"one of {tuple(meta['choices'])}"
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"in {low[0]}{_fmt(low[1])}, {_fmt(high[1])}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {_fmt(low[1])}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {_fmt(high[1])}"
    return ""


def _out_of_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if "choices" in meta:
        return value not in meta["choices"]
    if not isinstance(value, _NUMERIC) or isinstance(value, bool):
        return False
    return not (
        ("ge" not in meta or value >= meta["ge"])
        and ("gt" not in meta or value > meta["gt"])
        and ("le" not in meta or value <= meta["le"])
        and ("lt" not in meta or value < meta["lt"])
    )


def expected(tp: Any, bounds: str, choices: bool = False) -> str:
    """What a field declared as ``tp`` with ``bounds`` takes, in words (``a float in [0, 1]``,
    ``an int >= 1 or null``, ``one of ('a', 'b')``)."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    if choices:
        text = bounds
    else:
        rest = [a for a in typing.get_args(tp) if a is not type(None)] if optional else [tp]
        base = describe_type(rest[0] if len(rest) == 1 else typing.Union[tuple(rest)])  # noqa: UP007 (built at runtime)
        text = f"{base} {bounds}".strip()
    return f"{text} or null" if optional else text


def problem(name: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> str | None:
    """What is wrong with ``value`` for the field ``name`` declared as ``tp`` with ``meta``, as one
    sentence naming the key, what it expects and the value given; None when nothing is."""
    bounds = describe_range(meta)
    if not matches(value, tp):
        return f"{name} must be {meta.get('expects') or expected(tp, bounds, 'choices' in meta)}, got {value!r}"
    if value is None:
        return None
    if _out_of_range(value, meta):
        verb = "lie" if bounds.startswith("in ") else "be"
        return f"{name} must {verb} {bounds}, got {value!r}"
    found = meta["check"](value) if "check" in meta else None
    return None if found is None else f"{name} {found}, got {value!r}"


def check_values(cls: type, values: Mapping[str, Any]) -> None:
    """Raise a ConfigError for the first of ``values`` that its declared field in ``cls`` refuses
    (keys that are not fields are left to the caller)."""
    declared = {config_key(f): f for f in dataclasses.fields(cls)}
    hints = declared_types(cls)
    for name, value in values.items():
        if name in declared:
            found = problem(name, value, hints.get(declared[name].name, Any), declared[name].metadata)
            if found is not None:
                raise ConfigError(found)


def coerce_floats(obj: Any) -> None:
    """Give every field of ``obj`` declared as a float (and not as an int too) that holds an int its
    float value (YAML writes ``1`` for ``1.0``)."""
    hints = declared_types(type(obj))
    for f in dataclasses.fields(obj):
        value, tp = getattr(obj, f.name), hints.get(f.name, Any)
        if isinstance(value, int) and not isinstance(value, bool) and matches(0.5, tp) and not _accepts_int(tp):
            setattr(obj, f.name, float(value))


def _accepts_int(tp: Any) -> bool:
    """Whether ``tp`` names ``int`` itself (``int``, ``int | float``, ``int | None``, ``Any``, ...)."""
    if tp is int or tp is Any or tp is object:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_accepts_int(a) for a in typing.get_args(tp))
    return False
