"""``add_many(engine="ray")`` on a local Ray cluster (``ray.init(num_cpus=2)``, one for the
module): parity with the in-process path, skip-unchanged, a corrupt file, a model actor
killed mid-run, URLs read through ``pyarrow.fs``, workers writing to Tencent directly
without the key in any task argument, the CLI. Every run is small: the module takes well
under a minute; it is skipped when ``ray[data]`` is not installed."""

from __future__ import annotations

import json
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="engine='ray' needs ray[data]: pip install 'lookalike[ray]'")

import ray  # noqa: E402

from lookalike import ConfigurationError, ImageSearchIndex, Item, path_id, sources  # noqa: E402
from lookalike.cli import main  # noqa: E402
from lookalike.embedders.fake import FakeEmbedder  # noqa: E402
from lookalike.errors import ImageSearchError, MissingDependencyError, SchemaMismatchError  # noqa: E402
from lookalike.ray_engine import RayEngine, WorkerSpec, embedder_spec, from_uri, store_spec  # noqa: E402
from lookalike.stores import InMemoryStore, LocalStore  # noqa: E402
from lookalike.testing import make_images  # noqa: E402

from .ray_helpers import KillingFake, OtherFake, PixelFake, unloadable_torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TENCENT_KEY = "fake-key-Ray-77q"
KEY_ENV = "TENCENT_VECTORDB_KEY"
N_IMAGES = 24
BATCH = 8
ONE = RayEngine(workers=1)  # 2 CPUs: one model actor, one CPU left to decode


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One local cluster for the module. Its workers get the Tencent key through their
    environment (set before the cluster starts; the tests' driver has none) and import the
    repository's ``tests.ray_helpers``."""
    saved = {name: os.environ.get(name) for name in (KEY_ENV, "PYTHONPATH")}
    os.environ[KEY_ENV] = TENCENT_KEY
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), *filter(None, [saved["PYTHONPATH"]])])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for name, value in saved.items():  # the driver's environment as it was
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few dozen generated images (JPEG and PNG, two folders) and a corrupt file."""
    root = tmp_path_factory.mktemp("ray-photos")
    make_images(root / "a", N_IMAGES // 2, ext="jpg")
    make_images(root / "b", N_IMAGES // 2, ext="png", seed=100)
    (root / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    return root


def records(index: ImageSearchIndex) -> dict[str, Any]:
    return {r.id: r for batch in index.store.scan() for r in batch}


def assert_same_records(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same ids, metadata and vectors. Vectors to float32 rounding only: BLAS may sum a
    row in another order when the model's batch holds other rows (Ray batches differently)."""
    assert sorted(got) == sorted(want)
    for rid, record in want.items():
        assert dict(got[rid].metadata) == dict(record.metadata)
        np.testing.assert_allclose(got[rid].vector, record.vector, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def in_process(photos: Path) -> dict[str, Any]:
    index = ImageSearchIndex(FakeEmbedder(), InMemoryStore(), batch_size=BATCH)
    report = index.add_many(sources.from_dir(photos), metadata={"label": "x"})
    assert len(report.added) == N_IMAGES and len(report.failed) == 1
    return records(index)


def test_same_records_as_in_process_then_unchanged(cluster: Any, photos: Path, in_process: dict[str, Any],
                                                   tmp_path: Path) -> None:
    with ImageSearchIndex(FakeEmbedder(), LocalStore(tmp_path / "ray.lookalike"), batch_size=BATCH) as index:
        report = index.add_many(sources.from_dir(photos), metadata={"label": "x"}, engine=ONE)
        assert sorted(report.added) == sorted(in_process) and not report.updated
        assert report.embedded == N_IMAGES
        [failure] = report.failed
        assert failure.source.endswith("corrupt.jpg") and "not an image" in failure.reason
        assert_same_records(records(index), in_process)
        assert index.schema is not None and index.schema.identity == FakeEmbedder().identity

        # again, with two files listed twice (a CSV and a folder, say): every hash is the stored
        # one, so nothing is decoded or embedded, and the metadata rules are the in-process ones
        first, second = sorted((photos / "a").iterdir())[:2]
        twice: list[Any] = [Item(first, metadata={"note": "one"}), *sources.from_dir(photos),
                            Item(second, metadata={"label": "y"}), Item(first, metadata={"note": "two"})]
        local = ImageSearchIndex(FakeEmbedder(), InMemoryStore(), batch_size=BATCH)
        local.add_many(sources.from_dir(photos), metadata={"label": "x"})
        want = local.add_many(twice)
        again = index.add_many(twice, engine="ray")
        for kind in ("added", "updated", "unchanged"):
            assert sorted(getattr(again, kind)) == sorted(getattr(want, kind)), kind
        assert again.embedded == want.embedded == 0 and len(again.failed) == 1
        assert_same_records(records(index), records(local))
        assert index.get(path_id(first)).metadata["note"] == "two"


def test_killed_model_actor_is_retried_and_nothing_is_lost(cluster: Any, photos: Path,
                                                           in_process: dict[str, Any], tmp_path: Path) -> None:
    flag = tmp_path / "killed"
    embedder = KillingFake(str(flag), after=BATCH)  # the actor dies on its second batch, once
    with ImageSearchIndex(embedder, LocalStore(tmp_path / "s.lookalike"), batch_size=BATCH) as index:
        report = index.add_many(sources.from_dir(photos), metadata={"label": "x"}, engine=ONE)
        assert flag.exists()  # the actor was killed
        assert sorted(report.added) == sorted(in_process)
        assert_same_records(records(index), in_process)


def test_run_that_fails_keeps_what_landed_and_a_rerun_completes(cluster: Any, photos: Path,
                                                                in_process: dict[str, Any],
                                                                tmp_path: Path) -> None:
    flag = tmp_path / "killed"
    store = LocalStore(tmp_path / "s.lookalike")
    window = BATCH * 2  # the first window is written before the second one's actor is killed
    index = ImageSearchIndex(KillingFake(str(flag), after=window), store, batch_size=BATCH)
    with pytest.raises(ImageSearchError, match="Ray run failed"):
        index.add_many(sources.from_dir(photos), metadata={"label": "x"},
                       engine=RayEngine(workers=1, retries=0, window=window))
    assert flag.exists()
    first = [str(p) for p in list(sources.from_dir(photos))[:window] if p.name != "corrupt.jpg"]
    landed = records(index)
    assert sorted(r.path for r in landed.values()) == sorted(first)
    assert_same_records(landed, {rid: in_process[rid] for rid in landed})
    # the flag is there: the second run's actor is not killed, and completes the rest
    rerun = index.add_many(sources.from_dir(photos), metadata={"label": "x"}, engine=ONE)
    assert sorted(rerun.unchanged) == sorted(landed)
    assert sorted(rerun.added + rerun.unchanged) == sorted(in_process)
    assert_same_records(records(index), in_process)
    index.close()


def test_urls_through_pyarrow_fs_and_the_cli(cluster: Any, photos: Path, in_process: dict[str, Any],
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = photos / "a"
    url = folder.as_uri()  # file:///...: read by pyarrow.fs on the workers, like s3:// and gs://
    listed = list(from_uri(url))
    assert listed == [f"file://{p}" for p in sorted(str(p) for p in folder.glob("*.jpg"))]
    store = tmp_path / "cli.lookalike"
    code = main(["index", url, "--store", str(store), "--embedder", "fake", "--engine", "ray",
                 "--workers", "1", "--batch-size", str(BATCH), "--meta", "label=x", "--json", "-q"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["added"] == N_IMAGES // 2 and summary["count"] == N_IMAGES // 2
    by_path = {r.path: r for r in in_process.values()}
    with LocalStore(store) as opened:
        got = {r.path: r for batch in opened.scan() for r in batch}
    assert sorted(got) == listed  # the URL is the record's path
    for uri, record in got.items():
        want = by_path[uri[len("file://"):]]
        np.testing.assert_allclose(record.vector, want.vector, rtol=0, atol=1e-6)
        assert record.metadata["sha256"] == want.metadata["sha256"]
        assert record.metadata["label"] == "x"
    # a URL that names nothing: one clear error line, exit 1
    assert main(["index", url + "/nothing-here", "--store", str(store), "--engine", "ray", "-q"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_workers_write_to_tencent_and_no_key_travels(cluster: Any, photos: Path, in_process: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tcvectordb")
    from lookalike.stores import TencentVectorStore

    from .stores.tencent_server import FakeTencentServer

    sent: list[Any] = []
    real_map, real_items = ray.data.Dataset.map_batches, ray.data.from_items

    def map_batches(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append((args, kwargs))
        return real_map(self, *args, **kwargs)

    def from_items(items: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(items)
        return real_items(items, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", map_batches)
    monkeypatch.setattr(ray.data, "from_items", from_items)
    with FakeTencentServer(key=TENCENT_KEY) as server:
        store = TencentVectorStore(server.url, key=TENCENT_KEY, database="raydb", collection="images",
                                   timeout=5, backoff=0.01)
        driver_writes: list[int] = []
        real_upsert = store.upsert
        monkeypatch.setattr(store, "upsert", lambda rs: driver_writes.append(len(rs)) or real_upsert(rs))
        # pixels made in the decode tasks as arrays (as torch models make them), then embedded
        with ImageSearchIndex(PixelFake(), store, batch_size=BATCH) as index:
            report = index.add_many(sources.from_dir(photos), metadata={"label": "x"}, engine=ONE)
            assert sorted(report.added) == sorted(in_process) and len(report.failed) == 1
            assert not driver_writes  # the model actors wrote every record
            assert_same_records(records(index), in_process)
    from ray import cloudpickle

    shipped = cloudpickle.dumps(sent)
    assert TENCENT_KEY.encode() not in shipped and b"fake-key" not in shipped
    assert any("tencent" in repr(kwargs.get("fn_constructor_kwargs")) for _, kwargs in sent[1:] if
               isinstance(kwargs, dict))  # the store did travel, as a spec


# -- what the engine refuses, before any work ------------------------------------------------
class _Custom:
    dim, identity = 4, "custom:v1"

    def embed(self, images: Any) -> Any:
        return np.ones((len(images), 4), dtype=np.float32) / 2


def test_an_embedder_without_a_spec_is_refused_with_what_ray_needs(image_files: Path) -> None:
    index = ImageSearchIndex(_Custom(), InMemoryStore())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="worker_spec"):
        index.add_many(sources.from_dir(image_files), engine="ray")
    assert index.count() == 0


def test_specs_name_models_and_stores_never_keys(tmp_path: Path) -> None:
    assert embedder_spec(FakeEmbedder(dim=8, seed=3)) == WorkerSpec("identity:fake:v1:dim=8:seed=3", {})
    assert embedder_spec(FakeEmbedder(dim=8, seed=3)).build().identity == "fake:v1:dim=8:seed=3"
    assert embedder_spec(KillingFake("flag")).target == "tests.ray_helpers:KillingFake"
    assert store_spec(LocalStore(tmp_path / "x.lookalike")) is None  # the driver writes
    assert store_spec(InMemoryStore()) is None
    with pytest.raises(ConfigurationError, match="package.module:factory"):
        WorkerSpec("nonsense").build()
    pickle.dumps(embedder_spec(FakeEmbedder()))


def test_decode_tasks_make_a_torch_models_pixels_without_loading_it(photos: Path) -> None:
    """What a decode task runs (called here, in this process): the model's weights cannot
    load, yet every image gets its pixels, exactly the recipe's, and the corrupt file its reason."""
    from lookalike.images import load_image
    from lookalike.preprocess import ImagePreprocess
    from lookalike.ray_engine import _prepare

    files = [*sorted((photos / "a").glob("*.jpg"))[:2], photos / "b" / "corrupt.jpg"]
    n = len(files)
    text = lambda values: np.array(values, dtype=object)  # noqa: E731
    batch = {"chunk": np.zeros(n, dtype=np.int64), "place": np.arange(n), "id": text([f.name for f in files]),
             "meta": text([""] * n), "source": text([str(f) for f in files]), "path": text([str(f) for f in files]),
             "uri": text([""] * n), "data": text([b""] * n), "known": text([""] * n)}
    out = _prepare(batch, WorkerSpec("tests.ray_helpers:unloadable_torch"))
    recipe = unloadable_torch().spec.preprocess
    assert isinstance(recipe, ImagePreprocess)
    assert list(out["ready"]) == [True, True, False] and out["error"][2]
    for i in range(2):
        assert not out["error"][i] and len(out["sha256"][i]) == 64
        np.testing.assert_array_equal(out["pixels"][i], recipe.pixels(load_image(files[i])))


def test_the_workers_model_must_be_the_index_model(cluster: Any, image_files: Path) -> None:
    index = ImageSearchIndex(OtherFake(), InMemoryStore())
    with pytest.raises(SchemaMismatchError, match="seed=7"):
        index.add_many(sources.from_dir(image_files), engine=ONE)
    assert index.schema is None  # nothing written, not even the schema


@pytest.mark.parametrize("engine, message", [
    ("spark", "engine must be"),
    (RayEngine, "engine must be"),
])
def test_bad_engine_values(engine: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ImageSearchIndex(FakeEmbedder()).add_many([], engine=engine)


@pytest.mark.parametrize("options, message", [
    ({"workers": 0}, "workers"),
    ({"gpus_per_worker": -1}, "gpus_per_worker"),
    ({"window": 0}, "window"),
    ({"retries": -1}, "retries"),
])
def test_bad_engine_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RayEngine(**options)


def test_too_many_workers_for_the_cluster_is_an_error_not_a_hang(cluster: Any, image_files: Path) -> None:
    with pytest.raises(ConfigurationError, match="leaving none to read"):
        ImageSearchIndex(FakeEmbedder()).add_many(sources.from_dir(image_files), engine=RayEngine(workers=2))
    with pytest.raises(ConfigurationError, match="GPUs"):
        ImageSearchIndex(FakeEmbedder()).add_many(sources.from_dir(image_files),
                                                  engine=RayEngine(gpus_per_worker=1))


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch, image_files: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(MissingDependencyError, match=r"lookalike\[ray\]"):
        ImageSearchIndex(FakeEmbedder()).add_many(sources.from_dir(image_files), engine="ray")
