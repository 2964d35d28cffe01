"""Metadata rules of the facade on every store: merge on re-index, reserved fields, copy.

``ImageSearchIndex`` (with ``FakeEmbedder``) and ``copy_store`` run over each store of
``STORE_FACTORIES``. The store-level rules (odd values refused at upsert and in filters,
edge values kept and found, the same answer as the reference store) are part of the store
contract: ``lookalike.testing.VectorStoreContract``, run in ``test_contract.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from lookalike import (
    ConfigurationError,
    ImageSearchIndex,
    NotFoundError,
    Record,
    Schema,
    VectorStore,
    path_id,
    sources,
)
from lookalike.embedders import FakeEmbedder
from lookalike.sources import Item
from lookalike.stores import InMemoryStore
from lookalike.stores.transfer import copy_store

from ..conftest import make_image

DIM = 8
SCHEMA = Schema(dim=DIM, identity="metadata-contract:v1", fields=("path", "label", "value"))


def unit_vectors(n: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    out: NDArray[np.float32] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


# -- the facade: merge on re-index, explicit replace and drop ----------------------------------
def write_images(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start, start + n):
        path = folder / f"img{seed:02d}.png"
        make_image(seed, size=(40, 32)).save(path)
        paths.append(path)
    return paths


def make_index(store: VectorStore, **kwargs: Any) -> tuple[ImageSearchIndex, FakeEmbedder]:
    embedder = FakeEmbedder(dim=DIM)
    return ImageSearchIndex(embedder=embedder, store=store, workers=2, **kwargs), embedder


def user_fields(index: ImageSearchIndex, rid: str) -> dict[str, Any]:
    return {k: v for k, v in index.get(rid).metadata.items() if k not in ("path", "sha256")}


def test_reindexing_a_folder_keeps_csv_labels(store: VectorStore, tmp_path: Path) -> None:
    """The issue's case: labels from a CSV, then the same folder again with from_dir."""
    paths = write_images(tmp_path / "photos", 4)
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "label"])
        for i, p in enumerate(paths):
            writer.writerow([i, f"photos/{p.name}", "cat" if i % 2 else "dog"])
    index, embedder = make_index(store)
    assert len(index.add_many(sources.from_csv(table)).added) == 4
    embedded = embedder.images_embedded
    again = index.add_many(sources.from_dir(tmp_path / "photos"))
    assert sorted(again.unchanged) == sorted(path_id(p) for p in paths)
    assert again.updated == [] and again.added == []
    assert embedder.images_embedded == embedded
    assert {h.id for h in index.search(paths[1], k=10, filter={"label": "cat"})} == {
        path_id(paths[1]), path_id(paths[3])}
    assert user_fields(index, path_id(paths[0])) == {"label": "dog", "csv_id": "0"}


def test_given_fields_replace_theirs_and_the_others_are_kept(store: VectorStore, tmp_path: Path) -> None:
    paths = write_images(tmp_path, 3)
    index, embedder = make_index(store)
    index.add_many(paths, metadata={"label": "old", "note": "keep me"})
    before = {p: index.get(path_id(p)) for p in paths}
    embedded = embedder.images_embedded
    report = index.add_many(paths, metadata={"label": "new"})
    assert sorted(report.updated) == sorted(path_id(p) for p in paths) and report.unchanged == []
    assert embedder.images_embedded == embedded  # metadata alone: no re-embedding
    for p in paths:
        after = index.get(path_id(p))
        assert np.array_equal(after.vector, before[p].vector)  # the stored vector is kept
        assert dict(after.metadata) == {**before[p].metadata, "label": "new"}
    same = index.add_many(paths, metadata={"label": "new"})  # given fields as stored: unchanged
    assert len(same.unchanged) == 3 and same.updated == []


def test_changed_content_is_re_embedded_and_keeps_fields(store: VectorStore, tmp_path: Path) -> None:
    path = write_images(tmp_path, 1)[0]
    index, embedder = make_index(store)
    rid = index.add(path, metadata={"label": "cat", "note": "n"})
    make_image(99, size=(40, 32)).save(path)
    report = index.add_many([path])
    assert report.updated == [rid]
    assert user_fields(index, rid) == {"label": "cat", "note": "n"}
    assert embedder.images_embedded == 2  # the new content was embedded
    assert index.search(path, k=1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_replace_metadata_drops_fields_not_given(store: VectorStore, tmp_path: Path) -> None:
    paths = write_images(tmp_path, 2)
    index, embedder = make_index(store)
    index.add_many(paths, metadata={"label": "cat", "note": "x"})
    embedded = embedder.images_embedded
    report = index.add_many(paths, metadata={"label": "dog"}, replace_metadata=True)
    assert len(report.updated) == 2 and embedder.images_embedded == embedded
    for p in paths:
        record = index.get(path_id(p))
        assert user_fields(index, path_id(p)) == {"label": "dog"}
        assert record.path == str(p.resolve()) and len(str(record.metadata["sha256"])) == 64
    bare = index.add_many(paths, replace_metadata=True)  # no fields at all: every user field goes
    assert len(bare.updated) == 2 and user_fields(index, path_id(paths[0])) == {}
    assert len(index.add_many(paths, replace_metadata=True).unchanged) == 2
    assert index.search(paths[0], k=5, filter={"label": "dog"}) == []


def test_add_replace_metadata_for_one_image(store: VectorStore, tmp_path: Path) -> None:
    path = write_images(tmp_path, 1)[0]
    index, _ = make_index(store)
    rid = index.add(path, metadata={"label": "a", "note": "b"})
    assert index.add(path, metadata={"note": "c"}) == rid
    assert user_fields(index, rid) == {"label": "a", "note": "c"}
    index.add(path, metadata={"note": "d"}, replace_metadata=True)
    assert user_fields(index, rid) == {"note": "d"}


def test_update_sets_and_drops_fields_without_re_embedding(store: VectorStore, tmp_path: Path) -> None:
    path = write_images(tmp_path, 1)[0]
    index, embedder = make_index(store)
    rid = index.add(path, metadata={"label": "cat", "note": "x"})
    vector = index.get(rid).vector
    record = index.update(rid, metadata={"label": "dog", "year": 2024}, drop=["note"])
    assert user_fields(index, rid) == {"label": "dog", "year": 2024} == {
        k: v for k, v in record.metadata.items() if k not in ("path", "sha256")}
    assert np.array_equal(index.get(rid).vector, vector) and embedder.images_embedded == 1
    assert index.get(rid).path == str(path.resolve())
    assert [h.id for h in index.search(path, k=3, filter={"label": "dog"})] == [rid]
    index.update(rid, drop=["label", "not-there"])  # dropping an absent field is fine
    assert user_fields(index, rid) == {"year": 2024}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metadata": {"path": "/elsewhere.png"}}, ConfigurationError, "'path'"),
        ({"metadata": {"sha256": "0" * 64}}, ConfigurationError, "'sha256'"),
        ({"drop": ["path"]}, ConfigurationError, "'path'"),
        ({"drop": ["sha256"]}, ConfigurationError, "'sha256'"),
        ({"metadata": {"label": "a\x00"}}, ConfigurationError, "NUL"),
    ],
)
def test_update_refuses_reserved_and_odd_fields(
    store: VectorStore, tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    path = write_images(tmp_path, 1)[0]
    index, _ = make_index(store)
    rid = index.add(path, metadata={"label": "cat"})
    before = dict(index.get(rid).metadata)
    with pytest.raises(error, match=match):
        index.update(rid, **kwargs)
    assert dict(index.get(rid).metadata) == before


def test_update_of_a_missing_id_raises_not_found(store: VectorStore) -> None:
    index, _ = make_index(store)
    with pytest.raises(NotFoundError, match="nope"):
        index.update("nope", metadata={"label": "x"})


def test_same_file_twice_in_one_call_merges_across_batches(store: VectorStore, tmp_path: Path) -> None:
    """--csv labels.csv photos/ in one run: the plain second mention keeps the labels
    even though the first one is still being written."""
    paths = write_images(tmp_path, 3)
    index, _ = make_index(store, batch_size=1)
    items: list[Any] = [Item(p, metadata={"label": f"l{i}"}) for i, p in enumerate(paths)]
    report = index.add_many([*items, *paths, *items[:1]])
    assert len(report.added) == 3
    for i, p in enumerate(paths):
        assert user_fields(index, path_id(p)) == {"label": f"l{i}"}
    assert index.count() == 3


def test_next_batch_read_before_the_labelled_one_is_written_still_merges(
    store: VectorStore, tmp_path: Path
) -> None:
    """Batches are read two ahead of the model, so the second mention of a file is looked
    up before the first one is written: it must merge with what this call is writing."""
    path = write_images(tmp_path, 1)[0]
    index, _ = make_index(store, batch_size=1)
    report = index.add_many([Item(path, metadata={"label": "cat"}), path])
    assert report.added == [path_id(path)] and report.unchanged == [path_id(path)]
    assert user_fields(index, path_id(path)) == {"label": "cat"}


def test_bytes_added_under_a_files_id_do_not_keep_its_path(store: VectorStore, tmp_path: Path) -> None:
    path = write_images(tmp_path, 1)[0]
    index, _ = make_index(store)
    rid = index.add(path, metadata={"label": "cat"})
    index.add(path.read_bytes(), id=rid)  # not a file: there is no path to keep
    record = index.get(rid)
    assert record.path is None and record.metadata["label"] == "cat"


# -- the path field belongs to the library ---------------------------------------------------
def test_user_path_in_shared_metadata_is_refused_before_anything_is_written(
    store: VectorStore, tmp_path: Path
) -> None:
    paths = write_images(tmp_path, 3)
    index, _ = make_index(store)
    with pytest.raises(ConfigurationError, match="'path'") as info:
        index.add_many(paths, metadata={"path": "/etc/passwd", "label": "x"})
    assert "reserved" in str(info.value)
    assert store.describe() is None or store.count() == 0


def test_user_path_for_one_file_is_refused_naming_the_file(store: VectorStore, tmp_path: Path) -> None:
    paths = write_images(tmp_path, 2)
    index, _ = make_index(store)
    index.add_many(paths[:1])
    with pytest.raises(ConfigurationError, match="'path'") as info:
        index.add(paths[1], metadata={"path": str(paths[0])})
    assert paths[1].name in str(info.value)
    with pytest.raises(ConfigurationError, match="'path'"):
        index.add_many([Item(paths[1], metadata={"path": "/x.png"})])
    with pytest.raises(ConfigurationError, match="'path'"):
        index.add_many(paths[1:], metadata=[{"path": "/x.png"}])
    assert index.count() == 1 and index.get(path_id(paths[0])).path == str(paths[0].resolve())


def test_csv_with_a_path_column_beside_the_file_column_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "photos", 1)
    table = tmp_path / "t.csv"
    table.write_text("file,path,label\nphotos/img00.png,/etc/passwd,cat\n")
    with pytest.raises(ConfigurationError, match="'path'") as info:
        sources.from_csv(table, path_column="file")
    assert "t.csv" in str(info.value)
    sha = tmp_path / "s.csv"
    sha.write_text("path,sha256\nphotos/img00.png,abc\n")
    with pytest.raises(ConfigurationError, match="'sha256'"):
        sources.from_csv(sha)


def test_odd_values_are_refused_by_add_many_on_every_store(store: VectorStore, tmp_path: Path) -> None:
    paths = write_images(tmp_path, 2)
    index, _ = make_index(store)
    with pytest.raises(ConfigurationError, match="NUL"):
        index.add_many(paths, metadata={"label": "a\x00b"})
    with pytest.raises(ConfigurationError, match="64-bit"):
        index.add_many(paths, metadata={"label": 2**64})
    assert store.describe() is None or store.count() == 0


# -- copy onto a target that holds the record ------------------------------------------------
def filled_source(n: int = 3) -> InMemoryStore:
    source = InMemoryStore()
    source.create_schema(SCHEMA)
    vectors = unit_vectors(n, seed=3)
    source.upsert([Record(f"r{i}", vectors[i], {"path": f"/p/{i}.png", "label": f"src{i}"}) for i in range(n)])
    return source


def test_copy_keeps_fields_only_the_target_had(store: VectorStore) -> None:
    source = filled_source()
    store.create_schema(SCHEMA)
    old = unit_vectors(1, seed=9)[0]
    store.upsert([Record("r0", old, {"label": "mine", "value": "target only", "path": "/old.png"})])
    assert copy_store(source, store) == 3
    got = store.get(["r0"])[0]
    assert dict(got.metadata) == {"path": "/p/0.png", "label": "src0", "value": "target only"}
    assert np.allclose(got.vector, source.get(["r0"])[0].vector, atol=1e-6)  # the source's vector
    assert [h.id for h in store.search(got.vector, 3, {"value": "target only"})[0]] == ["r0"]


def test_copy_with_replace_metadata_takes_the_source_records_as_they_are(store: VectorStore) -> None:
    source = filled_source()
    store.create_schema(SCHEMA)
    store.upsert([Record("r1", unit_vectors(1, seed=9)[0], {"label": "mine", "value": "target only"})])
    copy_store(source, store, replace_metadata=True)
    assert dict(store.get(["r1"])[0].metadata) == {"path": "/p/1.png", "label": "src1"}


def test_copy_onto_an_empty_target_is_exact(store: VectorStore) -> None:
    source = filled_source(5)
    assert copy_store(source, store, batch_size=2) == 5
    for r in source.get([f"r{i}" for i in range(5)]):
        assert dict(store.get([r.id])[0].metadata) == dict(r.metadata)
    assert store.count() == 5
