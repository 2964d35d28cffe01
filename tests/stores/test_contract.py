"""The VectorStore contract, run on every store of lookalike.

The suite itself is :class:`lookalike.testing.VectorStoreContract` (shipped in the wheel, so
that users check their own stores with the same tests); each class below gives it one of
our stores. To add a backend, add a subclass with a ``store`` fixture (and ``make_store``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lookalike.stores import InMemoryStore, LocalStore
from lookalike.testing import VectorStoreContract
from lookalike.testing.contract import SCHEMA, brute_force, make_records, unit_vectors

from .conftest import TENCENT_KEY
from .tencent_server import FakeTencentServer

__all__ = ["SCHEMA", "brute_force", "make_records", "unit_vectors"]  # used by the other store tests

_tencent_names = itertools.count()


class TestInMemoryStore(VectorStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryStore:
        return InMemoryStore()

    @pytest.fixture
    def make_store(self) -> Callable[[], InMemoryStore]:
        return InMemoryStore


class TestLocalStore(VectorStoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[Callable[[], LocalStore]]:
        made: list[LocalStore] = []

        def make() -> LocalStore:
            made.append(LocalStore(tmp_path / f"s{len(made)}" / "store.lookalike"))
            return made[-1]

        yield make
        for store in made:
            store.close()

    @pytest.fixture
    def store(self, make_store: Callable[[], LocalStore]) -> LocalStore:
        return make_store()


class TestTencentVectorStore(VectorStoreContract):
    """On the loopback wire server of ``tencent_server.py``."""

    @pytest.fixture
    def make_store(self, request: pytest.FixtureRequest) -> Iterator[Callable[[], object]]:
        pytest.importorskip("tcvectordb")
        from lookalike.stores import TencentVectorStore

        server: FakeTencentServer = request.getfixturevalue("tencent_server")
        server.clear_faults()
        made: list[TencentVectorStore] = []

        def make() -> TencentVectorStore:
            made.append(
                TencentVectorStore(
                    server.url, key=TENCENT_KEY, database=f"contract{next(_tencent_names)}",
                    collection="images", timeout=5, backoff=0.01,
                )
            )
            return made[-1]

        yield make
        for store in made:
            store.close()

    @pytest.fixture
    def store(self, make_store: Callable[[], object]) -> object:
        return make_store()
