"""The pipelined add_many (#7): order, ids and failures under concurrency, bounded memory,
errors and early stops that propagate without hanging, writes overlapping embedding."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from lookalike import ImageLoadError, ImageSearchIndex, Record, StoreError
from lookalike.embedders import FakeEmbedder
from lookalike.sources import Item
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import encode, make_image


class PreparingEmbedder(FakeEmbedder):
    """FakeEmbedder with the pixels / embed_pixels split that torch embedders have."""

    def __init__(self) -> None:
        super().__init__()
        self.prepare_threads: set[str] = set()
        self.prepared_calls = 0

    def pixels(self, image: Image.Image) -> NDArray[np.float32]:
        self.prepare_threads.add(threading.current_thread().name)
        return np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR),
                          dtype=np.float32)

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]:
        self.prepared_calls += 1
        thumbs = np.stack([a.reshape(-1) / 255.0 for a in items]) - 0.5
        vectors = thumbs @ self._projection
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _lookalike_threads() -> list[threading.Thread]:
    # add_many's threads; an embedder's CPU streams (lookalike-forward) live as long as it
    return [t for t in threading.enumerate()
            if t.name.startswith("lookalike-") and not t.name.startswith("lookalike-forward")]


def _run_with_deadline(fn: Any, seconds: float = 60.0) -> Any:
    """Run fn() in a thread; fail (instead of hanging the suite) if it does not finish."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"add_many did not return within {seconds}s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _mixed_inputs(tmp_path: Path, n: int) -> tuple[list[Any], list[Image.Image | None]]:
    """Paths, bytes, PIL images and broken inputs, interleaved; the expected pixels of each."""
    inputs: list[Any] = []
    pixels: list[Image.Image | None] = []
    for i in range(n):
        img = make_image(i)
        kind = i % 5
        if kind == 0:
            path = tmp_path / f"p{i:03d}.png"
            img.save(path)
            inputs.append(path)
        elif kind == 1:
            inputs.append(encode(img, "PNG"))
        elif kind == 2:
            inputs.append(img)
        elif kind == 3 and i % 10 == 3:
            inputs.append(tmp_path / f"missing{i}.png")
            img = None
        elif kind == 3:
            inputs.append(b"not an image at all" + bytes([i]))
            img = None
        else:
            path = tmp_path / f"p{i:03d}.png"
            img.save(path)
            inputs.append(str(path))
        pixels.append(img)
    return inputs, pixels


@pytest.mark.parametrize("embedder_cls", [FakeEmbedder, PreparingEmbedder])
@pytest.mark.parametrize("workers", [1, 8])
def test_order_ids_and_failures_survive_many_workers(
    tmp_path: Path, embedder_cls: type[FakeEmbedder], workers: int
) -> None:
    inputs, pixels = _mixed_inputs(tmp_path, 47)
    ids = [f"id{i:03d}" for i in range(len(inputs))]
    embedder = embedder_cls()
    index = ImageSearchIndex(embedder=embedder, store=InMemoryStore(), workers=workers, batch_size=4)
    report = index.add_many(inputs, ids=ids, metadata=[{"n": i} for i in range(len(inputs))])

    good = [i for i, p in enumerate(pixels) if p is not None]
    bad = [i for i, p in enumerate(pixels) if p is None]
    assert report.added == [ids[i] for i in good]  # input order, despite 8 threads
    assert [f.id for f in report.failed] == [ids[i] for i in bad]
    assert [f.source for f in report.failed] == [str(inputs[i]) if isinstance(inputs[i], Path)
                                                 else f"<{len(inputs[i])} bytes>" for i in bad]
    assert any("file not found" in f.reason for f in report.failed)
    # every stored vector belongs to its own id's pixels (no mix-up between threads)
    expected = FakeEmbedder().embed([pixels[i] for i in good])  # type: ignore[misc]
    stored = {r.id: r for r in index.store.get([ids[i] for i in good])}
    for row, i in enumerate(good):
        np.testing.assert_allclose(stored[ids[i]].vector, expected[row], atol=1e-5)
        assert stored[ids[i]].metadata["n"] == i
    if isinstance(embedder, PreparingEmbedder):
        assert embedder.prepared_calls > 0 and embedder.calls == 0  # PIL inputs prepared too
        assert all(name.startswith("lookalike-load") for name in embedder.prepare_threads)
    assert not _lookalike_threads()


def test_reindexing_a_folder_skips_unchanged_without_embedding(tmp_path: Path) -> None:
    paths = []
    for i in range(20):
        paths.append(tmp_path / f"{i}.png")
        make_image(i).save(paths[-1])
    embedder = PreparingEmbedder()
    index = ImageSearchIndex(embedder=embedder, store=LocalStore(tmp_path / "s.lookalike"),
                             workers=4, batch_size=3)
    first = index.add_many(paths)
    calls = embedder.prepared_calls
    second = index.add_many(paths)
    assert len(first.added) == 20 and second.unchanged == first.added
    assert embedder.prepared_calls == calls
    index.close()


class CountingStore(InMemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def upsert(self, records: Sequence[Record]) -> None:
        super().upsert(records)
        self.written += len(records)


def test_memory_stays_bounded_on_a_long_stream() -> None:
    """3,000 images from a generator: only a few batches are ever alive at once, and
    the process's memory does not grow with the number of images."""
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    # 12 distinct 640x480 JPEGs (0.9 MB each once decoded), each yielded 250 times
    # under its own id: holding every decoded image would take about 2.7 GB.
    blobs = [encode(make_image(seed, size=(640, 480))) for seed in range(12)]
    store = CountingStore()
    batch = 16
    state = {"yielded": 0, "max_ahead": 0, "rss_after_warmup": 0, "rss_max": 0}

    def stream() -> Iterator[Item]:
        for i in range(3000):
            if i % 50 == 0:
                rss = proc.memory_info().rss
                if i == 500:
                    state["rss_after_warmup"] = rss
                if i >= 500:
                    state["rss_max"] = max(state["rss_max"], rss)
            state["max_ahead"] = max(state["max_ahead"], state["yielded"] - store.written)
            state["yielded"] += 1
            yield Item(blobs[i % len(blobs)], id=f"img{i:05d}")

    index = ImageSearchIndex(embedder=PreparingEmbedder(), store=store, workers=4, batch_size=batch)
    report = index.add_many(stream())
    assert len(report.added) == 3000 and store.count() == 3000
    # 2 chunks decoding + 2 queued + 1 embedding + 1 writing, plus the one being listed
    assert state["max_ahead"] <= 7 * batch, state
    growth = state["rss_max"] - state["rss_after_warmup"]
    assert growth < 60 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB over 2,500 images"


def test_an_error_in_the_input_iterable_propagates(tmp_path: Path) -> None:
    store = CountingStore()

    def stream() -> Iterator[Image.Image]:
        for i in range(100):
            if i == 37:
                raise RuntimeError("listing broke")
            yield make_image(i)

    index = ImageSearchIndex(embedder=FakeEmbedder(), store=store, workers=4, batch_size=8)
    with pytest.raises(RuntimeError, match="listing broke"):
        _run_with_deadline(lambda: index.add_many(stream()))
    assert store.written == store.count() <= 32  # the batches before it stay stored
    assert not _lookalike_threads()


def test_on_error_raise_stops_an_endless_stream_without_hanging() -> None:
    def endless() -> Iterator[Item]:
        for i in itertools.count():
            yield Item(b"broken" if i == 45 else encode(make_image(i % 20)), id=f"i{i}")

    store = CountingStore()
    index = ImageSearchIndex(embedder=FakeEmbedder(), store=store, workers=4, batch_size=10)
    with pytest.raises(ImageLoadError):
        _run_with_deadline(lambda: index.add_many(endless(), on_error="raise"))
    assert store.written == 40  # batches 0-3 are stored, nothing after the failure
    assert not _lookalike_threads()


class FailingEmbedder(FakeEmbedder):
    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        if self.calls == 3:
            raise RuntimeError("model exploded")
        return super().embed(images)


def test_an_embedder_error_stops_the_producer_and_propagates() -> None:
    store = CountingStore()
    index = ImageSearchIndex(embedder=FailingEmbedder(), store=store, workers=4, batch_size=5)
    endless = (make_image(i % 30) for i in itertools.count())
    with pytest.raises(RuntimeError, match="model exploded"):
        _run_with_deadline(lambda: index.add_many(endless))
    assert store.written == 15
    assert not _lookalike_threads()


class FailingStore(CountingStore):
    def upsert(self, records: Sequence[Record]) -> None:
        if self.written >= 12:
            raise StoreError("disk full", backend="test")
        super().upsert(records)


def test_a_store_error_in_the_writer_propagates() -> None:
    store = FailingStore()
    index = ImageSearchIndex(embedder=FakeEmbedder(), store=store, workers=2, batch_size=6)
    with pytest.raises(StoreError, match="disk full"):
        _run_with_deadline(lambda: index.add_many(make_image(i) for i in range(60)))
    assert store.count() == 12
    assert not _lookalike_threads()


class HandshakeEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.second_batch_started = threading.Event()

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        if self.calls == 1:
            self.second_batch_started.set()
        return super().embed(images)


class HandshakeStore(CountingStore):
    def __init__(self, embedder: HandshakeEmbedder) -> None:
        super().__init__()
        self.embedder = embedder
        self.overlapped: bool | None = None

    def upsert(self, records: Sequence[Record]) -> None:
        if self.overlapped is None:  # first batch: does the next one embed meanwhile?
            self.overlapped = self.embedder.second_batch_started.wait(timeout=20)
        super().upsert(records)


def test_writing_a_batch_overlaps_embedding_the_next() -> None:
    embedder = HandshakeEmbedder()
    store = HandshakeStore(embedder)
    index = ImageSearchIndex(embedder=embedder, store=store, workers=2, batch_size=4)
    report = _run_with_deadline(lambda: index.add_many(make_image(i) for i in range(12)))
    assert len(report.added) == 12
    assert store.overlapped is True


# -- the torch half: ImagePreprocess and TorchEmbedder's prepared path -----------------------
def test_image_preprocess_matches_torchvision_exactly() -> None:
    torch = pytest.importorskip("torch")
    transforms = pytest.importorskip("torchvision.transforms")
    from lookalike.embedders.torchvision import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess

    for interp in ("bilinear", "bicubic"):
        fast = imagenet_preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, interp)
        mode = getattr(transforms.InterpolationMode, interp.upper())
        reference = transforms.Compose([
            transforms.Resize(256, interpolation=mode, antialias=True),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        # landscape, portrait, odd sizes, already 256, smaller than the crop, grey
        for size in [(500, 375), (333, 500), (257, 999), (256, 300), (120, 90), (224, 224)]:
            img = make_image(sum(size), size=size)
            want = reference(img)
            assert torch.equal(fast(img), want), (interp, size)
            batch = fast.normalize(torch.from_numpy(np.stack([fast.pixels(img)] * 2)))
            assert batch.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(batch[1], want)
            array = fast.normalize_array(np.stack([fast.pixels(img)] * 2))  # the numpy twin
            assert array.dtype == np.float32 and array.flags.c_contiguous
            assert torch.equal(torch.from_numpy(array[1]), want)
        grey = make_image(3, size=(300, 200)).convert("L")
        assert torch.equal(fast(grey), reference(grey.convert("RGB")))


def test_torch_embedder_prepared_path_matches_embed() -> None:
    torch = pytest.importorskip("torch")
    from lookalike.embedders import TorchEmbedder
    from lookalike.embedders.torchvision import imagenet_preprocess

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
    )
    embedder = TorchEmbedder(module, imagenet_preprocess(64, 56), dim=8, identity="tiny:v1",
                             device="auto", batch_size=3)
    images = [make_image(i, size=(90 + i, 70)) for i in range(7)]
    via_embed = embedder.embed(images)
    via_prepared = embedder.embed_prepared([embedder.prepare(img) for img in images])
    via_tensor = embedder.embed_tensor(torch.stack([embedder.preprocess(img) for img in images]))
    np.testing.assert_allclose(via_prepared, via_embed, atol=1e-6)
    np.testing.assert_allclose(via_tensor, via_embed, atol=1e-6)
    index = ImageSearchIndex(embedder=embedder, store=InMemoryStore(), workers=3, batch_size=2)
    report = index.add_many(images, ids=[str(i) for i in range(7)])
    stored = {r.id: r.vector for r in index.store.get(report.added)}
    np.testing.assert_allclose(np.stack([stored[str(i)] for i in range(7)]), via_embed, atol=1e-6)


@pytest.mark.parametrize("embedder_cls", [FakeEmbedder, PreparingEmbedder])
def test_decoding_in_processes_gives_the_same_result_as_threads(
    tmp_path: Path, embedder_cls: type[FakeEmbedder]
) -> None:
    """processes=True: same ids, vectors and failures as threads (children return decoded
    images to embedders without a picklable ``pixel_function``)."""
    inputs, _ = _mixed_inputs(tmp_path, 30)
    results = {}
    for processes in (False, True):
        index = ImageSearchIndex(embedder=embedder_cls(), store=InMemoryStore(), workers=2,
                                 batch_size=4, processes=processes)
        report = index.add_many(inputs)
        assert (index._decoder is not None) == processes
        results[processes] = (report.added, [(f.source, f.reason) for f in report.failed],
                              {rid: index.get(rid).vector for rid in report.added})
        index.close()
        assert index._decoder is None
    assert results[True][:2] == results[False][:2]
    for rid, vector in results[False][2].items():
        np.testing.assert_array_equal(results[True][2][rid], vector)


def test_torch_embedders_prepare_in_processes_without_torch(tmp_path: Path) -> None:
    """The torch embedders hand a picklable, torch-free ``prepare`` to the processes:
    vectors equal the in-thread ones exactly."""
    pytest.importorskip("torchvision")
    from lookalike.embedders import ResNet50Embedder

    embedder = ResNet50Embedder(weights=None, precision="fp32")
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.jpg")
        make_image(i, size=(300, 200)).save(paths[-1])
    prepare = embedder.process_prepare()
    assert prepare is not None
    import pickle
    assert b"torch" not in pickle.dumps(prepare).replace(b"lookalike.embedders._torch", b"")
    vectors = {}
    for processes in (False, True):
        index = ImageSearchIndex(embedder=embedder, store=InMemoryStore(), workers=2, processes=processes)
        report = index.add_many(paths)
        vectors[processes] = np.stack([index.get(rid).vector for rid in report.added])
        index.close()
    np.testing.assert_array_equal(vectors[True], vectors[False])


def test_a_dead_decode_process_falls_back_to_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import os
    import signal

    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        make_image(i).save(paths[-1])
    index = ImageSearchIndex(embedder=PreparingEmbedder(), store=InMemoryStore(), workers=2, processes=True)
    assert len(index.add_many(paths[:4]).added) == 4
    assert index._decoder is not None
    for pid in list(index._decoder._pool._processes):  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
    with caplog.at_level("WARNING", logger="lookalike"):
        report = _run_with_deadline(lambda: index.add_many(paths))
    assert len(report.added) == 8 and len(report.unchanged) == 4 and not report.failed
    assert "decoding in threads instead" in caplog.text
    make_image(99).save(tmp_path / "new.png")
    assert len(index.add_many([tmp_path / "new.png"]).added) == 1  # on a fresh pool
    assert index._decoder is not None and not index._decoder.broken
    index.close()


def test_processes_must_be_a_bool_or_none() -> None:
    from lookalike import ConfigurationError

    with pytest.raises(ConfigurationError, match="processes"):
        ImageSearchIndex(embedder=FakeEmbedder(), processes="yes")  # type: ignore[arg-type]
