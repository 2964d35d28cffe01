"""Decode worker processes for add_many: decoding and resizing without the GIL.

On a GPU machine the CPUs do nothing but decode, and there Python's GIL caps a thread
pool at less than half of what the cores can decode (1,237 vs 3,000 img/s on 16 cores,
docs/performance.md). With ``ImageSearchIndex(processes=True)`` each worker thread of
add_many hands its image's bytes to one of these processes and waits. (End to end it
did not beat threads there: moving the pixels through pipes costs the parent about as
much GIL time as the decoding it saves; hence opt-in.)

The processes start with ``spawn`` (no fork of a process running CUDA or OpenMP
threads), import only numpy, Pillow and lookalike, and get the embedder's picklable
``prepare`` once, at start-up.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .errors import ImageLoadError
from .images import ImageBytes, decode_image

__all__ = ["DecodeProcesses"]

log = logging.getLogger(__name__)

_PREPARE: Callable[[Any], Any] | None = None


def _start(prepare: Callable[[Any], Any] | None) -> None:
    global _PREPARE
    _PREPARE = prepare


def _decode(name: str, data: bytes, min_size: int | None) -> tuple[Any, str | None]:
    """In a worker process: decode and prepare one image; ``(result, None)`` or ``(None, reason)``."""
    try:
        image = decode_image(ImageBytes(name, data), min_size=min_size)
    except ImageLoadError as exc:
        return None, exc.reason
    if _PREPARE is None:
        return image, None
    try:
        return _PREPARE(image), None
    except Exception as exc:  # an image the model's preprocessing cannot handle
        return None, f"cannot preprocess: {exc}"


class DecodeProcesses:
    """A pool of ``size`` spawned processes that decode (and prepare) encoded images.

    When the pool breaks (a process died: killed, out of memory, a crash in a
    decoder), :meth:`decode` returns ``None`` from then on and the caller decodes in
    its own thread instead; the failure is logged once.
    """

    def __init__(self, size: int, prepare: Callable[[Any], Any] | None) -> None:
        self.size = size
        self.prepares = prepare is not None  #: results are prepared arrays, not PIL images
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            max_workers=size, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start, initargs=(prepare,),
        )
        self._lock = threading.Lock()

    @property
    def broken(self) -> bool:
        return self._pool is None

    def decode(self, encoded: ImageBytes, min_size: int | None) -> tuple[Any, str | None] | None:
        """``(prepared or PIL image, None)``, ``(None, reason)``, or ``None`` if the pool is broken."""
        pool = self._pool
        if pool is None:
            return None
        try:
            return pool.submit(_decode, encoded.name, encoded.data, min_size).result()
        except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: submit after shutdown
            self._mark_broken(exc)
            return None

    def _mark_broken(self, exc: BaseException) -> None:
        with self._lock:
            if self._pool is None:
                return
            pool, self._pool = self._pool, None
        log.warning("lookalike: decode worker processes failed (%s); decoding in threads instead", exc)
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
