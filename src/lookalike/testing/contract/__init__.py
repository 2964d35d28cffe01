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

The suite is split by concern: one mixin per group of tests (``_schema``, ``_records``,
``_metadata``, ``_search``, ``_filters``, ``_pairs``, ``_properties``), the helpers and data in ``_kit``, the
property-test machinery in ``_property``. Its helpers are importable from here.
This package imports pytest: import it from tests only.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ...protocols import VectorStore
from ...types import Record
from ._filters import FilterTests
from ._kit import (
    AWKWARD_IDS,
    AWKWARD_VALUES,
    BEFORE_SCHEMA,
    DIM,
    EDGE_VALUES,
    FIELDS,
    INT64_MAX,
    INT64_MIN,
    INVALID_RECORDS,
    MISUSE,
    PROPERTY_DIMS,
    REFUSED_VALUES,
    SCHEMA,
    VALUE_SCHEMA,
    Outcome,
    all_records,
    brute_force,
    expect_error,
    make_records,
    unit_vectors,
)
from ._metadata import MetadataTests
from ._pairs import PairTests
from ._properties import PropertyTests
from ._property import HAVE_HYPOTHESIS
from ._records import RecordTests
from ._schema import SchemaTests
from ._search import SearchTests

__all__ = [
    "AWKWARD_IDS",
    "AWKWARD_VALUES",
    "BEFORE_SCHEMA",
    "DIM",
    "EDGE_VALUES",
    "FIELDS",
    "HAVE_HYPOTHESIS",
    "INT64_MAX",
    "INT64_MIN",
    "INVALID_RECORDS",
    "MISUSE",
    "Outcome",
    "PROPERTY_DIMS",
    "REFUSED_VALUES",
    "SCHEMA",
    "VALUE_SCHEMA",
    "VectorStoreContract",
    "all_records",
    "brute_force",
    "expect_error",
    "make_records",
    "unit_vectors",
]


# pytest collects the tests of base classes in reverse MRO order: the last base's first. Listed
# so, the tests run in the order schema, records, metadata, search, filters, pairs, properties.
class VectorStoreContract(
    PropertyTests, PairTests, FilterTests, SearchTests, MetadataTests, RecordTests, SchemaTests
):
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
