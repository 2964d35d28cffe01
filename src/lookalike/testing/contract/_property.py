"""The contract's property tests' machinery: hypothesis when installed, fixed examples otherwise.

:func:`_property` turns a check into a test; :class:`_Fresh` gives each example an empty store;
the ``_*_strategies`` functions (called only with hypothesis) and ``_TIE_ROWS`` give the inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from ...protocols import VectorStore
from ...types import Schema
from ._kit import EDGE_VALUES, PROPERTY_DIMS, REFUSED_VALUES, all_records

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # the suite still runs: fixed examples instead
    HAVE_HYPOTHESIS = False


# -- property tests: hypothesis when installed, fixed examples otherwise ----------------------
def _property(
    strategies: Callable[[], Mapping[str, Any]], examples: list[dict[str, Any]]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Run ``check(self, fresh, **params)`` on hypothesis examples, or on ``examples``."""

    def decorate(check: Callable[..., None]) -> Callable[..., None]:
        if HAVE_HYPOTHESIS:

            def run(self: Any, store: VectorStore, make_store: Any, **params: Any) -> None:
                check(self, _Fresh(store, make_store), **params)

            run.__name__ = check.__name__
            run.__doc__ = check.__doc__
            wrapped: Callable[..., None] = settings(
                max_examples=25,
                deadline=None,
                database=None,
                # one store per example comes from make_store (or an emptied store); and each
                # subclass is another executor of the same base-class test, by design
                suppress_health_check=[
                    HealthCheck.function_scoped_fixture,
                    HealthCheck.too_slow,
                    *[getattr(HealthCheck, "differing_executors", HealthCheck.too_slow)],
                ],
            )(given(**strategies())(run))
            return wrapped

        def fixed(self: Any, store: VectorStore, make_store: Any, example: dict[str, Any]) -> None:
            check(self, _Fresh(store, make_store), **example)

        fixed.__name__ = check.__name__
        fixed.__doc__ = check.__doc__
        ids = [f"ex{i}" for i in range(len(examples))]
        parametrized: Callable[..., None] = pytest.mark.parametrize("example", examples, ids=ids)(fixed)
        return parametrized

    return decorate


class _Fresh:
    """An empty store with ``schema`` for one property example.

    A new store from ``make_store`` when the subclass gives one; otherwise the test's
    ``store``, emptied, whose schema is the first one asked for (vectors of a smaller
    dimension are then zero-padded, which changes no cosine).
    """

    def __init__(self, store: VectorStore, make_store: Callable[[], VectorStore] | None) -> None:
        self._store = store
        self._make = make_store
        self.dim = 0

    def __call__(self, schema: Schema) -> VectorStore:
        if self._make is not None:
            store = self._make()
            store.create_schema(schema)
            self.dim = schema.dim
            return store
        store = self._store
        if store.describe() is None:
            store.create_schema(
                Schema(dim=max(schema.dim, *PROPERTY_DIMS), identity=schema.identity, fields=schema.fields)
            )
        described = store.describe()
        assert described is not None
        self.dim = described.dim
        ids = [r.id for r in all_records(store)]
        if ids:
            store.delete(ids)
        assert store.count() == 0, "after deleting every id scan() returned, count() must be 0"
        return store

    def pad(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        if vectors.shape[1] == self.dim:
            return vectors
        out = np.zeros((vectors.shape[0], self.dim), dtype=np.float32)
        out[:, : vectors.shape[1]] = vectors
        return out


def _self_top1_strategies() -> Mapping[str, Any]:
    return {
        "n": st.integers(1, 40),
        "k": st.integers(1, 50),
        "seed": st.integers(0, 2**32 - 1),
        "dim": st.sampled_from(PROPERTY_DIMS),
    }


def _ties_strategies() -> Mapping[str, Any]:
    return {
        "rows": st.lists(
            st.lists(st.integers(-3, 3), min_size=4, max_size=4).filter(lambda r: any(r)),
            min_size=1,
            max_size=30,
        ),
        "k": st.integers(1, 35),
    }


def _values_strategies() -> Mapping[str, Any]:
    return {
        "value": st.one_of(
            st.text(max_size=12),  # NUL included, lone surrogates not
            st.text(alphabet=st.characters(), max_size=4),  # may hold lone surrogates
            st.integers(min_value=-(2**70), max_value=2**70),
            st.sampled_from([*REFUSED_VALUES.values(), *EDGE_VALUES.values()]),
            st.floats(allow_nan=True, allow_infinity=True),
            st.booleans(),
        )
    }


def _ops_strategies() -> Mapping[str, Any]:
    return {
        "ops": st.lists(
            st.tuples(st.sampled_from(["upsert", "delete"]), st.lists(st.integers(0, 15), max_size=5)),
            max_size=12,
        )
    }


_TIE_ROWS = [
    [[1, 0, 0, 0]],
    [[1, 0, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [0, 1, 0, 0], [-1, 0, 0, 0]],
    [[1, 1, 0, 0], [2, 2, 0, 0], [1, -1, 0, 0], [0, 0, 3, 3], [0, 0, 1, 1], [3, -3, 1, 0]],
    [[(i * 7) % 7 - 3, (i * 3) % 7 - 3, (i * 5) % 7 - 3, 1] for i in range(30)],
]
