"""Decode worker processes (``ImageSearchIndex(processes=True)``): files read, hashed,
decoded and prepared in the children, pixels back through a shared-memory arena."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from lookalike import ImageSearchIndex, StoreError
from lookalike import _processes as processes_module
from lookalike._processes import DecodeProcesses, Done, SlotArena
from lookalike.embedders import FakeEmbedder
from lookalike.embedders._torch import ImagePreprocess
from lookalike.stores import InMemoryStore

from .conftest import encode, make_image

PIXELS = ImagePreprocess(20, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


class PixelEmbedder(FakeEmbedder):
    """A FakeEmbedder with a torch-free, picklable ``pixel_function`` (like the torch
    embedders): the processes send back fixed-shape uint8 arrays, which use the arena."""

    image_size = 20

    def pixels(self, image: Image.Image) -> NDArray[np.uint8]:
        return PIXELS.pixels(image)

    def pixel_function(self) -> Callable[[Image.Image], NDArray[np.uint8]]:
        return PIXELS.pixels

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]:
        flat = np.stack([np.asarray(a, dtype=np.float32).reshape(-1) / 255.0 for a in items]) - 0.5
        vectors = flat @ self._projection[: flat.shape[1]]
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def _folder(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        path = tmp_path / f"{i:03d}.{'jpg' if i % 2 else 'png'}"
        make_image(i, size=(60 + i, 50)).save(path)
        paths.append(path)
    (tmp_path / "broken.jpg").write_bytes(encode(make_image(99))[:200])
    paths.insert(n // 2, tmp_path / "broken.jpg")
    paths.insert(n // 3, tmp_path / "missing.png")
    return paths


def _add(paths: list[Any], processes: bool, **options: Any) -> tuple[ImageSearchIndex, Any]:
    index = ImageSearchIndex(embedder=PixelEmbedder(), store=InMemoryStore(), workers=2,
                             batch_size=4, processes=processes, **options)
    return index, index.add_many(paths)


@pytest.fixture
def arenas(monkeypatch: pytest.MonkeyPatch) -> list[SlotArena]:
    """Every SlotArena made during the test, and a count of the arrays read from them."""
    made: list[SlotArena] = []
    sized = SlotArena.sized.__func__  # type: ignore[attr-defined]

    def spy(cls: type[SlotArena], wanted: int, slot_bytes: int) -> SlotArena | None:
        arena = sized(cls, wanted, slot_bytes)
        if arena is not None:
            made.append(arena)
            reads = []
            original_read = arena.read

            def read(slot: int, layout: Any) -> Any:
                reads.append(slot)
                return original_read(slot, layout)

            arena.read = read  # type: ignore[method-assign]
            arena.reads = reads  # type: ignore[attr-defined]
        return arena

    monkeypatch.setattr(SlotArena, "sized", classmethod(spy))
    return made


def test_processes_send_pixels_through_shared_memory_and_match_threads(
    tmp_path: Path, arenas: list[SlotArena]
) -> None:
    paths = _folder(tmp_path, 30)
    by_threads, threads_report = _add(paths, processes=False)
    by_processes, report = _add(paths, processes=True)
    assert report.added == threads_report.added and len(report.added) == 30
    assert [(f.source, f.reason) for f in report.failed] == [(f.source, f.reason) for f in threads_report.failed]
    reasons = {f.source: f.reason for f in report.failed}
    assert reasons.keys() == {str(tmp_path / "missing.png"), str(tmp_path / "broken.jpg")}
    assert reasons[str(tmp_path / "missing.png")] == "file not found"
    assert "truncated" in reasons[str(tmp_path / "broken.jpg")]
    for rid in report.added:
        np.testing.assert_array_equal(by_processes.get(rid).vector, by_threads.get(rid).vector)
        assert by_processes.get(rid).metadata == by_threads.get(rid).metadata  # path and content hash
    # the first chunks teach the pool the arrays' size; later ones come back through the arena
    assert len(arenas) == 1 and len(arenas[0].reads) > 0  # type: ignore[attr-defined]
    assert sorted(arenas[0]._free) == list(range(arenas[0].slots))  # every slot given back
    assert arenas[0].name.lstrip("/") not in os.listdir("/dev/shm")  # unlinked at the end of the call
    by_processes.close()


def test_processes_skip_unchanged_files_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [p for p in _folder(tmp_path, 12) if p.name not in ("missing.png", "broken.jpg")]
    index, first = _add(paths, processes=True)
    assert len(first.added) == 12
    make_image(500, size=(70, 50)).save(paths[3])  # new content under the same path
    answers: list[Future[list[Done]]] = []
    submit = DecodeProcesses.submit

    def spy(self: DecodeProcesses, *args: Any) -> Any:
        future = submit(self, *args)
        if future is not None:
            answers.append(future)
        return future

    monkeypatch.setattr(DecodeProcesses, "submit", spy)
    report = index.add_many(paths)
    assert len(report.unchanged) == 11 and report.updated == [first.added[3]]
    done = [d for f in answers for d in f.result()]
    assert sum(d.unchanged for d in done) == 11  # the processes hashed them and stopped there
    index.close()


def test_without_room_in_shared_memory_pixels_come_back_through_pipes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arenas: list[SlotArena]
) -> None:
    monkeypatch.setattr(processes_module, "MAX_ARENA_BYTES", 0)
    paths = _folder(tmp_path, 16)
    by_threads, _ = _add(paths, processes=False)
    by_processes, report = _add(paths, processes=True)
    assert arenas == [] and len(report.added) == 16
    for rid in report.added:
        np.testing.assert_array_equal(by_processes.get(rid).vector, by_threads.get(rid).vector)
    by_processes.close()


def test_slot_arena_hands_out_each_slot_once() -> None:
    arena = SlotArena(4, 12)
    try:
        first = arena.take(3)
        assert len(first) == 3 and len(set(first)) == 3
        assert len(arena.take(5)) == 1  # never waits: only what is free
        assert arena.take(1) == []
        arena.give_back(first)
        assert sorted(arena.take(10)) == sorted(first)
        view = np.ndarray((2, 3), np.uint16, buffer=arena._shm.buf, offset=2 * 12)
        view[...] = [[1, 2, 3], [4, 5, 6]]
        copy = arena.read(2, ((2, 3), np.dtype(np.uint16).str))
        view[...] = 0
        assert copy.tolist() == [[1, 2, 3], [4, 5, 6]]  # a copy: the slot can be reused at once
    finally:
        arena.close()


def test_done_tells_unchanged_from_failed_and_loaded() -> None:
    assert Done("abc", None, None, None).unchanged
    assert not Done("abc", "cannot decode", None, None).unchanged
    assert not Done("abc", None, None, ((2,), "|u1")).unchanged
    assert not Done(None, None, np.zeros(2), None).unchanged


def test_processes_that_cannot_start_leave_the_work_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from concurrent.futures import ProcessPoolExecutor

    def refuse(self: ProcessPoolExecutor, *args: Any, **kwargs: Any) -> Any:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(ProcessPoolExecutor, "submit", refuse)
    paths = _folder(tmp_path, 8)
    by_threads, threads_report = _add(paths, processes=False)
    with caplog.at_level("WARNING", logger="lookalike"):
        by_processes, report = _add(paths, processes=True)
    assert "decoding in threads instead" in caplog.text
    assert report.added == threads_report.added and len(report.added) == 8
    assert [f.reason for f in report.failed] == [f.reason for f in threads_report.failed]
    for rid in report.added:
        np.testing.assert_array_equal(by_processes.get(rid).vector, by_threads.get(rid).vector)
    by_processes.close()


def test_a_store_error_with_processes_propagates_and_frees_the_arena(
    tmp_path: Path, arenas: list[SlotArena]
) -> None:
    from .test_pipeline import FailingStore, _lookalike_threads, _run_with_deadline

    paths = [p for p in _folder(tmp_path, 40) if p.name not in ("missing.png", "broken.jpg")]
    store = FailingStore()
    index = ImageSearchIndex(embedder=PixelEmbedder(), store=store, workers=2, batch_size=4, processes=True)
    with pytest.raises(StoreError, match="disk full"):
        _run_with_deadline(lambda: index.add_many(paths))
    assert store.count() == 12  # every batch before the failure is stored
    assert not _lookalike_threads()
    assert arenas and all(a.name.lstrip("/") not in os.listdir("/dev/shm") for a in arenas)
    index.store.upsert = InMemoryStore.upsert.__get__(store)  # type: ignore[method-assign]  # the disk has room again
    assert len(index.add_many(paths).added) == 28  # the same processes carry on
    index.close()
