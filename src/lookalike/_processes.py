"""Decode worker processes for add_many: reading, hashing, decoding and resizing without the GIL.

On a GPU machine the CPUs do nothing but decode, and there Python's GIL caps a thread
pool well below what the cores can decode. With ``ImageSearchIndex(processes=True)`` the
producer of add_many hands each chunk to these processes in a few groups (:class:`Job`
lists): a process reads each file itself, hashes it, skips it when the hash equals the
stored one, decodes it, turns it into the model's pixels, and writes that array into a
shared-memory slot (:class:`SlotArena`). The parent's share per image is then a path out
and a few bytes back, a fraction of what it costs when each image's bytes and pixels
cross a pipe as a task of their own (the design this replaced). The measured figures are
in docs/performance.md ("On a GPU").

The processes start with ``spawn`` (no fork of a process running CUDA or OpenMP
threads), import only numpy, Pillow and lookalike, and get the embedder's picklable
``pixel_function()`` once, at start-up.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import shared_memory
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .errors import ImageLoadError
from .images import ImageBytes, decode_image, read_image_bytes

__all__ = ["DecodeProcesses", "Done", "Job", "SlotArena"]

log = logging.getLogger(__name__)

#: Largest arena add_many maps, and the share of /dev/shm's free space it may take.
MAX_ARENA_BYTES = 1 << 30
ARENA_SHARE_OF_FREE = 0.5


class Job(NamedTuple):
    """One image for a decode process."""

    name: str  #: printable source, for error messages
    path: str | None  #: read and hash this file ...
    data: bytes | None  #: ... or decode these bytes (already hashed by the parent)
    known_sha256: str | None  #: the stored content hash: a file that still has it is not decoded
    slot: int  #: arena slot for the pixel array, or -1: send it back pickled


class Done(NamedTuple):
    """A decode process's answer for one :class:`Job`."""

    sha256: str | None  #: the file's content hash (path jobs that could be read)
    error: str | None  #: why the image could not be used
    value: Any  #: the pixel array or decoded image, unless it went to the slot or was unchanged
    layout: tuple[tuple[int, ...], str] | None  #: shape and dtype written to the slot

    @property
    def unchanged(self) -> bool:
        return self.error is None and self.value is None and self.layout is None


# -- in the worker processes -----------------------------------------------------------
_PIXEL_FUNCTION: Callable[[Any], Any] | None = None
_ARENAS: collections.OrderedDict[str, shared_memory.SharedMemory] = collections.OrderedDict()
_ARENAS_KEPT = 2  # one per add_many call in flight, plus the previous call's


def _start(pixel_function: Callable[[Any], Any] | None, started: Any) -> None:
    global _PIXEL_FUNCTION
    _PIXEL_FUNCTION = pixel_function
    started.release()


def _no_op() -> None:
    """A task that does nothing: submitting one per process at once starts them all."""


def _attach(name: str) -> shared_memory.SharedMemory | None:
    shm = _ARENAS.get(name)
    if shm is not None:
        _ARENAS.move_to_end(name)
        return shm
    try:
        shm = shared_memory.SharedMemory(name=name)
    except OSError:  # already unlinked: the call that made it has ended
        return None
    _ARENAS[name] = shm
    while len(_ARENAS) > _ARENAS_KEPT:
        _ARENAS.popitem(last=False)[1].close()
    return shm


def load_group(jobs: Sequence[Job], min_size: int | None, arena: str | None, slot_bytes: int) -> list[Done]:
    """In a worker process: read, hash, decode and turn into pixels each job's image."""
    shm = _attach(arena) if arena else None
    return [_load(job, min_size, shm, slot_bytes) for job in jobs]


def _load(job: Job, min_size: int | None, shm: shared_memory.SharedMemory | None, slot_bytes: int) -> Done:
    sha256 = None
    try:
        if job.path is not None:
            encoded = read_image_bytes(job.path)
            sha256 = encoded.sha256
            if sha256 == job.known_sha256:
                return Done(sha256, None, None, None)
        else:
            encoded = ImageBytes(job.name, job.data or b"")
        image = decode_image(encoded, min_size=min_size)
    except ImageLoadError as exc:
        return Done(sha256, exc.reason, None, None)
    if _PIXEL_FUNCTION is None:
        return Done(sha256, None, image, None)
    try:
        value = _PIXEL_FUNCTION(image)
    except Exception as exc:  # an image the model's preprocessing cannot handle
        return Done(sha256, f"cannot preprocess: {exc}", None, None)
    if (shm is not None and job.slot >= 0 and isinstance(value, np.ndarray)
            and not value.dtype.hasobject and value.nbytes <= slot_bytes):
        target: NDArray[Any] = np.ndarray(value.shape, value.dtype, buffer=shm.buf, offset=job.slot * slot_bytes)
        target[...] = value
        return Done(sha256, None, None, (value.shape, value.dtype.str))
    return Done(sha256, None, value, None)


# -- in the parent ---------------------------------------------------------------------
class SlotArena:
    """Shared memory that the decode processes write pixel arrays into.

    ``slots`` slots of ``slot_bytes`` each. The parent :meth:`take` s slots for a group
    before submitting it, copies each result out with :meth:`read` and gives the slots
    back at once, so no array outlives its slot.
    """

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.slots = slots
        self._shm = shared_memory.SharedMemory(create=True, size=slots * slot_bytes)
        self.name = self._shm.name
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()

    @classmethod
    def sized(cls, wanted_slots: int, slot_bytes: int) -> SlotArena | None:
        """An arena of up to ``wanted_slots`` slots that fits in /dev/shm; ``None`` if none fits."""
        budget = MAX_ARENA_BYTES
        try:
            stat = os.statvfs("/dev/shm")
            budget = min(budget, int(stat.f_bavail * stat.f_frsize * ARENA_SHARE_OF_FREE))
        except OSError:  # no /dev/shm (not Linux): the OS sizes shared memory itself
            pass
        slots = min(wanted_slots, budget // max(1, slot_bytes))
        if slots < 1:
            log.info("lookalike: too little shared memory for a decode arena; pixels come back through pipes")
            return None
        try:
            return cls(slots, slot_bytes)
        except OSError as exc:
            log.info("lookalike: no shared memory for a decode arena (%s); pixels come back through pipes", exc)
            return None

    def take(self, n: int) -> list[int]:
        """Up to ``n`` free slots (never waits: jobs without a slot send their array back pickled)."""
        with self._lock:
            taken = self._free[-n:] if n > 0 else []
            del self._free[len(self._free) - len(taken):]
            return taken

    def read(self, slot: int, layout: tuple[tuple[int, ...], str]) -> NDArray[Any]:
        """A copy of what a process wrote into ``slot``."""
        shape, dtype = layout
        view: NDArray[Any] = np.ndarray(shape, np.dtype(dtype), buffer=self._shm.buf, offset=slot * self.slot_bytes)
        return view.copy()

    def give_back(self, slots: Sequence[int]) -> None:
        with self._lock:
            self._free.extend(slots)

    def close(self) -> None:
        try:
            self._shm.unlink()
        except OSError:
            pass
        self._shm.close()


class DecodeProcesses:
    """A pool of ``size`` spawned processes that load images (read, hash, decode, pixels).

    When the pool breaks (a process died: killed, out of memory, a crash in a decoder),
    :meth:`submit` returns ``None`` from then on and the caller loads in its own threads
    instead; the failure is logged once.
    """

    def __init__(self, size: int, pixel_function: Callable[[Any], Any] | None) -> None:
        self.size = size
        self.sends_pixels = pixel_function is not None  #: results are pixel arrays, not PIL images
        #: bytes of one pixel array, learnt from the first one that comes back (sizes the arena)
        self.slot_bytes: int | None = None
        spawn = multiprocessing.get_context("spawn")
        self._started = spawn.Semaphore(0)
        self._started_count = 0
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            max_workers=size, mp_context=spawn, initializer=_start, initargs=(pixel_function, self._started),
        )
        self._lock = threading.Lock()
        # The pool spawns a process only when a task finds none idle, so a short first
        # add_many would start one and the rest would start (importing numpy, Pillow and
        # lookalike: 0.3 s of CPU each) in the middle of the next. Start them all now.
        try:
            for _ in range(size):
                self._pool.submit(_no_op)
        except (OSError, RuntimeError) as exc:  # cannot start processes here (limits, sandbox)
            self.mark_broken(exc)

    def wait_started(self, timeout: float = 60.0) -> bool:
        """Wait until every process has started; ``False`` if ``timeout`` passed first
        (for benchmarks that time the steady state, not the start-up)."""
        deadline = time.monotonic() + timeout
        while self._started_count < self.size:
            if not self._started.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return False
            self._started_count += 1
        return True

    @property
    def broken(self) -> bool:
        return self._pool is None

    def submit(
        self, jobs: Sequence[Job], min_size: int | None, arena: SlotArena | None
    ) -> Future[list[Done]] | None:
        """Load ``jobs`` in one process; ``None`` if the pool is broken."""
        pool = self._pool
        if pool is None:
            return None
        try:
            return pool.submit(load_group, list(jobs), min_size,
                               arena.name if arena else None, arena.slot_bytes if arena else 0)
        except RuntimeError as exc:  # the pool broke, or shut down, since the check above
            self.mark_broken(exc)
            return None

    def learn(self, value: Any) -> None:
        """Note the size of a pixel array that came back pickled (the next arena fits it)."""
        if self.slot_bytes is None and isinstance(value, np.ndarray) and not value.dtype.hasobject:
            self.slot_bytes = max(1, value.nbytes)

    def mark_broken(self, exc: BaseException) -> None:
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
