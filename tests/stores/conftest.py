"""The ``store_factory`` fixture: every store the contract suite runs against.

To add a backend, add an entry to ``STORE_FACTORIES``: a function that takes pytest's
``request`` and ``tmp_path`` and returns a fresh, empty store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lookalike.stores import InMemoryStore, LocalStore


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return InMemoryStore()


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return LocalStore(tmp_path / "store.lookalike")


STORE_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "memory": _memory,
    "local": _local,
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
