"""``VectorStoreContract``: the store contract suite as a pytest base class.

Subclass it in a test module and provide a ``store`` fixture returning a fresh, empty store::

    import pytest
    from lookalike.testing import VectorStoreContract

    class TestMyStore(VectorStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "db")

Every test uses only the public :class:`~lookalike.VectorStore` protocol, small data
(<= 300 vectors, dim <= 64) and says, when it fails, what the store should do instead.
Optionally override ``make_store`` (a fixture returning a zero-argument callable that makes
another fresh, empty store): the property tests then use a new store per example and vary
the dimension; without it they reuse ``store``, emptied between examples.
The property tests use hypothesis when it is installed, fixed examples otherwise.
This module imports pytest: import it from tests only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from ..errors import ConfigurationError, ImageSearchError, SchemaMismatchError
from ..protocols import VectorStore
from ..stores.memory import InMemoryStore
from ..types import Record, Schema

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # the suite still runs: fixed examples instead
    HAVE_HYPOTHESIS = False

__all__ = [
    "DIM",
    "EDGE_VALUES",
    "FIELDS",
    "HAVE_HYPOTHESIS",
    "REFUSED_VALUES",
    "SCHEMA",
    "VALUE_SCHEMA",
    "VectorStoreContract",
    "brute_force",
    "make_records",
    "unit_vectors",
]

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


class VectorStoreContract:
    """The behaviour every :class:`~lookalike.VectorStore` must have, as pytest tests.

    Subclass it (the class name must start with ``Test``) and define a ``store`` fixture
    that returns a fresh, empty store (close it after ``yield`` if it holds resources).
    Optionally override ``make_store``. Add your own ``def test_x(self, store)`` methods
    freely; every store of lookalike runs through this same class.
    """

    # -- fixtures --------------------------------------------------------------------------------
    @pytest.fixture
    def store(self) -> VectorStore:
        raise NotImplementedError(
            "define a `store` fixture in your VectorStoreContract subclass that returns a fresh, "
            "empty store, e.g.\n    @pytest.fixture\n    def store(self, tmp_path):\n"
            "        return MyStore(tmp_path / 'db')"
        )

    @pytest.fixture
    def make_store(self) -> Callable[[], VectorStore] | None:
        """Override to return a callable that makes another fresh, empty store (optional)."""
        return None

    @pytest.fixture
    def filled(self, store: VectorStore) -> tuple[VectorStore, list[Record]]:
        """``store`` with ``SCHEMA`` and 60 records (``make_records(60)``)."""
        store.create_schema(SCHEMA)
        records = make_records(60)
        store.upsert(records)
        assert store.count() == 60, f"count() after upserting 60 new records must be 60, got {store.count()}"
        return store, records

    # -- schema ----------------------------------------------------------------------------------
    def test_describe_is_none_before_create_schema(self, store: VectorStore) -> None:
        assert store.describe() is None, (
            "describe() of a fresh store must be None (no schema yet); the `store` fixture must "
            "return an empty store"
        )
        assert store.count() == 0, "count() of a fresh store must be 0"

    def test_create_schema_is_described(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        described = store.describe()
        assert described == SCHEMA, f"describe() must return the schema created ({SCHEMA!r}), got {described!r}"
        assert described is not None and "path" in described.fields

    def test_create_schema_twice_is_a_no_op(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.upsert(make_records(3))
        store.create_schema(Schema(dim=DIM, identity="contract-test:v1", fields=FIELDS))
        assert store.describe() == SCHEMA, "create_schema() with an equal schema must change nothing"
        assert store.count() == 3, "create_schema() with an equal schema must keep the records"

    @pytest.mark.parametrize(
        ("other", "named"),
        [
            (Schema(dim=DIM + 1, identity="contract-test:v1", fields=FIELDS), str(DIM + 1)),
            (Schema(dim=DIM, identity="another-model:v2", fields=FIELDS), "another-model:v2"),
            (Schema(dim=DIM, identity="contract-test:v1", fields=("path", "label")), "colour"),
        ],
        ids=["dim", "identity", "fields"],
    )
    def test_create_schema_with_another_schema_raises(
        self, store: VectorStore, other: Schema, named: str
    ) -> None:
        store.create_schema(SCHEMA)
        store.upsert(make_records(2))
        with expect_error(SchemaMismatchError, f"create_schema({other!r}) on a store with {SCHEMA!r}", re.escape(named)):
            store.create_schema(other)
        assert store.describe() == SCHEMA, "a refused create_schema() must leave the stored schema as it was"
        assert store.count() == 2, "a refused create_schema() must keep the records"

    def test_identity_mismatch_message_names_both(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        with expect_error(SchemaMismatchError, "create_schema() with another model's identity", "contract-test:v1"):
            store.create_schema(Schema(dim=DIM, identity="another-model:v2", fields=FIELDS))
        with expect_error(SchemaMismatchError, "create_schema() with another model's identity", "another-model:v2"):
            store.create_schema(Schema(dim=DIM, identity="another-model:v2", fields=FIELDS))

    # -- before a schema exists ------------------------------------------------------------------
    @pytest.mark.parametrize("operation", sorted(BEFORE_SCHEMA))
    def test_operations_before_schema_raise_configuration_error(self, store: VectorStore, operation: str) -> None:
        with expect_error(ConfigurationError, f"{operation}() before create_schema()", "schema"):
            BEFORE_SCHEMA[operation](store)
        assert store.count() == 0, "count() before create_schema() must be 0"
        assert store.describe() is None, f"a refused {operation}() must not create a schema"

    def test_close_is_idempotent(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.close()
        store.close()

    # -- writing and reading ---------------------------------------------------------------------
    def test_upsert_then_get_returns_vectors_and_metadata(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        records = make_records(5)
        store.upsert(records)
        assert store.count() == 5, f"count() after upserting 5 records must be 5, got {store.count()}"
        got = store.get([r.id for r in records])
        assert _ids(got) == _ids(records), "get(ids) must return the records in the order asked"
        for g, r in zip(got, records):
            np.testing.assert_allclose(g.vector, r.vector, atol=1e-6, err_msg=f"get() changed the vector of {r.id}")
            assert dict(g.metadata) == dict(r.metadata), f"get() changed the metadata of {r.id}"

    def test_upsert_empty_list_is_a_no_op(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.upsert([])
        assert store.count() == 0, "upsert([]) must store nothing"

    def test_upsert_replaces_by_id(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.upsert(make_records(4))
        new_vector = unit_vectors(1, seed=99)[0]
        store.upsert([Record("r001", new_vector, {"label": "owl"})])
        assert store.count() == 4, "upsert() of an existing id must replace it, not add a second record"
        (got,) = store.get(["r001"])
        np.testing.assert_allclose(got.vector, new_vector, atol=1e-6, err_msg="upsert() must replace the vector")
        assert dict(got.metadata) == {"label": "owl"}, (
            f"upsert() must wholly replace the metadata (not merge it), got {dict(got.metadata)!r}"
        )
        hits = store.search(new_vector[None, :], 1)[0]
        assert hits[0].id == "r001", "search() must use the replaced vector"
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)

    def test_get_keeps_requested_order_and_leaves_out_missing(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        got = store.get(["r010", "nope", "r002", "r033", "also-missing"])
        assert _ids(got) == ["r010", "r002", "r033"], (
            f"get() must return existing records in the order asked and leave missing ids out, got {_ids(got)}"
        )
        assert store.get([]) == [], "get([]) must return []"
        assert store.get(["missing"]) == [], "get() of a missing id must return [] (not raise)"

    def test_get_with_repeated_id_returns_it_once(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        got = _ids(store.get(["r004", "r004", "r001"]))
        assert got == ["r004", "r001"], f"get() with a repeated id must return that record once, got {got}"

    def test_delete_returns_number_removed(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        removed = store.delete(["r000", "r001", "missing", "r001"])
        assert removed == 2, f"delete() must return how many records it removed (2), got {removed!r}"
        assert store.count() == len(records) - 2
        assert store.get(["r000", "r001"]) == [], "get() must not return deleted records"
        assert store.delete(["r000"]) == 0, "delete() of an id already deleted must return 0"
        assert store.delete([]) == 0, "delete([]) must return 0"
        hits = store.search(records[0].vector[None, :], len(records))[0]
        assert {"r000", "r001"}.isdisjoint(_ids(hits)), "search() must not return deleted records"

    def test_scan_yields_every_record_once(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        batches = list(store.scan(batch_size=7))
        assert all(0 < len(b) <= 7 for b in batches), "scan(batch_size=7) must yield non-empty batches of <= 7"
        ids = [r.id for b in batches for r in b]
        assert sorted(ids) == sorted(r.id for r in records), "scan() must yield every record exactly once"
        by_id = {r.id: r for r in records}
        for r in (r for b in batches for r in b):
            np.testing.assert_allclose(r.vector, by_id[r.id].vector, atol=1e-6, err_msg=f"scan() changed {r.id}")
            assert dict(r.metadata) == dict(by_id[r.id].metadata), f"scan() changed the metadata of {r.id}"

    def test_scan_of_empty_store_yields_nothing(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        assert list(store.scan()) == [], "scan() of an empty store must yield no batch (not an empty one)"

    @pytest.mark.parametrize("bad", sorted(INVALID_RECORDS))
    def test_invalid_records_are_refused(self, store: VectorStore, bad: str) -> None:
        store.create_schema(SCHEMA)
        with expect_error(ConfigurationError, f"upsert() of an invalid record ({bad})"):
            store.upsert([make_records(1)[0], INVALID_RECORDS[bad]])
        assert store.count() == 0, (
            "a refused upsert() must store nothing: validate every record before writing any"
        )

    def test_duplicate_ids_in_one_upsert_are_refused(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        one = make_records(1)[0]
        with expect_error(ConfigurationError, "upsert() with the same id twice in one call", "duplicate"):
            store.upsert([one, Record(one.id, unit_vectors(1, seed=5)[0], {})])

    # -- metadata --------------------------------------------------------------------------------
    def test_metadata_round_trips(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        records = [
            Record(
                f"m{i}",
                vec,
                {
                    "path": f"/data/ph\u00f6tos/{i} \"x\".jpg",
                    "sha256": f"{i:064x}",
                    "label": value,
                    "extra": value,
                },
            )
            for i, (vec, value) in enumerate(zip(unit_vectors(len(AWKWARD_VALUES)), AWKWARD_VALUES))
        ]
        store.upsert(records)
        got = {r.id: r for r in store.get(_ids(records))}
        for r in records:
            assert dict(got[r.id].metadata) == dict(r.metadata), (
                f"metadata must come back unchanged from get(): stored {dict(r.metadata)!r}, "
                f"got {dict(got[r.id].metadata)!r} (quotes, backslashes, newlines, unicode, '')"
            )
        for r in records:
            hit = store.search(r.vector[None, :], 1)[0][0]
            assert hit.id == r.id
            assert hit.path == r.metadata["path"], "Hit.path must be the record's 'path' metadata"
            assert hit.content_hash == r.metadata["sha256"], (
                "Hit.content_hash must be the record's 'sha256' metadata"
            )
            assert dict(hit.metadata) == {
                k: v for k, v in r.metadata.items() if k not in ("path", "sha256")
            }, "Hit.metadata must be the record's metadata without 'path' and 'sha256'"

    def test_awkward_ids_round_trip(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        vectors = unit_vectors(len(AWKWARD_IDS), seed=4)
        store.upsert([Record(rid, v, {"label": "x"}) for rid, v in zip(AWKWARD_IDS, vectors)])
        assert _ids(store.get(AWKWARD_IDS)) == AWKWARD_IDS, "ids with quotes, slashes, spaces, unicode must round-trip"
        assert [hits[0].id for hits in store.search(vectors, 1)] == AWKWARD_IDS
        assert sorted(r.id for r in all_records(store)) == sorted(AWKWARD_IDS)
        assert store.delete(AWKWARD_IDS[:2]) == 2
        assert store.count() == len(AWKWARD_IDS) - 2

    def test_number_and_bool_metadata_round_trip_with_their_types(self, store: VectorStore) -> None:
        store.create_schema(Schema(dim=DIM, identity="contract-test:v1", fields=("path", "year", "ok")))
        metadata: list[dict[str, Any]] = [
            {"year": 2024, "ok": True, "ratio": 0.25, "big": 2**40, "neg": -3},
            {"year": 1999, "ok": False, "ratio": -1.5, "big": 0, "neg": -0.0},
        ]
        vectors = unit_vectors(2, seed=6)
        store.upsert([Record(f"n{i}", v, m) for i, (v, m) in enumerate(zip(vectors, metadata))])
        for record, want in zip(store.get(["n0", "n1"]), metadata):
            got = dict(record.metadata)
            assert got == want, f"metadata must round-trip: stored {want!r}, got {got!r}"
            assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}, (
                "int, float and bool metadata must keep their types (True is not 1, 2 is not 2.0)"
            )
        hit = store.search(vectors[:1], 1, {"year": 2024, "ok": True})[0][0]
        assert hit.id == "n0" and hit.metadata["year"] == 2024 and hit.metadata["ok"] is True
        assert store.search(vectors[:1], 2, {"year": [1999]})[0][0].id == "n1"
        assert store.search(vectors[:1], 2, {"ok": False})[0][0].id == "n1"
        assert store.search(vectors[:1], 2, {"year": "2024"}) == [[]], "a filter str must never equal a number"
        assert store.search(vectors[:1], 2, {"ok": 1}) == [[]], "a filter int must never equal a bool"

    @pytest.mark.parametrize("value", AWKWARD_VALUES[:3])
    def test_filter_on_awkward_string_values(self, store: VectorStore, value: str) -> None:
        store.create_schema(SCHEMA)
        records = make_records(10)
        special = Record("special", unit_vectors(1, seed=7)[0], {"label": value})
        store.upsert([*records, special])
        hits = store.search(records[0].vector[None, :], 5, {"label": value})[0]
        assert _ids(hits) == ["special"], f"filter {{'label': {value!r}}} must match exactly that value, got {_ids(hits)}"

    # -- metadata values: every store keeps the same ones, and refuses the same ones ----------
    @pytest.mark.parametrize("name", list(REFUSED_VALUES))
    def test_unfilterable_values_are_refused_at_upsert(self, store: VectorStore, name: str) -> None:
        value = REFUSED_VALUES[name]
        store.create_schema(VALUE_SCHEMA)
        vectors = unit_vectors(3, seed=11)
        store.upsert([Record(f"o{i}", vectors[i], {"value": f"other-{i}"}) for i in range(2)])
        with expect_error(
            ConfigurationError,
            f"upsert() of a record 'odd' with metadata {{'value': {value!r}}} ({name})",
            names=("'odd'", "'value'"),
            why="No store can keep this value and filter on it alike; refuse it before writing "
            "anything (lookalike.filters.value_problem(value) says which values, and why)",
        ):
            store.upsert([Record("odd", vectors[2], {"value": value, "label": "odd"})])
        left = sorted(r.id for r in store.get(["odd", "o0", "o1"]))
        assert left == ["o0", "o1"], (
            f"a refused upsert() must store nothing and keep the records already there, got {left}"
        )

    @pytest.mark.parametrize("name", list(REFUSED_VALUES))
    def test_unfilterable_values_are_refused_in_filters(self, store: VectorStore, name: str) -> None:
        value = REFUSED_VALUES[name]
        store.create_schema(VALUE_SCHEMA)
        store.upsert([Record("a", unit_vectors(1)[0], {"value": "x"})])
        for filter in ({"value": value}, {"value": ["x", value]}):
            with expect_error(
                ConfigurationError,
                f"search() with the filter {filter!r} ({name})",
                names=("'value'",),
                why="No store can hold this value; refuse it in a filter as upsert() does "
                "(lookalike.filters.normalize_filter checks filters so)",
            ):
                store.search(unit_vectors(1)[0], 1, filter)

    @pytest.mark.parametrize("name", list(EDGE_VALUES))
    def test_edge_values_are_kept_and_found(self, store: VectorStore, name: str) -> None:
        value = EDGE_VALUES[name]
        store.create_schema(VALUE_SCHEMA)
        got = _value_outcome(store, value, unit_vectors(3, seed=11))
        assert got == _stored(value), (
            f"metadata {{'value': {value!r}}} ({name}) is a value every store must keep exactly and "
            f"filter on: this store {_describe(got)}; it must keep it, read it back as {value!r} "
            f"({type(value).__name__}), and find ['odd'] by an equality filter and by an any-of filter"
        )

    def test_refused_value_in_a_batch_writes_nothing(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        vectors = unit_vectors(2)
        batch = [Record("a", vectors[0], {"label": "ok"}), Record("b", vectors[1], {"label": "bad\x00"})]
        with expect_error(
            ConfigurationError,
            "upsert() of records 'a' and 'b', with a NUL character in the 'label' of 'b'",
            names=("'b'", "'label'", "NUL"),
            why="Check every value of every record before writing any",
        ):
            store.upsert(batch)
        assert store.count() == 0, (
            "a refused upsert() must store nothing: check every value of every record before writing any"
        )

    # -- search ----------------------------------------------------------------------------------
    def test_search_is_best_first_with_cosine_scores(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        queries = unit_vectors(5, seed=42)
        results = store.search(queries, 10)
        assert len(results) == 5, "search() must return one list of hits per query row"
        for query, hits in zip(queries, results):
            expected = brute_force(records, query)
            assert len(hits) == 10
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True), "hits must be best first (score descending)"
            reference = dict(expected)
            for hit in hits:
                assert hit.score == pytest.approx(reference[hit.id], abs=1e-4), (
                    f"Hit.score must be the cosine similarity ({reference[hit.id]:.4f} for {hit.id}), "
                    f"got {hit.score}; convert a distance to a similarity"
                )
            # the 10 hits are the 10 best (up to ties at the cut-off)
            cutoff = expected[9][1]
            must_have = {i for i, s in expected if s > cutoff + 1e-4}
            assert must_have <= set(_ids(hits)), f"search() missed some of the 10 best: {sorted(must_have - set(_ids(hits)))}"

    @pytest.mark.parametrize("k", [1, 3, 59, 60, 61, 200])
    def test_search_returns_min_k_n_hits(self, filled: tuple[VectorStore, list[Record]], k: int) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=3), k)[0]
        assert len(hits) == min(k, len(records)), f"search(k={k}) over {len(records)} records must return {min(k, len(records))} hits, got {len(hits)}"
        assert len(set(_ids(hits))) == len(hits), "search() must not return a record twice"

    def test_every_stored_vector_finds_itself_first(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        vectors = np.stack([r.vector for r in records])
        results = store.search(vectors, 3)
        for record, hits in zip(records, results):
            assert hits[0].id == record.id, f"a stored vector must find its own record first ({record.id}), got {hits[0].id}"
            assert hits[0].score == pytest.approx(1.0, abs=1e-4), "a vector's cosine with itself is 1.0"
            assert hits[0].path == record.metadata["path"]
            assert hits[0].metadata["label"] == record.metadata["label"]

    def test_batch_of_queries_keeps_order(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        order = [17, 3, 42, 3, 0]
        results = store.search(np.stack([records[i].vector for i in order]), 2)
        assert [hits[0].id for hits in results] == [records[i].id for i in order], (
            "search() must answer the query rows in order (a repeated row too)"
        )

    def test_search_accepts_a_single_1d_vector(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        results = store.search(records[5].vector, 1)
        assert len(results) == 1 and results[0][0].id == records[5].id, (
            "search() of a 1-d vector must treat it as one query row"
        )

    def test_scores_are_cosine_for_unnormalised_queries(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        query = unit_vectors(1, seed=12)[0]
        unit_hits = store.search(query[None, :], 5)[0]
        scaled_hits = store.search(7.5 * query[None, :], 5)[0]
        assert _ids(scaled_hits) == _ids(unit_hits), "scaling a query must not change the ranking"
        for a, b in zip(scaled_hits, unit_hits):
            assert a.score == pytest.approx(b.score, abs=1e-4), (
                "scores must be cosine similarity, whatever the query's length: normalise the query"
            )
        score = store.search(0.01 * records[3].vector[None, :], 1)[0][0].score
        assert score == pytest.approx(1.0, abs=1e-4), f"a short copy of a stored vector must score 1.0, got {score}"

    def test_search_with_zero_vector_raises(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, "search() with an all-zero query", "zero"):
            store.search(np.zeros((1, DIM), dtype=np.float32), 3)

    def test_search_of_empty_store_gives_empty_lists(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        got = store.search(unit_vectors(2), 5)
        assert got == [[], []], f"search() of an empty store must give one empty list per query, got {got!r}"

    @pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
    def test_search_validates_k(self, filled: tuple[VectorStore, list[Record]], k: Any) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, f"search(k={k!r})", "k must be"):
            store.search(unit_vectors(1), k)

    def test_search_with_wrong_dim_raises(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, f"search() with a query of dim {DIM + 4} on a dim-{DIM} store", str(DIM)):
            store.search(unit_vectors(1, dim=DIM + 4), 3)

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_search_with_nan_raises(self, filled: tuple[VectorStore, list[Record]], bad: float) -> None:
        store, _ = filled
        query = unit_vectors(2)
        query[1, 3] = bad
        with expect_error(ConfigurationError, f"search() with {bad} in the query", "NaN"):
            store.search(query, 3)

    # -- filters ---------------------------------------------------------------------------------
    def test_filter_equality(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=8), 100, {"label": "dog"})[0]
        want = {r.id for r in records if r.metadata["label"] == "dog"}
        assert set(_ids(hits)) == want, f"filter {{'label': 'dog'}} must return exactly the {len(want)} dogs, got {len(hits)} hits"
        assert all(h.metadata["label"] == "dog" for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True), "filtered hits must be best first too"

    def test_filter_in_list(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=8), 100, {"label": ["dog", "fish"]})[0]
        want = {r.id for r in records if r.metadata["label"] in ("dog", "fish")}
        assert set(_ids(hits)) == want, (
            f"a list in a filter means any of: {{'label': ['dog', 'fish']}} must return the {len(want)} "
            f"dogs and fish, got {len(hits)} hits"
        )

    def test_filter_and_of_two_fields(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, records = filled
        hits = store.search(unit_vectors(1, seed=8), 100, {"label": "cat", "colour": "blue"})[0]
        expected = {r.id for r in records if r.metadata["label"] == "cat" and r.metadata["colour"] == "blue"}
        assert expected and set(_ids(hits)) == expected, "several filter keys must all match (AND)"

    def test_filter_on_path(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        hits = store.search(unit_vectors(1), 5, {"path": "/photos/007.jpg"})[0]
        assert _ids(hits) == ["r007"], f"a filter on 'path' must match the record's path, got {_ids(hits)}"
        assert hits[0].path == "/photos/007.jpg"

    def test_filter_with_no_match_gives_empty_lists(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        got = store.search(unit_vectors(3), 5, {"label": "unicorn"})
        assert got == [[], [], []], f"a filter that matches nothing must give one empty list per query, got {got!r}"

    def test_filter_on_undeclared_field_raises(self, filled: tuple[VectorStore, list[Record]]) -> None:
        store, _ = filled
        with expect_error(ConfigurationError, "search() filtering on a field the schema does not declare", "undeclared|not a declared"):
            store.search(unit_vectors(1), 5, {"undeclared": "x"})

    def test_selective_filter_still_returns_k_hits(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        records = make_records(300, labels=("common",))
        rare = set(range(0, 300, 50))  # 6 rare records among 300
        records = [
            Record(r.id, r.vector, {**r.metadata, "label": "rare"}) if i in rare else r
            for i, r in enumerate(records)
        ]
        store.upsert(records)
        query = records[1].vector[None, :]  # a common record: the rare ones are far from it
        hits = store.search(query, 5, {"label": "rare"})[0]
        assert len(hits) == 5, (
            f"a selective filter must still return k hits when k records match, got {len(hits)}: "
            "filter before taking the top k, not after"
        )
        expected = brute_force([records[i] for i in sorted(rare)], query[0])
        assert _ids(hits) == [i for i, _ in expected[:5]]
        assert len(store.search(query, 50, {"label": "rare"})[0]) == len(rare)

    # -- the same misuse raises the same error everywhere ----------------------------------------
    @pytest.mark.parametrize("misuse", sorted(MISUSE))
    def test_same_misuse_same_error(self, filled: tuple[VectorStore, list[Record]], misuse: str) -> None:
        store, records = filled
        action, error = MISUSE[misuse]
        with expect_error(error, f"misuse {misuse!r}"):
            action(store)
        assert store.count() == len(records), "a refused call must change nothing"

    # -- properties ------------------------------------------------------------------------------
    @_property(
        _self_top1_strategies,
        [
            {"n": 1, "k": 1, "seed": 0, "dim": 2},
            {"n": 40, "k": 50, "seed": 1, "dim": 2},
            {"n": 17, "k": 5, "seed": 2, "dim": 8},
            {"n": 40, "k": 40, "seed": 3, "dim": 64},
            {"n": 3, "k": 10, "seed": 2**32 - 1, "dim": 64},
        ],
    )
    def test_property_self_top1_sorted_and_length(self, fresh: _Fresh, n: int, k: int, seed: int, dim: int) -> None:
        store = fresh(Schema(dim=dim, identity="property:v1"))
        vectors = fresh.pad(unit_vectors(n, dim, seed))
        store.upsert([Record(f"p{i}", v, {"label": str(i % 3)}) for i, v in enumerate(vectors)])
        results = store.search(vectors, k)
        for i, hits in enumerate(results):
            assert len(hits) == min(k, n), f"search(k={k}) over {n} records must return {min(k, n)} hits"
            scores = [h.score for h in hits]
            assert all(a >= b for a, b in zip(scores, scores[1:])), "hits must be best first"
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            # ties with exact duplicates are allowed; otherwise the record itself is first
            same = [h.id for h in hits if h.score >= 1.0 - 1e-4]
            assert f"p{i}" in same or len(same) == min(k, n), f"p{i} must find itself among its top hits"

    @_property(_ties_strategies, [{"rows": rows, "k": k} for rows in _TIE_ROWS for k in (1, 4, 35)])
    def test_property_ties_and_duplicates(self, fresh: _Fresh, rows: list[list[int]], k: int) -> None:
        """Small integer vectors make many exact duplicates and tied scores."""
        store = fresh(Schema(dim=4, identity="property:v1"))
        matrix = np.asarray(rows, dtype=np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        matrix = fresh.pad(matrix)
        records = [Record(f"t{i}", v) for i, v in enumerate(matrix)]
        store.upsert(records)
        for i, hits in enumerate(store.search(matrix, k)):
            assert len(hits) == min(k, len(rows))
            reference = dict(brute_force(records, matrix[i]))
            scores = [h.score for h in hits]
            assert all(a >= b - 1e-6 for a, b in zip(scores, scores[1:])), "hits must be best first, ties too"
            for hit in hits:
                assert hit.score == pytest.approx(reference[hit.id], abs=1e-4), "Hit.score must be the cosine"
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)

    @_property(
        _ops_strategies,
        [
            {"ops": []},
            {"ops": [("upsert", [1, 2, 3]), ("delete", [2, 9]), ("upsert", [2, 3]), ("delete", [1, 1])]},
            {"ops": [("delete", [0]), ("upsert", [0, 15, 7, 7]), ("upsert", [15]), ("delete", [15, 0, 7])]},
            {"ops": [("upsert", list(range(5))), ("upsert", list(range(3, 8))), ("delete", [4, 5, 6])]},
        ],
    )
    def test_property_upserts_and_deletes_match_a_dict(self, fresh: _Fresh, ops: list[tuple[str, list[int]]]) -> None:
        store = fresh(SCHEMA)
        model: dict[str, NDArray[np.float32]] = {}
        for step, (op, keys) in enumerate(ops):
            ids = list(dict.fromkeys(f"k{key}" for key in keys))
            if op == "upsert":
                vectors = fresh.pad(unit_vectors(len(ids), seed=step))
                store.upsert([Record(i, v, {"label": f"step{step}"}) for i, v in zip(ids, vectors)])
                model.update(zip(ids, vectors))
            else:
                removed = store.delete(ids)
                assert removed == sum(i in model for i in ids), "delete() must return how many existed"
                for i in ids:
                    model.pop(i, None)
        assert store.count() == len(model), f"count() must be {len(model)} after these upserts and deletes"
        ids_seen = [r.id for batch in store.scan(batch_size=3) for r in batch]
        assert sorted(ids_seen) == sorted(model), "scan() must yield exactly the records that remain"
        for record in store.get(sorted(model)):
            np.testing.assert_allclose(record.vector, model[record.id], atol=1e-6)

    @_property(
        _values_strategies,
        [
            {"value": v}
            for v in ["plain", "", 7, 1, True, False, 2.5, -0.0, "a\x00b", "\ud800", 2**64, -(2**63), float("nan")]
        ],
    )
    def test_property_metadata_values_behave_like_the_reference(self, fresh: _Fresh, value: Any) -> None:
        """Any value is refused at upsert, or kept with its type and found by an equality
        and an any-of filter, in every store exactly as in InMemoryStore (the reference)."""
        reference_store = InMemoryStore()
        reference_store.create_schema(VALUE_SCHEMA)
        reference = _value_outcome(reference_store, value, unit_vectors(3, seed=11))
        assert reference[0] == "refused" or reference == _stored(value), f"InMemoryStore {_describe(reference)}"
        store = fresh(VALUE_SCHEMA)
        got = _value_outcome(store, value, fresh.pad(unit_vectors(3, seed=11)))
        assert got == reference, (
            f"with metadata {{'value': {value!r}}} this store {_describe(got)}; InMemoryStore, the "
            f"reference, {_describe(reference)}. Every store must refuse what "
            "lookalike.filters.value_problem refuses and keep the rest exactly"
        )
