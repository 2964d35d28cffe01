"""The argument checks every module shares: one spelling of each rule, one error each."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, overload

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigurationError, MissingDependencyError

__all__ = ["optional_import", "positive_int", "unit_rows"]


@overload
def positive_int(value: Any, name: str) -> int: ...
@overload
def positive_int(value: Any, name: str, *, optional: bool) -> int | None: ...
def positive_int(value: Any, name: str, *, optional: bool = False) -> int | None:
    """``value`` as an int >= 1, else :class:`ConfigurationError` naming ``name``.

    ``True`` is not a number here, numpy integers are; ``optional`` lets ``None`` through.
    """
    if value is None and optional:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 1:
        return int(value)
    allowed = "a positive int or None" if optional else "a positive int"
    raise ConfigurationError(f"{name} must be {allowed}, got {value!r}")


def unit_rows(vectors: NDArray[np.float32], what: str) -> NDArray[np.float32]:
    """Rows of a 2-D float32 array scaled to length 1; :class:`ConfigurationError` naming
    ``what`` when a row holds NaN or infinity, or is all zeros (it has no direction)."""
    if not np.isfinite(vectors).all():
        raise ConfigurationError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ConfigurationError(f"{what} contain an all-zero vector: it has no direction to compare")
    unit: NDArray[np.float32] = (vectors / norms).astype(np.float32, copy=False)
    return unit


def optional_import(
    module: str, *, extra: str, feature: str, package: str | None = None, also: Sequence[str] = ()
) -> ModuleType:
    """Import an optional dependency, or raise :class:`MissingDependencyError` naming every
    extra that ``feature`` needs (``extra`` first, then ``also``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package or module.split(".")[0], extra, feature, also=also) from exc
