"""The store contract's helpers and data: vectors, records, the reference ranking,
:func:`expect_error`, and the tables the parametrised tests share (metadata values too).

Part of :mod:`lookalike.testing.contract`; import the names from there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from ...errors import ConfigurationError, ImageSearchError, SchemaMismatchError
from ...protocols import VectorStore
from ...types import Record, Schema

DIM = 16
FIELDS = ("path", "label", "colour")
SCHEMA = Schema(dim=DIM, identity="contract-test:v1", fields=FIELDS)
PROPERTY_DIMS = (2, 8, 64)


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> NDArray[np.float32]:
    """``n`` random L2-normalised float32 vectors of ``dim``, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    out: NDArray[np.float32] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def make_records(
    n: int, dim: int = DIM, seed: int = 0, labels: tuple[str, ...] = ("cat", "dog", "fish")
) -> list[Record]:
    """Records ``r000``, ``r001``, ... with ``path``, ``label`` and ``colour`` metadata."""
    vectors = unit_vectors(n, dim, seed)
    return [
        Record(
            f"r{i:03d}",
            vectors[i],
            {
                "path": f"/photos/{i:03d}.jpg",
                "label": labels[i % len(labels)],
                "colour": "red" if i % 2 == 0 else "blue",
            },
        )
        for i in range(n)
    ]


def all_records(store: VectorStore, batch_size: int = 1000) -> list[Record]:
    return [r for batch in store.scan(batch_size) for r in batch]


def brute_force(records: list[Record], query: NDArray[np.float32]) -> list[tuple[str, float]]:
    """Reference ranking: (id, cosine) pairs, best first."""
    matrix = np.stack([np.asarray(r.vector, dtype=np.float64) for r in records])
    q = np.asarray(query, dtype=np.float64)
    scores = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")
    return [(records[i].id, float(scores[i])) for i in order]


@contextmanager
def expect_error(
    error: type[ImageSearchError],
    doing: str,
    match: str | None = None,
    names: tuple[str, ...] = (),
    why: str = "",
) -> Iterator[None]:
    """Fail with a message naming the call, the error it must raise, and what it did instead.

    ``match`` is a regular expression and ``names`` are plain strings its message must hold;
    ``why`` (a sentence) ends the message when the call raised nothing or another error.
    """
    want = f"lookalike.errors.{error.__name__}"
    why = f". {why}" if why else ""
    try:
        yield
    except error as exc:
        if match is not None and not re.search(match, str(exc)):
            pytest.fail(
                f"{doing} raised {want} as it should, but its message {str(exc)!r} "
                f"should mention {match!r} so the user sees what is wrong",
                pytrace=False,
            )
        missing = [name for name in names if name not in str(exc)]
        if missing:
            pytest.fail(
                f"{doing} raised {want} as it should, but its message {str(exc)!r} "
                f"should name {' and '.join(missing)} so the user sees what is wrong",
                pytrace=False,
            )
        return
    except Exception as exc:
        pytest.fail(
            f"{doing} must raise {want}; it raised {type(exc).__module__}.{type(exc).__name__}: "
            f"{exc}. Raise lookalike's error (callers catch {want} for every store){why}",
            pytrace=False,
        )
    pytest.fail(f"{doing} must raise {want}, but it raised nothing{why}", pytrace=False)


def _ids(hits: Any) -> list[str]:
    return [h.id for h in hits]


Outcome = tuple[str, Any]


def _value_outcome(store: VectorStore, value: Any, vectors: NDArray[np.float32]) -> Outcome:
    """What ``store`` (with ``VALUE_SCHEMA`` and no records) does with ``value`` in the
    filterable field ``value``: ``("refused", None)``, ``("stored", (repr read back, its
    type, ids an equality filter finds, ids an any-of filter finds))``, or another kind
    saying what went wrong. ``vectors``: three unit vectors of the store's dim."""
    store.upsert([Record(f"o{i}", vectors[i], {"value": f"other-{i}"}) for i in range(2)])
    try:
        store.upsert([Record("odd", vectors[2], {"value": value, "label": "odd"})])
    except ConfigurationError as exc:
        left = sorted(r.id for r in store.get(["odd", "o0", "o1"]))
        if left != ["o0", "o1"]:
            return ("refused it with ConfigurationError but stored", left)
        if "'odd'" not in str(exc) or "'value'" not in str(exc):
            return ("refused it with a message that does not name the record 'odd' and the field 'value'", str(exc))
        return ("refused", None)
    except Exception as exc:
        return ("raised, instead of ConfigurationError,", f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
    got = dict(store.get(["odd"])[0].metadata).get("value")
    found: list[Any] = []
    for filter in ({"value": value}, {"value": [value, "nothing"]}):
        try:
            found.append(_ids(store.search(vectors[2], 3, filter)[0]))
        except Exception as exc:
            found.append(f"search() raised {type(exc).__name__}: {exc}")
    return ("stored", (repr(got), type(got).__name__, *found))


def _stored(value: Any) -> Outcome:
    """The outcome of a value a store keeps: read back as it was, found by both filters."""
    return ("stored", (repr(value), type(value).__name__, ["odd"], ["odd"]))


def _describe(outcome: Outcome) -> str:
    kind, detail = outcome
    if kind == "refused":
        return "refuses it at upsert with ConfigurationError (naming the record and the field)"
    if kind == "stored":
        shown, type_name, equal, any_of = detail
        return (
            f"keeps it, reads it back as {shown} ({type_name}), and finds {equal} by an equality "
            f"filter and {any_of} by an any-of filter"
        )
    return f"{kind}: {detail!r}"


# -- data the parametrised tests share -------------------------------------------------------
BEFORE_SCHEMA: dict[str, Callable[[VectorStore], object]] = {
    "upsert": lambda s: s.upsert(make_records(1)),
    "search": lambda s: s.search(unit_vectors(1), 3),
    "get": lambda s: s.get(["r000"]),
    "delete": lambda s: s.delete(["r000"]),
    "scan": lambda s: list(s.scan()),
}

INVALID_RECORDS = {
    "empty-id": Record("", unit_vectors(1)[0], {}),
    "wrong-dim": Record("x", unit_vectors(1, dim=DIM + 2)[0], {}),
    "nan": Record("x", np.full(DIM, np.nan, dtype=np.float32), {}),
    "list-metadata": Record("x", unit_vectors(1)[0], {"label": ["a", "list"]}),  # type: ignore[dict-item]
    "bad-key": Record("x", unit_vectors(1)[0], {"not an identifier": "v"}),
}

AWKWARD_VALUES = [
    'say "cheese"',
    "back\\slash and \\\" both",
    "ünïcødé — 日本語 🐟",
    "single 'quotes' and \n newline",
    "",
]

AWKWARD_IDS = ['quote"id', "back\\slash", "ünïcødé-日本", "with space", "a/b/../c.jpg", "sha256-" + "f" * 32]

MISUSE: dict[str, tuple[Callable[[VectorStore], object], type[ImageSearchError]]] = {
    "k=0": (lambda s: s.search(unit_vectors(1), 0), ConfigurationError),
    "wrong-dim-query": (lambda s: s.search(unit_vectors(1, dim=3), 1), ConfigurationError),
    "nan-query": (lambda s: s.search(np.full((1, DIM), np.nan, np.float32), 1), ConfigurationError),
    "filter-undeclared": (lambda s: s.search(unit_vectors(1), 1, {"nope": 1}), ConfigurationError),
    "filter-not-mapping": (lambda s: s.search(unit_vectors(1), 1, "label=cat"), ConfigurationError),  # type: ignore[arg-type]
    "filter-empty-list": (lambda s: s.search(unit_vectors(1), 1, {"label": []}), ConfigurationError),
    "wrong-dim-record": (lambda s: s.upsert([Record("x", unit_vectors(1, dim=3)[0])]), ConfigurationError),
    "other-schema": (lambda s: s.create_schema(Schema(dim=DIM + 1, identity="x")), SchemaMismatchError),
}

# metadata values: those no store can keep or filter on alike (refused at upsert and in
# filters, see lookalike.filters.value_problem), and edge values every store must keep
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
VALUE_SCHEMA = Schema(dim=DIM, identity="contract-test:v1", fields=("path", "label", "value"))

REFUSED_VALUES: dict[str, Any] = {
    "nul-in-string": "a\x00b",
    "only-nul": "\x00",
    "int64-max+1": INT64_MAX + 1,
    "int64-min-1": INT64_MIN - 1,
    "huge-int": 10**30,
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "lone-surrogate": "lone \ud800 surrogate",
}

EDGE_VALUES: dict[str, Any] = {
    "int64-max": INT64_MAX,
    "int64-min": INT64_MIN,
    "2**53+1": 2**53 + 1,
    "-2**53-1": -(2**53) - 1,
    "smallest-float": 5e-324,
    "largest-float": 1.7976931348623157e308,
    "minus-zero": -0.0,
    "0.1": 0.1,
    "control-chars": "\x01\x1f control",
    "tab-newline": "tab\tnewline\n",
    "line-separator-bom-emoji": "\u2028 \ufeff \U0001f41f",
    "empty-string": "",
}
