"""Names for stores and embedders, as the CLI and config use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike import ConfigurationError
from lookalike.embedders import FakeEmbedder
from lookalike.registry import default_store_path, embedder_for_identity, make_embedder, open_store
from lookalike.stores import InMemoryStore, LocalStore


def test_open_store_specs(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), InMemoryStore)
    assert isinstance(open_store("memory"), InMemoryStore)
    for spec in (str(tmp_path / "a.lookalike"), f"local:{tmp_path / 'b.lookalike'}", tmp_path / "c.lookalike"):
        store = open_store(spec)
        assert isinstance(store, LocalStore)
        store.close()
    assert sorted(p.name for p in tmp_path.glob("*.lookalike")) == ["a.lookalike", "b.lookalike", "c.lookalike"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [("s3://bucket/index", "unknown store URL"),
     ("tencent://host:8100/only-db", "DATABASE/COLLECTION"),
     ("tencent://root:secret@host:8100/db/coll", "TENCENT_VECTORDB_KEY")],
)
def test_bad_store_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        open_store(spec)
    assert "secret" not in str(info.value)


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "lookalike" / "index.lookalike"
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "mine.lookalike"))
    assert default_store_path() == tmp_path / "mine.lookalike"


def test_make_embedder_and_identity_round_trip() -> None:
    fake = make_embedder("fake", device="cpu", precision="fp32")
    assert isinstance(fake, FakeEmbedder) and fake.dim == 64
    other = FakeEmbedder(dim=12, seed=7)
    found = embedder_for_identity(other.identity)
    assert found is not None and found.identity == other.identity
    assert embedder_for_identity("someone-elses-model:v3") is None
    with pytest.raises(ConfigurationError, match="unknown embedder 'nope'"):
        make_embedder("nope")


def test_torch_embedders_round_trip_by_identity() -> None:
    pytest.importorskip("torchvision")
    names = ["resnet50", "resnet50-random", "torchvision:resnet18:none", "torchvision:resnet18:IMAGENET1K_V1"]
    for name in names:
        embedder = make_embedder(name, device="cpu")
        found = embedder_for_identity(embedder.identity, device="cpu")
        assert found is not None and found.identity == embedder.identity, name
    weights_file = embedder_for_identity(
        "torchvision:resnet50:file-sha256:0123456789abcdef:resize256-crop224-bilinear-imagenet-norm:penultimate-l2")
    assert weights_file is None  # needs the user's file: the CLI asks for --embedder
