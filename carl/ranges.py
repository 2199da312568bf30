"""Ranges of numeric config fields, declared with annotated-types and checked at load time.

A config dataclass declares each numeric field's range in its annotation,
``width: Annotated[int, at.Ge(1)] = 256``, and calls :func:`check_ranges` first thing in its
``__post_init__`` (checks across fields come after it and raise :class:`FieldError`).
:func:`carl.config.from_dict` checks the same ranges while it reads a recipe, so an error names
the whole key path (``train.ema_decay: 2.0 is out of range; allowed: [0, 1)``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from typing import Annotated, Any

import annotated_types as at

from carl import errors

_BOUNDS = {at.Gt: ("gt", operator.gt, "(", ">"), at.Ge: ("ge", operator.ge, "[", ">="),
           at.Lt: ("lt", operator.lt, ")", "<"), at.Le: ("le", operator.le, "]", "<=")}


def _bounds(metadata: tuple) -> list:
    flat = []
    for item in metadata:
        flat.extend(item if isinstance(item, at.GroupedMetadata) else [item])  # Interval -> Ge, Lt, ...
    return [c for c in flat if type(c) in _BOUNDS]


def describe_range(metadata: tuple) -> str:
    """``[0, 1)``, ``> 0``, ``>= 1``: the values that range annotations ``metadata`` allow."""
    bounds = [(_BOUNDS[type(c)], getattr(c, _BOUNDS[type(c)][0])) for c in _bounds(metadata)]
    lower = [(bracket, v) for (_, _, bracket, _), v in bounds if bracket in "(["]
    upper = [(bracket, v) for (_, _, bracket, _), v in bounds if bracket in ")]"]
    if lower and upper:
        return f"{lower[0][0]}{lower[0][1]:g}, {upper[0][1]:g}{upper[0][0]}"
    return " and ".join(f"{text} {v:g}" for (_, _, _, text), v in bounds)


# No setting of carl's is this large; past it a float cannot even hold a count exactly.
MAX_MAGNITUDE = 2**53


def range_violation(value: Any, metadata: tuple) -> str | None:
    """Why ``value`` lies outside the range that annotations ``metadata`` declare, or None. Every
    number must also be finite and at most 2**53 in size, whatever its declared range."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):  # types are checked elsewhere
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    if abs(value) > MAX_MAGNITUDE:
        return f"{value!r} is too large (at most 2**53)"
    for c in _bounds(metadata):
        attr, test, _, _ = _BOUNDS[type(c)]
        if not test(value, getattr(c, attr)):
            return f"{value!r} is out of range; allowed: {describe_range(metadata)}"
    return None


def check_ranges(config: Any) -> None:
    """Raise :class:`FieldError` for the first field of the config dataclass instance ``config``
    outside its declared range. Config dataclasses call it first thing in ``__post_init__``, so
    a config built in Python is held to the same ranges as one read from a recipe."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in dataclasses.fields(config):
        _check_value(hints[f.name], getattr(config, f.name), f.name)


def _check_value(tp: Any, value: Any, path: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        _check_value(args[0], value, path)
        if why := range_violation(value, args[1:]):
            raise errors.FieldError(path, why)
    elif origin in (typing.Union, types.UnionType) and value is not None:
        for option in args:
            if option is not type(None):
                _check_value(option, value, path)
    elif origin is tuple and isinstance(value, tuple):
        kinds = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        for i, (kind, item) in enumerate(zip(kinds, value)):
            _check_value(kind, item, f"{path}[{i}]")


def unbounded_fields(cls: type) -> list[str]:
    """The numeric fields of config dataclass ``cls`` (in tuples and optionals too) without a
    declared range; the tests hold every shipped config to having none."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return [f.name for f in dataclasses.fields(cls) if "registry" not in f.metadata and _unbounded(hints[f.name])]


def _unbounded(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return not _bounds(typing.get_args(tp)[1:])
    if origin in (typing.Union, types.UnionType, tuple):
        return any(_unbounded(a) for a in typing.get_args(tp) if a is not Ellipsis)
    return tp in (int, float)


def __getattr__(name: str):  # carl 0.1 defined FieldError here
    return errors.moved_here(__name__, name)
