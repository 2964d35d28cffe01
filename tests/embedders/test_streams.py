"""CPU streams: TorchEmbedder runs forward passes side by side on threads of their own (#7)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lookalike import ConfigurationError, ImageLoadError, ImageSearchIndex
from lookalike.sources import Item
from lookalike.stores import InMemoryStore

from ..conftest import encode, make_image

torch = pytest.importorskip("torch")


class Recording(torch.nn.Module):  # type: ignore[misc]
    """A tiny conv net that records the thread and torch's thread count of every call."""

    def __init__(self, fail_on_call: int | None = None, fail_on_blank: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.calls: list[tuple[str, int, int]] = []
        self.fail_on_call, self.fail_on_blank = fail_on_call, fail_on_blank
        self.lock = threading.Lock()

    def forward(self, x: Any) -> Any:
        with self.lock:
            self.calls.append((threading.current_thread().name, torch.get_num_threads(), x.shape[0]))
            if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
                raise RuntimeError("model exploded")
        if self.fail_on_blank and bool(x.flatten(2).std(dim=2).eq(0).all(dim=1).any()):
            raise RuntimeError("model exploded on a blank image")
        return self.net(x)


def embedder(streams: int | None, module: Any = None, batch_size: int | None = None) -> Any:
    from lookalike.embedders import TorchEmbedder
    from lookalike.embedders.torchvision import imagenet_preprocess

    return TorchEmbedder(module or Recording(), imagenet_preprocess(64, 56), dim=8, identity="tiny:v1",
                         device="cpu", batch_size=batch_size, streams=streams)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch with 2 intra-op threads, whatever this machine has; restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_streams_give_the_vectors_of_one_stream(two_threads: None) -> None:
    images = [make_image(i, size=(90 + i, 70)) for i in range(21)]
    one, two = embedder(streams=1, batch_size=8), embedder(streams=2, batch_size=8)  # same batches
    expected = one.embed(images)
    np.testing.assert_array_equal(two.embed(images), expected)  # bit-identical
    prepared = [two.prepare(img) for img in images]
    np.testing.assert_array_equal(two.submit_prepared(prepared).result(), expected)
    batch = torch.stack([two.preprocess(img) for img in images])
    np.testing.assert_array_equal(two.embed_tensor(batch), expected)


def test_submit_runs_in_the_background_only_on_streams(two_threads: None) -> None:
    images = [make_image(i) for i in range(8)]
    one, two = embedder(streams=1), embedder(streams=2)
    at_once = one.submit_prepared([one.prepare(img) for img in images])
    assert not at_once.in_background  # one stream (as on CUDA): embedded before it returns
    queued = two.submit_prepared([two.prepare(img) for img in images])
    assert queued.in_background
    np.testing.assert_allclose(queued.result(), at_once.result(), atol=1e-6)
    assert not queued.in_background


def test_each_stream_runs_on_its_share_of_the_threads(two_threads: None) -> None:
    module = Recording()
    emb = embedder(streams=2, module=module)
    emb.embed([make_image(i) for i in range(32)])
    assert emb.streams == 2 and emb.batch_size == 8  # the CPU default with streams
    # Which stream thread takes which batch is up to the scheduler (under load one may
    # take them all), so this checks what the code guarantees: two stream threads exist,
    # each set to its share of torch's threads, and every batch ran on one of them.
    streams = emb._forward_streams
    assert streams is not None and streams.count == 2 and streams.threads_each == 1
    meet = threading.Barrier(2)

    def probe(_: object) -> tuple[str, int]:  # two at once: one on each stream thread
        meet.wait(timeout=60)
        return threading.current_thread().name, torch.get_num_threads()

    each = [f.result() for f in [streams.submit(probe, None) for _ in range(2)]]
    stream_names = {name for name, _ in each}
    assert len(stream_names) == 2 and all(name.startswith("lookalike-forward") for name in stream_names)
    assert [threads for _, threads in each] == [1, 1]
    assert {name for name, _, _ in module.calls} <= stream_names
    assert {threads for _, threads, _ in module.calls} == {1}
    assert sorted(n for _, _, n in module.calls) == [8, 8, 8, 8]
    # the caller keeps its threads, and so do threads started afterwards
    assert torch.get_num_threads() == 2
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [2]


def test_a_small_call_runs_on_the_calling_thread_with_all_threads(two_threads: None) -> None:
    module = Recording()
    emb = embedder(streams=2, module=module)
    emb.embed([make_image(1)])  # a search query
    emb.embed([make_image(i) for i in range(3)])  # fewer than 2 per stream
    assert [(name, threads) for name, threads, _ in module.calls] == [
        (threading.current_thread().name, 2), (threading.current_thread().name, 2)
    ]


def test_a_call_smaller_than_two_batches_is_split_evenly(two_threads: None) -> None:
    module = Recording()
    embedder(streams=2, module=module, batch_size=16).embed([make_image(i) for i in range(10)])
    assert sorted(n for _, _, n in module.calls) == [5, 5]


def test_defaults_follow_the_threads_torch_has() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = embedder(streams=None)
        single.embed([make_image(1)])
        assert (single.streams, single.batch_size) == (1, 16)
        torch.set_num_threads(2)
        double = embedder(streams=None)
        double.embed([make_image(1)])
        assert (double.streams, double.batch_size) == (2, 8)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("streams", [0, -1, True, 1.5, "2"])
def test_streams_is_validated(streams: Any) -> None:
    with pytest.raises(ConfigurationError, match="streams"):
        embedder(streams=streams)


def test_a_model_error_in_a_stream_propagates(two_threads: None) -> None:
    emb = embedder(streams=2, module=Recording(fail_on_call=3))
    with pytest.raises(RuntimeError, match="model exploded"):
        emb.embed([make_image(i) for i in range(32)])
    assert len(emb.embed([make_image(i) for i in range(32)])) == 32  # the streams carry on


def test_a_forked_child_gets_streams_of_its_own(two_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.embedders._torch as torch_module

    emb = embedder(streams=2)
    emb.embed([make_image(i) for i in range(8)])
    parent = emb._forward_streams
    real_pid = torch_module.os.getpid()
    monkeypatch.setattr(torch_module.os, "getpid", lambda: real_pid + 1)  # as after os.fork()
    emb.embed([make_image(i) for i in range(8)])
    assert emb._forward_streams is not parent and emb._forward_streams.pid == real_pid + 1


# -- add_many queues the next chunk on the streams before it collects this one -------------
def test_add_many_on_streams_stores_every_vector_in_order(two_threads: None) -> None:
    images = [make_image(i, size=(80 + i % 7, 64)) for i in range(45)]
    emb = embedder(streams=2)
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), batch_size=8, workers=2)
    report = index.add_many(images, ids=[str(i) for i in range(45)])
    assert report.added == [str(i) for i in range(45)] and not report.failed
    stored = {r.id: r.vector for r in index.store.get(report.added)}
    np.testing.assert_allclose(np.stack([stored[str(i)] for i in range(45)]),
                               embedder(streams=1).embed(images), atol=1e-6)


def test_a_model_error_keeps_the_chunks_before_it(two_threads: None) -> None:
    from PIL import Image

    # chunks of 8; the first blank image (the model fails on it) is in the fourth chunk
    images = (make_image(i) if i < 28 else Image.new("RGB", (64, 64)) for i in range(80))
    emb = embedder(streams=2, module=Recording(fail_on_blank=True))
    store = InMemoryStore()
    index = ImageSearchIndex(embedder=emb, store=store, batch_size=8, workers=2)
    with pytest.raises(RuntimeError, match="model exploded"):
        index.add_many(images, ids=[str(i) for i in range(80)])
    assert store.count() == 24  # the first three chunks
    assert not [t for t in threading.enumerate() if t.name.startswith(("lookalike-load", "lookalike-store"))]


def test_on_error_raise_keeps_the_chunk_being_embedded(two_threads: None) -> None:
    def stream() -> Iterator[Item]:
        for i in itertools.count():
            yield Item(b"broken" if i == 20 else encode(make_image(i % 9)), id=f"i{i}")

    store = InMemoryStore()
    index = ImageSearchIndex(embedder=embedder(streams=2), store=store, batch_size=8, workers=2)
    with pytest.raises(ImageLoadError):
        index.add_many(stream(), on_error="raise")
    assert store.count() == 16  # chunks 0 and 1 (the second still embedding when chunk 2 failed)


def test_the_stream_threads_end_with_their_embedder(two_threads: None) -> None:
    import gc
    import time

    def forward_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("lookalike-forward")}

    before = forward_threads()
    emb = embedder(streams=2)
    emb.embed([make_image(i) for i in range(8)])
    assert len(forward_threads() - before) == 2
    del emb
    gc.collect()
    deadline = time.monotonic() + 10
    while forward_threads() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not forward_threads() - before
