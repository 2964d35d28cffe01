"""The facade: ``schema`` and ``check`` for the CLI, text queries, and the embedder's
declared contract (PixelEmbedder, its stand-in for plain embedders, TextEmbedder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

import lookalike
from lookalike import ImageSearchIndex, Schema, Text
from lookalike._embedding import PixelStandIn, pixel_embedder
from lookalike.embedders import FakeEmbedder
from lookalike.errors import ConfigurationError, ImageLoadError
from lookalike.protocols import CheckableStore, PendingVectors, PixelEmbedder, TextEmbedder
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import make_image


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


# -- the embedder's declared contract ---------------------------------------------------
class _Texty(FakeEmbedder):
    """A FakeEmbedder with a (fake) text tower: a text's vector is that of a fixed image."""

    def embed_text(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.embed([make_image(len(t)) for t in texts])


def test_text_is_a_query_type_and_refuses_empty_text() -> None:
    assert lookalike.Text("a red bicycle").text == "a red bicycle"
    assert "Text" in lookalike.__all__
    for bad in ("", "   ", b"bytes", None):
        with pytest.raises(ConfigurationError, match="Text takes a non-empty string"):
            Text(bad)  # type: ignore[arg-type]


def test_text_search_without_a_text_tower_names_the_embedder() -> None:
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=8), store=InMemoryStore())
    index.add(make_image(1))
    assert not isinstance(index.embedder, TextEmbedder)
    with pytest.raises(ConfigurationError, match=r"FakeEmbedder.*text search needs a model with a text tower"):
        index.search(Text("a goldfish"))
    with pytest.raises(ConfigurationError, match="text tower"):  # also mixed with images, before any work
        index.search_many([make_image(1), Text("a goldfish")])


def test_a_bare_str_stays_a_path() -> None:
    index = ImageSearchIndex(embedder=_Texty(), store=InMemoryStore())
    with pytest.raises(ImageLoadError, match="a red bicycle"):
        index.search("a red bicycle")  # a file name, not text, even with a text tower


def test_text_search_with_a_text_embedder_uses_embed_text() -> None:
    embedder = _Texty()
    assert isinstance(embedder, TextEmbedder)
    index = ImageSearchIndex(embedder=embedder, store=InMemoryStore())
    ids = [index.add(make_image(i)) for i in range(2, 6)]
    hits = index.search(Text("abc"), k=1)  # len 3 -> the vector of make_image(3)
    assert hits[0].id == ids[1] and hits[0].score > 0.999
    mixed = index.search_many([Text("abcd"), make_image(5)], k=1)
    assert [r[0].id for r in mixed] == [ids[2], ids[3]]


class _PlainSized(FakeEmbedder):
    image_size = 24


class _HalfPixels(FakeEmbedder):
    """pixels + embed_pixels, but no pixel_function, submit_pixels or image_size."""

    def pixels(self, image: Image.Image) -> Any:
        return ("px", image)

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]:
        assert all(tag == "px" for tag, _ in items)
        return self.embed([image for _, image in items])


def test_pixel_embedder_is_decided_once_and_plain_ones_get_a_stand_in() -> None:
    plain = FakeEmbedder(dim=8)
    stand_in = pixel_embedder(plain)
    assert isinstance(stand_in, PixelStandIn) and isinstance(stand_in, PixelEmbedder)
    assert stand_in.passes_images and stand_in.image_size is None and stand_in.pixel_function() is None
    assert repr(stand_in) == repr(plain) and stand_in.identity == plain.identity and stand_in.dim == 8
    image = make_image(3)
    assert stand_in.pixels(image) is image
    pending = stand_in.submit_pixels([image])
    assert isinstance(pending, PendingVectors) and not pending.in_background
    np.testing.assert_array_equal(pending.result(), plain.embed([image]))
    assert pixel_embedder(_PlainSized()).image_size == 24


def test_a_partial_pixel_embedder_keeps_its_own_members() -> None:
    half = _HalfPixels()
    assert not isinstance(half, PixelEmbedder)
    view = pixel_embedder(half)
    assert isinstance(view, PixelStandIn) and not view.passes_images
    image = make_image(4)
    assert view.pixels(image) == ("px", image)
    np.testing.assert_array_equal(view.submit_pixels([view.pixels(image)]).result(), half.embed([image]))
    index = ImageSearchIndex(embedder=half, store=InMemoryStore())
    rid = index.add(make_image(4))
    np.testing.assert_allclose(index.get(rid).vector, half.embed([make_image(4)])[0], atol=1e-6)


def test_torch_embedders_are_pixel_embedders_themselves() -> None:
    torch = pytest.importorskip("torch")
    from lookalike.embedders import TorchEmbedder

    embedder = TorchEmbedder(torch.nn.Flatten(), lambda im: torch.zeros(3, 2, 2), dim=12, identity="t")
    assert isinstance(embedder, PixelEmbedder)
    assert pixel_embedder(embedder) is embedder


def test_the_facade_and_the_pipeline_probe_no_hook_by_name() -> None:
    """Optional members are declared protocols checked with isinstance, never getattr."""
    import inspect

    from lookalike import _embedding, _ingest, _inputs, _queries, index
    from lookalike.serve import service

    for module in (index, _ingest, _inputs, _queries, _embedding, service):
        assert "getattr(" not in inspect.getsource(module), module.__name__
