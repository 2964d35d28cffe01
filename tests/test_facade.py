"""The facade's store-level members the CLI routes through: ``schema`` and ``check``."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike import ImageSearchIndex, Schema
from lookalike.embedders import FakeEmbedder
from lookalike.errors import ConfigurationError
from lookalike.protocols import CheckableStore
from lookalike.stores import InMemoryStore, LocalStore


def test_schema_is_none_before_the_first_write_then_the_stored_one() -> None:
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=8), store=InMemoryStore())
    assert index.schema is None
    created = index.create_schema()
    assert index.schema == created == Schema(8, FakeEmbedder(dim=8).identity)


def test_schema_reads_a_store_of_another_embedder_without_complaint() -> None:
    store = InMemoryStore()
    store.create_schema(Schema(4, "someone-else"))
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=8), store=store)
    assert index.schema == Schema(4, "someone-else")


def test_check_on_a_store_without_an_integrity_check_names_the_store() -> None:
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=8), store=InMemoryStore())
    assert not isinstance(index.store, CheckableStore)
    with pytest.raises(ConfigurationError, match="InMemoryStore.*no integrity check"):
        index.check()


class _CheckingStore(InMemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, bool]] = []

    def check(self, *, fix: bool = False, rebuild: bool = False) -> list[str]:
        self.calls.append({"fix": fix, "rebuild": rebuild})
        return ["record 'a': damaged; dropped"] if fix else ["record 'a': damaged"]


def test_check_passes_fix_and_rebuild_to_the_store() -> None:
    store = _CheckingStore()
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=8), store=store)
    assert index.check() == ["record 'a': damaged"]
    assert index.check(fix=True, rebuild=True) == ["record 'a': damaged; dropped"]
    assert index.check(rebuild=True) == ["record 'a': damaged"]
    assert store.calls == [
        {"fix": False, "rebuild": False},
        {"fix": True, "rebuild": True},
        {"fix": False, "rebuild": True},
    ]


def test_check_of_a_healthy_local_store_is_empty(tmp_path: Path) -> None:
    with ImageSearchIndex(embedder=FakeEmbedder(dim=8), store=LocalStore(tmp_path / "s.db")) as index:
        index.create_schema()
        assert isinstance(index.store, CheckableStore)
        assert index.check() == []
        assert index.check(fix=True, rebuild=True) == []
