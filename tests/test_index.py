"""ImageSearchIndex facade behaviour with FakeEmbedder and the real stores."""

from __future__ import annotations

import csv
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lookalike import (
    AddReport,
    ConfigurationError,
    Hit,
    ImageLoadError,
    ImageSearchIndex,
    NotFoundError,
    Record,
    SchemaMismatchError,
    path_id,
    sources,
)
from lookalike.embedders import FakeEmbedder
from lookalike.sources import Item
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import encode, make_image


@pytest.fixture(params=["memory", "local"])
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., ImageSearchIndex]]:
    """Builds indexes over a fresh store of each kind; closes them afterwards."""
    made: list[ImageSearchIndex] = []

    def make(embedder: FakeEmbedder | None = None, **kwargs: Any) -> ImageSearchIndex:
        store = InMemoryStore() if request.param == "memory" else LocalStore(tmp_path / f"{len(made)}.lookalike")
        index = ImageSearchIndex(embedder=embedder or FakeEmbedder(), store=store, workers=2, **kwargs)
        made.append(index)
        return index

    yield make
    for index in made:
        index.close()


@pytest.fixture
def index(make_index: Callable[..., ImageSearchIndex]) -> ImageSearchIndex:
    return make_index()


def _write_images(folder: Path, seeds: range, ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"img{seed:03d}.{ext}"
        make_image(seed).save(path)
        paths.append(path)
    return paths


# -- adding ------------------------------------------------------------------------------------
def test_add_many_stores_a_folder_and_reports(index: ImageSearchIndex, image_dir: Path) -> None:
    report = index.add_many(sources.from_dir(image_dir))
    assert isinstance(report, AddReport)
    assert len(report.added) == 12 and report.stored == 12
    assert report.updated == [] and report.unchanged == [] and report.failed == []
    assert report.ok and report.seconds > 0
    assert "added 12" in str(report)
    assert index.count() == len(index) == 12
    paths = sorted(sources.from_dir(image_dir))
    assert report.added == [path_id(p) for p in paths]  # input order
    for p in paths:
        assert path_id(p) in index
        record = index.get(path_id(p))
        assert record.path == str(p.resolve())
        assert len(str(record.metadata["sha256"])) == 64


def test_ids_are_stable_path_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write_images(tmp_path / "x", range(1))[0]
    assert path_id(path) == path_id(str(path)) == path_id(tmp_path / "x" / ".." / "x" / path.name)
    monkeypatch.chdir(tmp_path)
    assert path_id(Path("x") / path.name) == path_id(path)
    assert path_id(path) != path_id(tmp_path / "x" / "other.png")


def test_reindexing_upserts_instead_of_duplicating(index: ImageSearchIndex, image_dir: Path) -> None:
    index.add_many(sources.from_dir(image_dir))
    again = index.add_many(sources.from_dir(image_dir))
    assert index.count() == 12
    assert len(again.unchanged) == 12 and again.added == [] and again.updated == []


def test_reindexing_only_embeds_new_and_changed_files(make_index: Callable[..., ImageSearchIndex],
                                                       tmp_path: Path) -> None:
    embedder = FakeEmbedder()
    index = make_index(embedder, batch_size=8)
    folder = tmp_path / "gallery"
    _write_images(folder, range(40))
    first = index.add_many(sources.from_dir(folder))
    assert len(first.added) == 40 and embedder.images_embedded == 40

    new = _write_images(folder, range(100, 110))  # 10 new files
    changed = folder / "img005.png"
    make_image(999).save(changed)
    before = embedder.images_embedded
    second = index.add_many(sources.from_dir(folder))
    assert embedder.images_embedded - before == 11  # 10 new + 1 changed, not 51
    assert sorted(second.added) == sorted(path_id(p) for p in new)
    assert second.updated == [path_id(changed)]
    assert len(second.unchanged) == 39
    assert index.count() == 50
    hit = index.search(changed, k=1)[0]
    assert hit.id == path_id(changed) and hit.score == pytest.approx(1.0, abs=1e-5)

    before = embedder.images_embedded
    third = index.add_many(sources.from_dir(folder))
    assert embedder.images_embedded == before and len(third.unchanged) == 50


def test_changed_metadata_alone_is_rewritten_without_embedding(index: ImageSearchIndex, tmp_path: Path) -> None:
    embedder = index.embedder
    assert isinstance(embedder, FakeEmbedder)
    paths = _write_images(tmp_path, range(3))
    index.add_many(paths, metadata={"label": "old"})
    before = embedder.images_embedded
    report = index.add_many(paths, metadata={"label": "new"})
    assert embedder.images_embedded == before
    assert sorted(report.updated) == sorted(path_id(p) for p in paths)
    assert index.get(path_id(paths[0])).metadata["label"] == "new"
    assert [h.id for h in index.search(paths[1], k=5, filter={"label": "new"})][0] == path_id(paths[1])
    assert index.search(paths[1], k=5, filter={"label": "old"}) == []


def test_bad_files_are_reported_and_the_rest_stored(index: ImageSearchIndex, tmp_path: Path) -> None:
    good = _write_images(tmp_path, range(5))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encode(make_image(50), "JPEG")[:200])
    empty = tmp_path / "empty.png"
    empty.touch()
    text = tmp_path / "text.png"
    text.write_text("hello")
    missing = tmp_path / "missing.png"
    inputs = [good[0], broken, good[1], empty, good[2], text, missing, good[3], good[4]]
    report = index.add_many(inputs, batch_size=2)
    assert sorted(report.added) == sorted(path_id(p) for p in good)
    assert index.count() == 5
    assert not report.ok
    failed = {f.source: f for f in report.failed}
    assert set(failed) == {str(broken), str(empty), str(text), str(missing)}
    assert "empty" in failed[str(empty)].reason
    assert "not an image" in failed[str(text)].reason
    assert "not found" in failed[str(missing)].reason
    assert failed[str(broken)].reason
    assert failed[str(missing)].id == path_id(missing)
    assert report.stored + len(report.failed) == len(inputs)  # nothing dropped silently


def test_on_error_raise(index: ImageSearchIndex, tmp_path: Path) -> None:
    good = _write_images(tmp_path, range(2))
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(ImageLoadError) as info:
        index.add_many([good[0], bad, good[1]], on_error="raise")
    assert info.value.source == str(bad)
    with pytest.raises(ConfigurationError, match="on_error"):
        index.add_many(good, on_error="ignore")


def test_add_returns_id_and_raises_on_bad_image(index: ImageSearchIndex, tmp_path: Path) -> None:
    path = _write_images(tmp_path, range(1))[0]
    assert index.add(path) == path_id(path)
    assert index.add(path) == path_id(path)  # again: unchanged, same id
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with pytest.raises(ImageLoadError, match="bad.png"):
        index.add(bad)
    assert index.count() == 1


def test_explicit_ids_and_metadata(index: ImageSearchIndex, tmp_path: Path) -> None:
    paths = _write_images(tmp_path, range(3))
    report = index.add_many(paths, ids=["a", "b", "c"], metadata=[{"label": "x"}, {"label": "y"}, {"label": "x"}])
    assert report.added == ["a", "b", "c"]
    assert index.get("b").metadata["label"] == "y"
    assert index.get("b").path == str(paths[1].resolve())
    assert {h.id for h in index.search(paths[0], k=10, filter={"label": "x"})} == {"a", "c"}
    assert index.add(paths[0], id="custom", metadata={"label": "z", "note": "hi"}) == "custom"
    assert dict(index.get("custom").metadata) | {} == {
        "label": "z", "note": "hi", "path": str(paths[0].resolve()),
        "sha256": index.get("a").metadata["sha256"],
    }


def test_items_carry_ids_and_metadata(index: ImageSearchIndex, tmp_path: Path) -> None:
    paths = _write_images(tmp_path, range(2))
    index.add_many([Item(paths[0], "first", {"label": "p"}), Item(paths[1], metadata={"label": "q"})])
    assert index.get("first").metadata["label"] == "p"
    assert index.get(path_id(paths[1])).metadata["label"] == "q"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ids": ["only-one"]}, "ids has 1"),
        ({"ids": ["a", "b", "c", "d"]}, "ids has 4"),
        ({"ids": ["a", ""]} , "non-empty"),
        ({"metadata": [{"label": "x"}]}, "metadata has 1"),
        ({"metadata": {"sha256": "forged"}}, "reserved"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
    ],
)
def test_add_many_argument_errors(index: ImageSearchIndex, tmp_path: Path, kwargs: dict[str, Any],
                                  match: str) -> None:
    paths = _write_images(tmp_path, range(2))
    with pytest.raises(ConfigurationError, match=match):
        index.add_many(paths, **kwargs)
    assert index.count() == 0  # refused before anything was stored


@pytest.mark.parametrize("kwargs", [{"ids": ["a", "b", "c", "d"]}, {"metadata": [{}, {}]}])
def test_length_mismatch_is_refused_before_the_first_batch(
    index: ImageSearchIndex, tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    paths = _write_images(tmp_path, range(3))
    with pytest.raises(ConfigurationError, match="entries but there are 3 images"):
        index.add_many(paths, batch_size=1, **kwargs)
    assert index.count() == 0


def test_add_many_refuses_a_single_image(index: ImageSearchIndex, tmp_path: Path) -> None:
    path = _write_images(tmp_path, range(1))[0]
    with pytest.raises(ConfigurationError, match="use add"):
        index.add_many(str(path))


def test_bytes_and_pil_inputs(index: ImageSearchIndex) -> None:
    img = make_image(7)
    data = encode(img, "PNG")
    id_bytes = index.add(data, metadata={"label": "bytes"})
    id_pil = index.add(make_image(8), metadata={"label": "pil"})
    assert id_bytes.startswith("sha256-") and id_pil.startswith("sha256-")
    assert index.add(data) == id_bytes  # content-derived: the same bytes, the same id
    assert index.get(id_bytes).path is None
    assert index.count() == 2
    assert index.search(data, k=1)[0].id == id_bytes
    assert index.search(img, k=1)[0].id == id_bytes
    assert index.search(make_image(8), k=1)[0].id == id_pil
    assert index.remove_missing() == []  # records without a path are kept


def test_mixed_inputs_in_one_call(index: ImageSearchIndex, tmp_path: Path) -> None:
    path = _write_images(tmp_path, range(1))[0]
    report = index.add_many([path, encode(make_image(21), "JPEG"), make_image(22)])
    assert len(report.added) == 3 and index.count() == 3


def test_truncated_pil_image_is_a_failure_not_a_crash(index: ImageSearchIndex, tmp_path: Path) -> None:
    full = encode(make_image(5, size=(300, 200)), "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[: len(full) // 2])
    with Image.open(cut) as lazy:
        report = index.add_many([lazy, make_image(6)])
    assert len(report.added) == 1
    assert [f.source for f in report.failed] == [str(cut)]
    assert "truncated" in report.failed[0].reason


def test_unsupported_input_is_a_failure_not_a_crash(index: ImageSearchIndex, tmp_path: Path) -> None:
    path = _write_images(tmp_path, range(1))[0]
    report = index.add_many([path, 42])  # type: ignore[list-item]
    assert len(report.added) == 1
    assert len(report.failed) == 1 and "unsupported" in report.failed[0].reason


def test_progress_bar(index: ImageSearchIndex, image_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = index.add_many(sources.from_dir(image_dir), progress=True)
    assert len(report.added) == 12
    err = capsys.readouterr().err
    assert "12/12" in err


def test_generator_input_without_length(index: ImageSearchIndex, tmp_path: Path) -> None:
    paths = _write_images(tmp_path, range(7))
    report = index.add_many((p for p in paths), batch_size=3, progress=True)
    assert len(report.added) == 7


# -- searching ---------------------------------------------------------------------------------
def test_search_finds_the_image_itself_first(index: ImageSearchIndex, image_dir: Path) -> None:
    index.add_many(sources.from_dir(image_dir))
    for path in sources.from_dir(image_dir):
        hits = index.search(path, k=5)
        assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
        assert hits[0].id == path_id(path)
        assert hits[0].path == str(path.resolve())
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert "sha256" not in hits[0].metadata and "path" not in hits[0].metadata
        assert hits[0].content_hash == index.get(hits[0].id).metadata["sha256"]


def test_search_finds_a_resized_copy(index: ImageSearchIndex, image_dir: Path) -> None:
    index.add_many(sources.from_dir(image_dir))
    original = next(iter(sources.from_dir(image_dir)))
    small = Image.open(original).resize((48, 40))
    assert index.search(small, k=1)[0].id == path_id(original)


def test_search_many_keeps_order_and_k(index: ImageSearchIndex, image_dir: Path) -> None:
    index.add_many(sources.from_dir(image_dir))
    paths = list(sources.from_dir(image_dir))
    queries = [paths[3], paths[0], paths[3], paths[11]]
    results = index.search_many(queries, k=20)
    assert [r[0].id for r in results] == [path_id(p) for p in queries]
    assert all(len(r) == 12 for r in results)  # k larger than the store


def test_vector_queries(index: ImageSearchIndex, image_dir: Path) -> None:
    index.add_many(sources.from_dir(image_dir))
    record = index.get(path_id(next(iter(sources.from_dir(image_dir)))))
    hits = index.search(np.asarray(record.vector) * 3.0, k=2)  # scaled: normalised again
    assert hits[0].id == record.id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    as_float64 = np.asarray(record.vector, dtype=np.float64).reshape(1, -1)
    assert index.search(as_float64, k=1)[0].id == record.id
    with pytest.raises(ConfigurationError, match="expects 64"):
        index.search(np.ones(3), k=1)
    with pytest.raises(ConfigurationError, match="non-zero"):
        index.search(np.zeros(64), k=1)
    with pytest.raises(ConfigurationError, match="finite"):
        index.search(np.full(64, np.nan), k=1)


def test_filters_through_the_facade(index: ImageSearchIndex, tmp_path: Path) -> None:
    paths = _write_images(tmp_path, range(9))
    labels = ["cat", "dog", "fish"] * 3
    index.add_many(paths, metadata=[{"label": lab} for lab in labels])
    hits = index.search(paths[0], k=10, filter={"label": "dog"})
    assert {h.id for h in hits} == {path_id(p) for p, lab in zip(paths, labels) if lab == "dog"}
    hits = index.search(paths[0], k=10, filter={"label": ["dog", "fish"]})
    assert len(hits) == 6 and all(h.metadata["label"] != "cat" for h in hits)
    assert index.search(paths[0], k=10, filter={"label": "owl"}) == []
    with pytest.raises(ConfigurationError, match="colour"):
        index.search(paths[0], k=10, filter={"colour": "red"})


def test_declared_fields_are_filterable(make_index: Callable[..., ImageSearchIndex], tmp_path: Path) -> None:
    index = make_index()
    schema = index.create_schema(fields=["label", "camera"])
    assert schema.fields == ("path", "label", "camera")
    paths = _write_images(tmp_path, range(4))
    index.add_many(paths, metadata=[{"camera": c} for c in ["x", "y", "x", "y"]])
    assert {h.id for h in index.search(paths[0], k=4, filter={"camera": "y"})} == {
        path_id(paths[1]), path_id(paths[3])}
    assert index.create_schema() == schema  # idempotent
    with pytest.raises(SchemaMismatchError, match="filter fields"):
        index.create_schema(fields=["label"])


@pytest.mark.parametrize("k", [0, -2, 2.5, True])
def test_search_validates_k(index: ImageSearchIndex, k: Any) -> None:
    with pytest.raises(ConfigurationError, match="k must be"):
        index.search(make_image(1), k=k)


def test_search_of_a_list_points_to_search_many(index: ImageSearchIndex) -> None:
    with pytest.raises(ConfigurationError, match="search_many"):
        index.search([make_image(1)], k=1)  # type: ignore[arg-type]


def test_search_of_an_unreadable_query_raises(index: ImageSearchIndex, tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="missing.jpg"):
        index.search(tmp_path / "missing.jpg")


def test_search_of_an_empty_index(index: ImageSearchIndex) -> None:
    assert index.search(make_image(1), k=3) == []
    assert index.search_many([make_image(1), make_image(2)]) == [[], []]
    assert index.search_many([]) == []


# -- records -----------------------------------------------------------------------------------
def test_get_delete_contains(index: ImageSearchIndex, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        index.get("anything")  # before any schema
    assert index.delete("anything") == 0
    assert "anything" not in index
    paths = _write_images(tmp_path, range(4))
    index.add_many(paths, ids=["a", "b", "c", "d"])
    record = index.get("a")
    assert isinstance(record, Record) and record.id == "a"
    assert "a" in index and "zzz" not in index and 5 not in index
    with pytest.raises(NotFoundError, match="zzz") as info:
        index.get("zzz")
    assert isinstance(info.value, KeyError)
    assert index.delete("a") == 1
    assert index.delete(["b", "c", "missing"]) == 2
    assert index.delete([]) == 0
    assert index.count() == 1 and "a" not in index
    assert [h.id for h in index.search(paths[0], k=10)] == ["d"]


def test_remove_missing(index: ImageSearchIndex, tmp_path: Path) -> None:
    paths = _write_images(tmp_path, range(5))
    index.add_many(paths)
    index.add(make_image(77))
    paths[1].unlink()
    paths[3].unlink()
    assert sorted(index.remove_missing()) == sorted([path_id(paths[1]), path_id(paths[3])])
    assert index.count() == 4
    assert index.remove_missing() == []


def test_remove_missing_keeps_what_it_cannot_check(index: ImageSearchIndex, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _write_images(tmp_path, range(3))
    index.add_many(paths)
    paths[2].unlink()
    real_stat = os.stat
    locked = str(paths[0].resolve())

    def stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    report = AddReport()
    assert index.remove_missing(report) == [path_id(paths[2])]
    assert path_id(paths[0]) in index and index.count() == 2
    assert [(f.source, f.id) for f in report.failed] == [(locked, path_id(paths[0]))]
    assert "permission denied" in report.failed[0].reason
    assert index.remove_missing() == []  # without a report: still kept


def test_add_many_of_a_folder_path_points_to_from_dir(index: ImageSearchIndex, tmp_path: Path) -> None:
    _write_images(tmp_path / "photos", range(1))
    for folder in (str(tmp_path / "photos") + "/", tmp_path / "photos"):
        with pytest.raises(ConfigurationError, match=r"not a folder path.*sources\.from_dir\("):
            index.add_many(folder)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"use add\(\) for one image.*sources\.from_dir"):
        index.add_many(str(tmp_path / "photos" / "img000.png"))  # type: ignore[arg-type]


def test_a_url_query_says_urls_are_not_fetched(index: ImageSearchIndex, tmp_path: Path) -> None:
    index.add_many(_write_images(tmp_path, range(1)))
    with pytest.raises(ImageLoadError) as info:
        index.search("https://example.com/cat.jpg")
    assert "does not fetch URLs" in info.value.reason and "bytes" in info.value.reason
    assert "not found" not in str(info.value)
    report = index.add_many(["http://example.com/dog.png"])
    assert "does not fetch URLs" in report.failed[0].reason


def test_an_empty_source_warns(index: ImageSearchIndex, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"no images found in .* \(looked for .*\.png"):
        report = index.add_many(sources.from_dir(tmp_path))
    assert report.stored == 0


def test_context_manager_closes_the_store(tmp_path: Path) -> None:
    path = _write_images(tmp_path, range(1))[0]
    with ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(tmp_path / "s.lookalike")) as index:
        index.add(path)
    with ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(tmp_path / "s.lookalike")) as index:
        assert path_id(path) in index


def test_default_store_is_in_memory_and_built_lazily() -> None:
    index = ImageSearchIndex(embedder=FakeEmbedder(dim=8))
    assert "not built yet" in repr(index)
    index.add(make_image(1))
    assert isinstance(index.store, InMemoryStore) and index.count() == 1


@pytest.mark.parametrize(("kwargs", "match"), [({"batch_size": 0}, "batch_size"),
                                               ({"workers": 0}, "workers"), ({"workers": -2}, "workers")])
def test_constructor_validates_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ImageSearchIndex(embedder=FakeEmbedder(), **kwargs)


# -- schema ------------------------------------------------------------------------------------
@pytest.mark.parametrize("other", [FakeEmbedder(dim=32), FakeEmbedder(seed=1)], ids=["dim", "identity"])
def test_store_of_another_embedder_is_refused_before_writing(
    tmp_path: Path, other: FakeEmbedder
) -> None:
    paths = _write_images(tmp_path / "imgs", range(3))
    store_path = tmp_path / "s.lookalike"
    with ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(store_path)) as index:
        index.add_many(paths[:2])
    with ImageSearchIndex(embedder=other, store=LocalStore(store_path)) as index:
        for action in (lambda: index.add_many(paths), lambda: index.add(paths[2]),
                       lambda: index.search(paths[0]), lambda: index.create_schema()):
            with pytest.raises(SchemaMismatchError) as info:
                action()
            assert FakeEmbedder().identity in str(info.value)
            assert other.identity in str(info.value)
        assert other.images_embedded == 0 and other.calls == 0  # refused before any work
        assert index.count() == 2


def test_from_csv_labels_are_metadata_and_filterable(index: ImageSearchIndex, tmp_path: Path) -> None:
    rows = []
    for i in range(6):
        label = "goldfish" if i < 3 else "tench"
        folder = tmp_path / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        make_image(i).save(folder / f"{i}.jpg")
        rows.append({"id": str(i), "path": f"./train/{label}/{i}.jpg", "label": label})
    csv_path = tmp_path / "list.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["id", "path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    report = index.add_many(sources.from_csv(csv_path))
    assert len(report.added) == 6
    first = tmp_path / "train" / "goldfish" / "0.jpg"
    record = index.get(path_id(first))
    assert record.metadata["label"] == "goldfish" and record.metadata["csv_id"] == "0"
    hits = index.search(first, k=10, filter={"label": "tench"})
    assert len(hits) == 3 and {h.metadata["label"] for h in hits} == {"tench"}
    again = index.add_many(sources.from_csv(csv_path))
    assert len(again.unchanged) == 6


def test_embedder_returning_bad_vectors_is_caught(index: ImageSearchIndex) -> None:
    class Broken(FakeEmbedder):
        def embed(self, images: Any) -> Any:
            return np.zeros((len(images), self.dim), dtype=np.float32)

    broken = ImageSearchIndex(embedder=Broken(), store=InMemoryStore())
    with pytest.raises(ConfigurationError, match="all-zero"):
        broken.add(make_image(1))
    assert broken.count() == 0


class FailingStore(InMemoryStore):
    """An InMemoryStore whose n-th upsert fails, as a flaky backend's would."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.upserts = 0
        self.fail_on = fail_on

    def upsert(self, records: Any) -> None:
        self.upserts += 1
        if self.upserts == self.fail_on:
            from lookalike import StoreConnectionError

            raise StoreConnectionError("backend went away", backend="FailingStore")
        super().upsert(records)


def _lookalike_threads() -> list[str]:
    import threading
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        # add_many's threads; an embedder's CPU streams (lookalike-forward) live as long as it
        alive = [t.name for t in threading.enumerate()
                 if t.name.startswith("lookalike") and not t.name.startswith("lookalike-forward")]
        if not alive:
            break
        time.sleep(0.05)
    return alive


def test_store_failure_mid_run_raises_and_keeps_earlier_batches(tmp_path: Path) -> None:
    from lookalike import StoreConnectionError

    paths = _write_images(tmp_path, range(10))
    store = FailingStore(fail_on=3)
    index = ImageSearchIndex(embedder=FakeEmbedder(), store=store, batch_size=2, workers=2)
    with pytest.raises(StoreConnectionError, match="went away"):
        index.add_many(paths)
    assert index.count() == 4  # the two batches written before the failure
    assert {path_id(p) for p in paths[:4]} == {r.id for b in store.scan() for r in b}
    assert _lookalike_threads() == []
    report = index.add_many(paths)  # a retry completes the job without re-embedding the rest
    assert len(report.unchanged) == 4 and len(report.added) == 6 and index.count() == 10


def test_error_in_the_callers_iterable_propagates(index: ImageSearchIndex, tmp_path: Path) -> None:
    paths = _write_images(tmp_path, range(6))

    def images() -> Iterator[Path]:
        yield from paths[:4]
        raise RuntimeError("listing failed")

    with pytest.raises(RuntimeError, match="listing failed"):
        index.add_many(images(), batch_size=2)
    assert index.count() in (2, 4)  # whole batches before the failure may be stored
    assert _lookalike_threads() == []


def test_stopping_early_leaves_no_threads(index: ImageSearchIndex, tmp_path: Path) -> None:
    paths = _write_images(tmp_path, range(8))
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    with pytest.raises(ImageLoadError):
        index.add_many([*paths[:2], bad, *paths[2:]], batch_size=2, on_error="raise")
    assert _lookalike_threads() == []
