"""Search by text (#17) from the command line and the registry, with the tiny random CLIP
model of ``tests/conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import ImageSearchIndex, Text
from lookalike.cli import main
from lookalike.errors import ConfigurationError
from lookalike.registry import embedder_for_identity, make_embedder, make_model
from lookalike.stores import LocalStore

pytest.importorskip("torch")
pytest.importorskip("open_clip", reason="the [clip] extra (open-clip-torch) is not installed")

NAME = "clip:lookalike-tiny-clip:none"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def clip_store(tiny_clip: str, capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path) -> str:
    store = str(tmp_path / "clip.lookalike")
    code, out, err = run(capsys, "index", str(image_dir), "--store", store, "--embedder", NAME, "--json")
    assert code == 0, err
    assert json.loads(out)["added"] == 12
    return store


def test_search_text_takes_the_model_from_the_store(
    capsys: pytest.CaptureFixture[str], clip_store: str, image_dir: Path
) -> None:
    code, out, err = run(capsys, "search", "--text", "a red car", "--store", clip_store, "-k", "3", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["text"] == "a red car" and len(payload["hits"]) == 3
    with ImageSearchIndex(embedder=make_embedder(NAME, device="cpu"), store=LocalStore(clip_store)) as index:
        expected = index.search(Text("a red car"), k=3)
    assert [h["id"] for h in payload["hits"]] == [h.id for h in expected]
    assert [h["score"] for h in payload["hits"]] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_search_mixes_images_and_texts(capsys: pytest.CaptureFixture[str], clip_store: str, image_dir: Path) -> None:
    query = str(next(image_dir.rglob("*.jpg")))
    code, out, err = run(capsys, "search", query, "--text", "a dog", "--text", "two cats", "--store", clip_store,
                         "-k", "2", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert [p.get("query") or p.get("text") for p in payload] == [query, "a dog", "two cats"]
    assert payload[0]["hits"][0]["path"] == str(Path(query).resolve())  # a gallery image finds itself
    code, out, err = run(capsys, "search", query, "--text", "a dog", "--store", clip_store, "-k", "1")
    assert code == 0, err
    assert f"# {query}" in out and '# "a dog"' in out


def test_search_text_on_an_index_without_a_text_tower_names_the_models_that_can(
    capsys: pytest.CaptureFixture[str], store_with_fake: str
) -> None:
    code, out, err = run(capsys, "search", "--text", "a red car", "--store", store_with_fake)
    assert code == 1 and out == ""
    assert err.startswith("lookalike: error: cannot search by Text with FakeEmbedder")
    assert "ClipEmbedder (--embedder clip or clip:MODEL[:WEIGHTS]; pip install 'lookalike[clip]')" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture
def store_with_fake(capsys: pytest.CaptureFixture[str], image_dir: Path, tmp_path: Path) -> str:
    store = str(tmp_path / "fake.lookalike")
    assert run(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake", "-q")[0] == 0
    return store


def test_search_needs_an_image_or_a_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["search", "--store", "memory:"])
    assert info.value.code == 2
    assert "give a query IMAGE, or --text" in capsys.readouterr().err


def test_registry_names_and_reopens_clip_models(tiny_clip: str, tmp_path: Path) -> None:
    emb = make_embedder(NAME, device="cpu")
    assert emb.identity.startswith("clip:lookalike-tiny-clip:random-init:")
    again = embedder_for_identity(emb.identity, device="cpu")
    assert again is not None and again.identity == emb.identity
    b32 = make_embedder("clip:ViT-B-32")  # the default weights, pinned; nothing downloaded yet
    assert b32.identity.startswith("clip:ViT-B-32:laion2b_s34b_b79k:")
    assert make_embedder("clip").identity == b32.identity
    reopened = embedder_for_identity(b32.identity)
    assert reopened is not None and reopened.identity == b32.identity
    # a checkpoint file cannot be found again from the identity: the user names it
    path = tmp_path / "w.pt"
    path.write_bytes(b"not read until the model loads")
    from_file = make_embedder(f"clip:lookalike-tiny-clip:{path}")
    assert ":file-sha256:" in from_file.identity and embedder_for_identity(from_file.identity) is None


def test_onnx_runtime_is_refused_for_clip(tiny_clip: str) -> None:
    with pytest.raises(ConfigurationError, match="CLIP models run on torch only"):
        make_model(NAME, runtime="onnx-fp32")


def test_the_text_vector_is_the_query(tiny_clip: str, clip_store: str) -> None:
    with ImageSearchIndex(embedder=make_embedder(NAME, device="cpu"), store=LocalStore(clip_store)) as index:
        vector: Any = index.embed_queries([Text("a red car")])[0]
        assert np.allclose(vector, index.embedder.embed_text(["a red car"])[0])  # type: ignore[attr-defined]
        assert [h.id for h in index.search(vector, k=4)] == [h.id for h in index.search(Text("a red car"), k=4)]


# -- weighted queries: Mix ------------------------------------------------------------------------
def test_mix_is_the_normalised_weighted_sum_of_its_parts(tiny_clip: str, tmp_path: Path) -> None:
    from lookalike import Mix

    from .conftest import make_image

    emb = make_embedder(NAME, device="cpu", precision="fp32")
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"m{i}.png")
        make_image(i, (64, 48)).save(paths[-1])
    with ImageSearchIndex(embedder=emb, store=LocalStore(tmp_path / "m.lookalike")) as index:
        index.add_many(paths)
        image_vec = index.embed_queries([paths[0]])[0]
        text_vec = emb.embed_text(["at night"])[0]  # type: ignore[attr-defined]
        expected = image_vec + 0.3 * text_vec
        expected /= np.linalg.norm(expected)
        mix = Mix((paths[0], 1.0), (Text("at night"), 0.3))
        np.testing.assert_allclose(index.embed_queries([mix])[0], expected, atol=1e-6)
        hits = index.search(mix, k=6)
        assert [h.score for h in hits] == pytest.approx(sorted((index.embed_queries(paths) @ expected), reverse=True),
                                                       abs=1e-5)
        # with other queries in one call, a stored hit as a part, and a negative weight
        stored = index.search(paths[1], k=1)[0]
        minus = Mix((stored, 1.0), (Text("grass"), -0.5))
        rows = index.embed_queries([paths[2], minus, Text("a dog")])
        away = index.get(stored.id).vector - 0.5 * emb.embed_text(["grass"])[0]  # type: ignore[attr-defined]
        np.testing.assert_allclose(rows[1], away / np.linalg.norm(away), atol=1e-6)
        np.testing.assert_allclose(rows[2], emb.embed_text(["a dog"])[0], atol=1e-6)  # type: ignore[attr-defined]
        page = index.search(minus, k=1)._repr_html_()  # a notebook names the weighted query
        assert "1 × more like m1.png - 0.5 × “grass”" in page
        with pytest.raises(ConfigurationError, match="cancel out"):
            index.search(Mix((paths[0], 1.0), (paths[0], -1.0)))


def test_mix_checks_its_parts_and_needs_a_text_tower_for_text(tmp_path: Path) -> None:
    from lookalike import Mix
    from lookalike.display import describe_query
    from lookalike.embedders import FakeEmbedder

    for bad, message in (((), "one or more"), (("a.jpg",), r"\(query, weight\) pairs"),
                         ((("a.jpg", float("nan")),), "finite number"), ((("a.jpg", True),), "finite number"),
                         (((Mix(("a.jpg", 1.0)), 1.0),), "cannot hold another Mix")):
        with pytest.raises(ConfigurationError, match=message):
            Mix(*bad)
    mix = Mix(("a.jpg", 1.0), (Text("at night"), -0.25))
    assert describe_query(mix) == "1 × a.jpg - 0.25 × “at night”"
    assert mix == Mix(("a.jpg", 1), (Text("at night"), -0.25)) and repr(mix).startswith("Mix((")
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=8))
    with pytest.raises(ConfigurationError, match="text tower"):  # before any image is read
        index.search(Mix(("missing.jpg", 1.0), (Text("at night"), 0.3)))
