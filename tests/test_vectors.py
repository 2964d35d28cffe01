"""Vectors that are not numbers get one clear ConfigurationError, never a bare ValueError (#14)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lookalike import ConfigurationError, ImageSearchIndex, Record
from lookalike.embedders import FakeEmbedder
from lookalike.stores import InMemoryStore, LocalStore
from lookalike.types import Schema

from .conftest import make_image

DIM = 4
BAD = [
    pytest.param(np.array([1.0, "a", 3.0, 4.0], dtype=object), "'a' (str)", id="object-str"),
    pytest.param(np.array([1.0, None, 3.0, 4.0], dtype=object), "None", id="object-none"),
    pytest.param(np.array([[1.0, 2.0], [3.0]], dtype=object), "list", id="object-ragged"),
    pytest.param(np.array(["1", "2", "3", "4"]), "dtype <U1", id="str-array"),
    pytest.param([1.0, "x", 3.0, 4.0], "dtype <U32", id="list-with-str"),
    pytest.param([[1.0, 2.0], [3.0]], "flat sequence", id="ragged-list"),
]


class ObjectEmbedder(FakeEmbedder):
    """An embedder that returns what it is told to (a broken model or plug-in)."""

    def __init__(self, returns: Any) -> None:
        super().__init__(dim=DIM)
        self.returns = returns

    def embed(self, images: Sequence[Image.Image]) -> Any:
        return np.array([self.returns] * len(images), dtype=object)


@pytest.mark.parametrize(("vector", "named"), BAD)
def test_a_query_vector_of_non_numbers(vector: Any, named: str) -> None:  # noqa: ARG001
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=DIM), store=InMemoryStore())
    index.add(make_image(1))
    query = vector if isinstance(vector, np.ndarray) else np.array(vector, dtype=object)
    with pytest.raises(ConfigurationError, match="query vector must .*numbers"):
        index.search(query)


@pytest.mark.parametrize("store", [InMemoryStore, "local"])
@pytest.mark.parametrize(("vector", "named"), BAD)
def test_stores_refuse_vectors_of_non_numbers(vector: Any, named: str, store: Any, tmp_path: Any) -> None:
    s = LocalStore(tmp_path / "s.lookalike") if store == "local" else store()
    s.create_schema(Schema(dim=DIM, identity="test:v1"))
    with pytest.raises(ConfigurationError, match="record 'r1'") as info:
        s.upsert([Record("r1", vector, {})])
    assert named in str(info.value)
    with pytest.raises(ConfigurationError, match="query vector"):
        s.search(vector if isinstance(vector, np.ndarray) else np.array(vector, dtype=object), 1)
    assert s.count() == 0
    s.close()


def test_an_embedder_that_returns_non_numbers() -> None:
    index = ImageSearchIndex(embedder=ObjectEmbedder([1.0, "x", 3.0, 4.0]), store=InMemoryStore())
    with pytest.raises(ConfigurationError, match=r"returned must hold only numbers, but holds 'x' \(str\)"):
        index.add(make_image(1))
    with pytest.raises(ConfigurationError, match="returned must hold only numbers"):
        index.search(make_image(1))


def test_object_arrays_of_numbers_still_work() -> None:
    index = ImageSearchIndex(embedder=ObjectEmbedder([1.0, 2, np.float32(3.0), 4]), store=InMemoryStore())
    index.add(make_image(1))
    hits = index.search(np.array([1.0, 2.0, 3.0, 4.0], dtype=object))
    assert len(hits) == 1 and hits[0].score == pytest.approx(1.0)
