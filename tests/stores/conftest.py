"""The ``store_factory`` / ``store`` fixtures: tests parametrised over every store.

The contract suite itself runs through ``lookalike.testing.VectorStoreContract`` (one
subclass per store in ``test_contract.py``); these fixtures serve the other cross-store
tests. To add a backend, add an entry to ``STORE_FACTORIES`` (a function that takes pytest's
``request`` and ``tmp_path`` and returns a fresh, empty store) and a subclass there.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lookalike.stores import InMemoryStore, LocalStore

from .tencent_server import FakeTencentServer

TENCENT_KEY = "fake-key-Zq81"
_tencent_names = itertools.count()


@pytest.fixture(scope="session")
def tencent_server() -> Iterator[FakeTencentServer]:
    """The loopback Tencent VectorDB wire server (``tencent_server.py``), one per session."""
    with FakeTencentServer(key=TENCENT_KEY) as server:
        yield server


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return InMemoryStore()


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return LocalStore(tmp_path / "store.lookalike")


def _tencent(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    pytest.importorskip("tcvectordb")
    from lookalike.stores import TencentVectorStore

    server: FakeTencentServer = request.getfixturevalue("tencent_server")
    server.clear_faults()
    return TencentVectorStore(
        server.url, key=TENCENT_KEY, database=f"db{next(_tencent_names)}", collection="images",
        timeout=5, backoff=0.01,
    )


STORE_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "memory": _memory,
    "local": _local,
    "tencent": _tencent,
}


@pytest.fixture(params=sorted(STORE_FACTORIES))
def store_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(store_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """Calling it returns a fresh empty store of the parametrised kind (closed at teardown)."""
    made: list[Any] = []
    counter = iter(range(1000))

    def make() -> Any:
        sub = tmp_path / f"s{next(counter)}"
        sub.mkdir()
        store = STORE_FACTORIES[store_name](request, sub)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(store_factory: Callable[[], Any]) -> Any:
    return store_factory()
