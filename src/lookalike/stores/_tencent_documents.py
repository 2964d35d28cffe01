"""How records travel to Tencent VectorDB: documents, filter tokens and expressions,
vectors as compact JSON numbers (see the module docstring of :mod:`.tencent`)."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..filters import NormalizedFilter
from ..types import MetadataValue, Record

__all__ = [
    "META_FIELD",
    "document_metadata",
    "document_record",
    "filter_expression",
    "filter_token",
    "wire_vectors",
]

#: Document field holding the record's metadata as JSON.
META_FIELD = "lookalike_meta"
_UNSAFE_IN_FILTER = re.compile(r'["\\\x00-\x1f\x7f]')


def wire_vectors(matrix: NDArray[np.float32]) -> list[list[float]]:
    """Rows as plain Python floats with at most 9 significant digits.

    Nine digits always round-trip a float32 exactly, and the JSON is about 40% smaller than
    ``tolist()`` of float64 values.
    """
    m = np.asarray(matrix, dtype=np.float64)
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log10(np.abs(m)))
    exponent[~np.isfinite(exponent)] = 0
    scale = 10.0 ** (8 - exponent)
    rounded: list[list[float]] = (np.round(m * scale) / scale).tolist()
    return rounded


def filter_token(value: MetadataValue) -> str:
    """The string stored in a filter index (and compared in filters) for a metadata value.

    Strings are kept as they are unless they start with ``#`` (then ``#`` is doubled) or hold
    a double quote, backslash or control character (then ``#s:`` + URL-safe base64 of the
    UTF-8). Numbers become ``#n:<number>`` (``1`` and ``1.0`` alike), booleans ``#b:true`` /
    ``#b:false``. The mapping is one-to-one and its output never needs escaping.
    """
    if isinstance(value, bool):
        return "#b:true" if value else "#b:false"
    if isinstance(value, int):
        return f"#n:{int(value)}"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return f"#n:{int(value)}"
        return f"#n:{float(value)!r}"
    text = str(value)
    if _UNSAFE_IN_FILTER.search(text):
        return "#s:" + base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii")
    if text.startswith("#"):
        return "#" + text
    return text


def filter_expression(filter: NormalizedFilter | None) -> str:
    """Our filter form as the service's expression, e.g. ``label in ("cat", "dog") and path = "x"``."""
    if not filter:
        return ""
    clauses = []
    for name, values in filter.items():
        tokens = list(dict.fromkeys(filter_token(v) for v in values))
        quoted = [f'"{t}"' for t in tokens]  # tokens never contain '"' or '\\'
        clauses.append(
            f"{name} = {quoted[0]}" if len(quoted) == 1 else f"{name} in ({', '.join(quoted)})"
        )
    return " and ".join(clauses)


def document_metadata(doc: Mapping[str, Any]) -> dict[str, Any]:
    raw = doc.get(META_FIELD)
    if isinstance(raw, str):
        try:
            meta = json.loads(raw)
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            return meta
    return {k: v for k, v in doc.items() if k not in ("id", "vector", "score", META_FIELD)}


def document_record(doc: Mapping[str, Any]) -> Record:
    vector = np.asarray(doc.get("vector") or [], dtype=np.float32)
    return Record(str(doc["id"]), vector, document_metadata(doc))
