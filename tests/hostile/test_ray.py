"""Hostile input for the Ray engine's own parts that need no cluster: URLs that name nothing
or are not URLs, worker specs that cannot be built, and ``--prune`` next to records whose
``path`` is a URL (it must never take "no such local file" for "the object is gone")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike import ConfigurationError, ImageLoadError, ImageSearchIndex, Record
from lookalike.embedders.fake import FakeEmbedder
from lookalike.stores import InMemoryStore


def test_prune_keeps_records_whose_path_is_a_url(tmp_path: Path) -> None:
    index = ImageSearchIndex(FakeEmbedder(dim=4), InMemoryStore())
    index.create_schema()
    vector = np.array([1, 0, 0, 0], dtype=np.float32)
    gone = tmp_path / "gone.jpg"
    index.store.upsert([
        Record("s3", vector, {"path": "s3://bucket/photos/a.jpg"}),
        Record("file", vector, {"path": (tmp_path / "b.jpg").as_uri()}),
        Record("local", vector, {"path": str(gone)}),  # a local file that is gone: pruned
    ])
    assert index.remove_missing() == ["local"]
    assert sorted(r.id for batch in index.store.scan() for r in batch) == ["file", "s3"]


def test_a_worker_spec_that_names_nothing_is_a_configuration_error() -> None:
    from lookalike.ray_engine import WorkerSpec

    with pytest.raises(ConfigurationError, match="every node"):
        WorkerSpec("no_such_package.models:Model").build()
    with pytest.raises(ConfigurationError, match="every node"):
        WorkerSpec("lookalike.embedders.fake:NoSuchClass").build()
    with pytest.raises(ConfigurationError, match="no registered embedder"):
        WorkerSpec("identity:made-up:v9").build()


def test_urls_that_name_nothing(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow.fs")
    from lookalike.ray_engine import from_uri, read_uri

    with pytest.raises(ConfigurationError, match="not a URL"):
        from_uri(str(tmp_path))
    with pytest.raises(ConfigurationError, match="does not exist"):
        list(from_uri((tmp_path / "nothing").as_uri()))
    with pytest.raises(ImageLoadError, match="file not found"):
        read_uri((tmp_path / "nothing.jpg").as_uri())
    (tmp_path / "folder.jpg").mkdir()  # a folder named like an image: never listed, never read
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "real.jpg").write_bytes(b"x")
    assert list(from_uri(tmp_path.as_uri())) == [(tmp_path / "real.jpg").as_uri()]
    with pytest.raises(ImageLoadError):
        read_uri((tmp_path / "folder.jpg").as_uri())
    with pytest.raises(ConfigurationError, match="cannot open"):
        list(from_uri("nosuchscheme-xyz://bucket/photos"))


def test_a_cluster_address_nobody_answers_at_is_an_error_not_a_wait(image_files: Path) -> None:
    pytest.importorskip("ray.data")
    import socket

    import ray

    from lookalike import sources
    from lookalike.ray_engine import RayEngine

    if ray.is_initialized():
        pytest.skip("a Ray cluster is connected already: the address would not be used")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    index = ImageSearchIndex(FakeEmbedder())
    with pytest.raises(ConfigurationError, match=f"cannot connect to the Ray cluster at 127.0.0.1:{port}"):
        index.add_many(sources.from_dir(image_files), engine=RayEngine(address=f"127.0.0.1:{port}"))
    assert not ray.is_initialized()


def test_bad_or_no_input_never_starts_a_cluster(image_files: Path) -> None:
    pytest.importorskip("ray.data")
    import ray

    before = ray.is_initialized()
    index = ImageSearchIndex(FakeEmbedder())
    with pytest.raises(ConfigurationError, match="not a folder path"):
        index.add_many(str(image_files), engine="ray")  # type: ignore[arg-type]
    report = index.add_many([], engine="ray")
    assert report.stored == 0 and not report.failed
    assert ray.is_initialized() == before
