"""The metadata filter form shared by every store.

A filter is a mapping from field name to either one value (equality) or a list,
tuple or set of values (membership); several keys are ANDed::

    {"label": "goldfish"}
    {"label": ["goldfish", "tench"], "source": "camera"}

Values are ``str``, ``int``, ``float`` or ``bool`` (see :func:`value_problem` for the few
that no store can keep: a NUL character, integers beyond 64 bits, NaN and infinity); filters may only name fields
declared in the store's :class:`~lookalike.Schema` (``path`` always is), so the same
filter behaves the same in every store, including those that index filter fields.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError
from .types import Filter, MetadataValue

__all__ = ["NormalizedFilter", "matches", "normalize_filter", "value_problem"]

NormalizedFilter = dict[str, tuple[MetadataValue, ...]]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a metadata (or filter) value, or ``None`` when it can.

    Every store keeps ``str``, ``int``, ``float`` and ``bool`` values and filters on them
    alike, except: strings with a NUL character or a lone surrogate (not valid in SQLite
    text or in UTF-8), integers outside the signed 64-bit range (SQLite's JSON reads them
    as inexact floats) and NaN or infinity (not JSON; NaN never equals itself). These are
    refused by every store at insert and in filters, so every store gives the same answer.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            return "is an integer beyond the signed 64-bit range, which stores cannot compare exactly"
        return None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "is NaN or infinity, which cannot be stored"
        return None
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character (\\x00), which stores cannot keep in text"
        try:
            value.isascii() or value.encode("utf-8")
        except UnicodeEncodeError:
            return "is not valid Unicode text (it holds a lone surrogate)"
        return None
    return f"must be str, int, float or bool, got {type(value).__name__}"


def normalize_filter(filter: Filter | None, fields: tuple[str, ...]) -> NormalizedFilter | None:
    """Validate ``filter`` against the declared ``fields``; return field -> allowed values."""
    if filter is None:
        return None
    if not isinstance(filter, Mapping):
        raise ConfigurationError(
            f"filter must be a mapping like {{'label': 'cat'}}, got {type(filter).__name__}"
        )
    if not filter:
        return None
    out: NormalizedFilter = {}
    for name, value in filter.items():
        if name not in fields:
            raise ConfigurationError(
                f"cannot filter on {name!r}: it is not a declared field of this store "
                f"(declared: {', '.join(fields)}). Declare it with create_schema(fields=[...])."
            )
        values = tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else (value,)
        if not values:
            raise ConfigurationError(f"filter on {name!r} has an empty list of values")
        for v in values:
            if not isinstance(v, (str, int, float, bool)):
                raise ConfigurationError(
                    f"filter value for {name!r} must be str, int, float or bool, got {v!r}"
                )
            problem = value_problem(v)
            if problem is not None:
                raise ConfigurationError(f"filter value {v!r} for {name!r} {problem}")
        out[name] = values
    return out


def matches(metadata: Mapping[str, Any], filter: NormalizedFilter) -> bool:
    """True when ``metadata`` satisfies every clause of a normalised filter."""
    for name, allowed in filter.items():
        if name not in metadata:
            return False
        value = metadata[name]
        if not any(_same(value, a) for a in allowed):
            return False
    return True


def _same(value: Any, wanted: MetadataValue) -> bool:
    # bool is an int in Python; keep True from matching 1 so every store agrees.
    if isinstance(value, bool) or isinstance(wanted, bool):
        return isinstance(value, bool) and isinstance(wanted, bool) and value == wanted
    if isinstance(value, str) or isinstance(wanted, str):
        return isinstance(value, str) and isinstance(wanted, str) and value == wanted
    return bool(value == wanted)
