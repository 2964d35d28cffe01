"""The add pipeline behind :meth:`ImageSearchIndex.add_many <lookalike.ImageSearchIndex.add_many>`.

An :class:`Ingest` is built once per index from the embedder, the store and the
options (decode threads, decode processes). Each call of :meth:`Ingest.add` turns its
inputs into :class:`~lookalike._inputs.Pending` items (``pending_items``: explicit ids,
metadata) and streams them through five named stages, in chunks of ``batch_size`` images:

1. **read + hash** (:meth:`Ingest._read_and_hash`, in the ``workers`` decode threads):
   each input gets its id, its bytes and its content hash.
2. **look up stored** (:meth:`Ingest._look_up`): one ``store.get`` per chunk; a file
   whose hash equals the stored one is never decoded.
3. **decode + pixels** (:meth:`Ingest._decode_to_pixels` in the threads, or the decode
   processes of :mod:`lookalike._processes`): decode, then the embedder's per-image
   preprocessing (:meth:`~lookalike.protocols.PixelEmbedder.pixels`). An embedder that
   decodes JPEGs on its device (:class:`~lookalike._embedding.DecodesJpeg`: torch with
   ``decode="gpu"``) gets the chunk's JPEG bytes in one call instead
   (:meth:`Ingest._decode_on_device`); what it leaves takes the path above, file by file.
4. **embed** (:meth:`Ingest._sort_and_embed`): sort into failed / unchanged / changed
   metadata only / to embed, merge metadata, submit the pixels to the model.
5. **write** (:class:`_Writes`, one store thread): upsert the chunk's records.

The stages overlap: while the model embeds chunk N+1, the producer thread reads and
decodes chunk N+2 and the store thread writes chunk N. Embedders whose vectors come
back in the background (torch on CPU streams) get chunk N+2 queued before N+1 is
collected, so no stream idles between chunks. At most one write is in flight, so the
report lists outcomes in input order and a failure leaves every earlier chunk stored.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._embedding import DecodesJpeg, PixelStandIn, check_vectors, pixel_embedder
from ._inputs import (
    Metadata,
    Pending,
    check_lengths,
    id_of_resolved,
    is_pil,
    length,
    merged_metadata,
    path_id,
    pending_items,
)
from ._processes import DecodeProcesses, Done, Job, SlotArena
from .display import progress_bar
from .errors import ImageLoadError, ImageSearchError
from .images import (
    ImageBytes,
    decode_image,
    load_image,
    pixel_digest,
    read_image_bytes,
    resolved_path,
)
from .protocols import Embedder, PendingVectors, VectorStore
from .sources import Item
from .types import HASH_FIELD, PATH_FIELD, AddReport, Failure, ImageInput, Record

__all__ = ["Ingest", "read_and_hash"]



# -- what travels through the stages ---------------------------------------------------
@dataclass
class _Chunk:
    items: list[Pending] = field(default_factory=list)
    number: int = 0
    #: chunks of this add_many whose writes had landed when this chunk's records were read
    landed_before: int = 0


@dataclass
class _Written:
    """Metadata this add_many wrote (or is writing), for ids the store may not show yet.

    The producer reads a chunk's stored records while earlier chunks are still being
    embedded or written, so a file listed twice in one call (``--csv labels.csv photos/``)
    merges with what the earlier mention wrote, not with the stale stored record.
    """

    landed: int = 0  # chunks whose writes have landed, in input order
    metadata: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    by_chunk: dict[int, list[str]] = field(default_factory=dict)

    def remember(self, number: int, rid: str, metadata: dict[str, Any]) -> None:
        self.metadata[rid] = (number, metadata)
        self.by_chunk.setdefault(number, []).append(rid)

    def forget_before(self, number: int) -> None:
        """Drop what chunks before ``number`` wrote: every later read sees it in the store."""
        for old in [n for n in self.by_chunk if n < number]:
            for rid in self.by_chunk.pop(old):
                if self.metadata.get(rid, (None,))[0] == old:
                    del self.metadata[rid]


@dataclass
class _Embedding:
    """One chunk after sorting: records to write as they are, and the items being embedded."""

    ready: list[Record]
    outcome: list[tuple[str, str]]
    to_embed: list[Pending]
    n_items: int
    embedder: Embedder
    number: int = 0
    vectors: NDArray[np.float32] | None = None
    pending: PendingVectors | None = None  # still being embedded in the background

    @property
    def overlaps(self) -> bool:
        """True while the vectors are still being embedded in the background, so the next
        chunk may be queued before this one is collected."""
        return self.pending is not None

    def records(self) -> tuple[list[Record], list[tuple[str, str]]]:
        """Wait for the vectors; all records to write, and what each write means."""
        if self.pending is not None:
            self.vectors = check_vectors(self.pending.result(), len(self.to_embed), self.embedder)
            self.pending = None
        records, outcome = list(self.ready), list(self.outcome)
        for p, vec in zip(self.to_embed, self.vectors if self.vectors is not None else ()):
            assert p.id is not None
            records.append(Record(p.id, vec, p.metadata))
            outcome.append(("updated" if p.existed else "added", p.id))
        return records, outcome

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()


#: Images handed to one decode process: its answer (``None`` if the pool was broken),
#: the items, and the arena slots they write into.
_Group = tuple["Future[list[Done]] | None", list[Pending], list[int]]


class _Writes:
    """Stage 5: upsert each chunk's records in the store thread, one write in flight,
    so outcomes are reported in input order and a failure leaves earlier chunks stored."""

    def __init__(
        self, store: VectorStore, bind: Callable[[], object], pool: ThreadPoolExecutor,
        report: AddReport, bar: Any, written: _Written,
    ) -> None:
        self.store, self.bind, self.pool = store, bind, pool
        self.report, self.bar, self.written = report, bar, written
        self.in_flight: tuple[Future[None], list[tuple[str, str]], int, int] | None = None

    def write(self, done: _Embedding) -> None:
        records, outcome = done.records()
        self.finish()
        if records:
            self.bind()  # the first vectors: the model has loaded, bind the store to it
            self.in_flight = (self.pool.submit(self.store.upsert, _last_wins(records)), outcome,
                              done.n_items, done.number)
        else:
            self._landed(outcome, done.n_items, done.number)

    def finish(self) -> None:
        """Wait for the write in flight; re-raises the store's error, if any."""
        if self.in_flight is not None:
            future, outcome, n_items, number = self.in_flight
            future.result()
            self.in_flight = None
            self._landed(outcome, n_items, number)

    def wait(self) -> None:
        """After an error elsewhere: let the write in flight land, ignoring its outcome."""
        if self.in_flight is not None:
            self.in_flight[0].exception()

    def _landed(self, outcome: list[tuple[str, str]], n_items: int, number: int) -> None:
        self.written.landed = number + 1
        for kind, rid in outcome:
            (self.report.updated if kind == "updated" else self.report.added).append(rid)
        self.bar.update(n_items)


class Ingest:
    """The add pipeline of one index: built from its embedder (seen as a
    :class:`~lookalike.protocols.PixelEmbedder`), its store and its options.

    Args:
        embedder: what embeds; a plain embedder is wrapped once by :func:`pixel_embedder`.
        store: where the records go.
        workers: decode threads (and decode processes, with ``processes``).
        processes: read, hash, decode and make pixels in spawned worker processes.
        is_bound: whether the store has a schema (until then nothing is stored to look up).
        bind: binds the store to the embedder; called before the first write.
    """

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        *,
        workers: int,
        processes: bool,
        is_bound: Callable[[], bool],
        bind: Callable[[], object],
    ) -> None:
        self.embedder = pixel_embedder(embedder)
        self.store = store
        self.workers = workers
        self.processes = processes
        self._is_bound = is_bound
        self._bind = bind
        self._passes_images = isinstance(self.embedder, PixelStandIn) and self.embedder.passes_images
        #: the embedder, when it may decode JPEGs on its device (asked per run: ``decodes_jpeg()``)
        self._jpeg: DecodesJpeg | None = self.embedder if isinstance(self.embedder, DecodesJpeg) else None
        self.decoder: DecodeProcesses | None = None

    def close(self) -> None:
        """Stop the decode processes, if any ran."""
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None

    def decode_processes(self) -> DecodeProcesses | None:
        """The decode process pool (started on first use) when ``processes`` is set."""
        if not self.processes:
            return None
        if self.decoder is None or self.decoder.broken:
            # they hand back what embed_pixels takes, or PIL images without a pixel function
            self.decoder = DecodeProcesses(self.workers, self.embedder.pixel_function())
        return self.decoder

    # -- the run ----------------------------------------------------------------------
    def add(
        self,
        images: Iterable[ImageInput | Item],
        *,
        ids: Sequence[str] | None,
        metadata: Metadata,
        batch_size: int,
        on_error: str,
        progress: bool,
        replace_metadata: bool,
    ) -> tuple[AddReport, int]:
        """Run ``images`` through the stages; the report, and how many images the input
        yielded (not counting what a source could not use)."""
        total = length(images)
        check_lengths(total, ids, metadata)  # before anything is stored, when we can
        report = AddReport()
        report.embedded = 0
        started = time.perf_counter()
        listed: list[int] = [0]
        pending = pending_items(images, ids, metadata, listed)
        seen: set[str] = set()
        written = _Written()
        bar = progress_bar(total, progress, report, started)
        embedding: _Embedding | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-store") as pool, \
                contextlib.closing(self._loaded_chunks(pending, batch_size, self.decode_processes(), written)) \
                as chunks:
            writes = _Writes(self.store, self._bind, pool, report, bar, written)
            try:
                for chunk in chunks:  # stages 1-3 ran in the producer thread
                    try:
                        following = self._sort_and_embed(chunk, report, seen, written, on_error, replace_metadata)
                    except Exception:  # e.g. on_error="raise": the chunk before still lands
                        if embedding is not None:
                            landing, embedding = embedding, None
                            writes.write(landing)
                        raise
                    del chunk
                    previous, embedding = embedding, following
                    if previous is not None:
                        writes.write(previous)
                    if not embedding.overlaps:
                        writes.write(embedding)
                        embedding = None
                if embedding is not None:
                    writes.write(embedding)
                    embedding = None
                writes.finish()
            finally:
                if embedding is not None:  # an error above: drop the batches not started
                    embedding.cancel()
                writes.wait()  # ... and let the batch in flight land first
                report.seconds = time.perf_counter() - started
                bar.close()  # after the report's time: the bar ends on the report's rate
        return report, listed[0]

    # -- stage 1: read + hash ---------------------------------------------------------
    @staticmethod
    def _read_and_hash(item: Pending, defer_read: bool = False) -> None:
        """Read bytes and compute id and content hash (in a worker thread, or on a Ray
        worker: :func:`read_and_hash`).

        With ``defer_read``, a file only gets its id here: a decode process reads and
        hashes it later (``item.input`` keeps the path).
        """
        if item.error is not None:  # a source's failure: nothing to read
            return
        image, item.input = item.input, None
        try:
            if isinstance(image, (str, os.PathLike)):
                if "\0" in os.fspath(image):
                    raise ImageLoadError(item.source, "not a valid file name (it contains a NUL character)")
                resolved = resolved_path(image)
                item.metadata[PATH_FIELD] = resolved  # the library's: user values are refused
                if item.id is None:
                    item.id = id_of_resolved(resolved)
                if defer_read:
                    item.input = image
                    return
                item.encoded = read_image_bytes(image)
                item.sha256 = item.encoded.sha256
            elif isinstance(image, (bytes, bytearray, memoryview)):
                item.encoded = ImageBytes(item.source, bytes(image))
                item.sha256 = item.encoded.sha256
            elif is_pil(image):
                item.image = load_image(image)
                item.sha256 = pixel_digest(item.image)
            else:
                raise ImageLoadError(item.source, "unsupported input type; pass a path, bytes or a PIL.Image")
            if item.id is None:
                item.id = "sha256-" + (item.sha256 or "")[:32]
            _set_hash(item, item.sha256 or "")
        except ImageLoadError as exc:
            item.error = exc.reason
            if item.id is None and isinstance(image, (str, os.PathLike)) and "\0" not in os.fspath(image):
                item.id = path_id(image)

    # -- stage 2: look up stored ------------------------------------------------------
    def _look_up(self, chunk: _Chunk, written: _Written) -> None:
        """Attach each item's stored record; unchanged content is not decoded."""
        ids = [p.id for p in chunk.items if p.error is None and p.id is not None]
        chunk.landed_before = written.landed  # read before the records are
        # A store bound to no model holds no records: add_many binds it just before its
        # first write, so until then there is nothing (not even an earlier mention of a
        # file in this call) to look up.
        existing = {r.id: r for r in self.store.get(ids)} if ids and self._is_bound() else {}
        for p in chunk.items:
            p.existing = existing.get(p.id or "")
            if p.existing is not None and p.error is None and _same_content(p, p.existing):
                p.encoded = p.image = None  # unchanged content: no need to decode

    # -- stage 3: decode + pixels -----------------------------------------------------
    def _decode_to_pixels(self, item: Pending) -> None:
        """Decode, then run the embedder's ``pixels`` (in a worker thread).

        Pixel embedders (the torch ones) get their resize/crop done here, in parallel,
        so the model thread only stacks ready arrays; for others the pixels are the
        decoded ``PIL.Image`` that ``embed`` receives.
        """
        if item.error is not None:
            return
        if item.input is not None:  # a read deferred to the decode processes, which broke
            self._read_and_hash(item)
            if item.error is not None:
                return
            if item.existing is not None and _same_content(item, item.existing):
                item.encoded = None
                return
        if item.image is None:
            if item.encoded is None:
                return
            try:
                item.image = decode_image(item.encoded, min_size=self.embedder.image_size)
            except ImageLoadError as exc:
                item.error = exc.reason
                return
            finally:
                item.encoded = None
        try:
            item.pixels = self.embedder.pixels(item.image)
            item.image = None
        except ImageSearchError:  # the model itself failed (e.g. no weights): not this image
            raise
        except Exception as exc:  # an image the model's preprocessing cannot handle
            item.error = f"cannot preprocess: {exc}"

    def _decode_on_device(self, items: list[Pending]) -> list[Pending]:
        """Hand the JPEG bytes of ``items`` to the embedder's device decoder, in one call;
        the items it leaves (not a plain JPEG, or one it could not decode), for the CPU path."""
        assert self._jpeg is not None
        got = self._jpeg.jpeg_pixels([p.encoded.data for p in items if p.encoded is not None])
        if len(got) != len(items):
            raise ImageSearchError(f"{self.embedder!r} returned {len(got)} results for {len(items)} JPEG files")
        left = []
        for p, pixels in zip(items, got):
            if pixels is None:
                left.append(p)
            else:
                p.pixels, p.encoded = pixels, None
        return left

    def _submit_to_processes(
        self, items: list[Pending], processes: DecodeProcesses, arena: SlotArena | None
    ) -> list[_Group]:
        """Hand files and bytes to the decode processes, in about one group per process."""
        min_size = self.embedder.image_size
        n_groups = min(len(items), processes.size)
        groups = []
        for g in range(n_groups):
            members = items[g * len(items) // n_groups : (g + 1) * len(items) // n_groups]
            slots = arena.take(len(members)) if arena is not None and processes.sends_pixels else []
            jobs = [
                Job(p.source,
                    None if p.input is None else os.fspath(p.input),
                    None if p.encoded is None else p.encoded.data,
                    _stored_hash(p) if p.input is not None else None,
                    slots[i] if i < len(slots) else -1)
                for i, p in enumerate(members)
            ]
            groups.append((processes.submit(jobs, min_size, arena), members, slots))
        return groups

    def _finish_group(
        self, group: _Group, processes: DecodeProcesses, arena: SlotArena | None, pool: ThreadPoolExecutor,
    ) -> None:
        """Take a group's results from the decode processes (in threads if the pool broke)."""
        future, items, slots = group
        try:
            results = None
            if future is not None:
                try:
                    results = future.result()
                except BrokenProcessPool as exc:
                    processes.mark_broken(exc)
            if results is None:
                list(pool.map(self._decode_to_pixels, items))
                return
            need_pixels = []
            for i, (p, done) in enumerate(zip(items, results)):
                p.input = p.encoded = None
                if done.sha256 is not None:
                    _set_hash(p, done.sha256)
                if done.error is not None:
                    p.error = done.error
                elif done.layout is not None:
                    assert arena is not None
                    p.pixels = arena.read(slots[i], done.layout)
                elif done.value is not None:
                    if processes.sends_pixels:
                        processes.learn(done.value)
                        p.pixels = done.value
                    elif self._passes_images:
                        p.pixels = done.value  # the image is what embed takes
                    else:
                        p.image = done.value
                        need_pixels.append(p)
            if need_pixels:
                list(pool.map(self._decode_to_pixels, need_pixels))  # the embedder's own pixels
        finally:
            if arena is not None and slots:
                arena.give_back(slots)

    def _loaded_chunks(
        self, pending: Iterator[Pending], size: int, processes: DecodeProcesses | None, written: _Written
    ) -> Generator[_Chunk, None, None]:
        """Stages 1-3 in background threads, ahead of the model: chunks read, looked up
        and turned into pixels.

        Two chunks decode at once, so the worker threads never wait at a chunk's end for
        its slowest image (that barrier idled most of 16 workers on a GPU machine). With
        ``processes``, files are read, hashed, decoded and turned into pixels there
        instead; the threads only work out ids (and decode in-memory PIL images). When the
        embedder decodes JPEGs on its device, the threads read and hash every file, the
        JPEGs go to the device in one call per chunk (from this thread, while the threads
        or processes decode the rest), and what the device leaves follows the rest.
        """
        done: queue.Queue[_Chunk | BaseException | None] = queue.Queue(maxsize=2)
        stop = threading.Event()
        arena: SlotArena | None = None

        def hand_over(
            chunk: _Chunk, decoding: list[Future[None]], groups: list[_Group], pool: ThreadPoolExecutor
        ) -> None:
            for future in decoding:
                future.result()  # re-raises what a worker raised
            for group in groups:
                assert processes is not None
                self._finish_group(group, processes, arena, pool)
            while not stop.is_set():
                try:
                    done.put(chunk, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def start_decoding(items: list[Pending], pool: ThreadPoolExecutor) -> tuple[list[Future[None]], list[_Group]]:
            nonlocal arena
            groups: list[_Group] = []
            if processes is not None and not processes.broken:
                if arena is None and processes.slot_bytes is not None:
                    # slots for the two chunks in flight; a job without one sends its array back pickled
                    arena = SlotArena.sized(2 * size + processes.size, processes.slot_bytes)
                remote = [p for p in items if p.image is None]
                items = [p for p in items if p.image is not None]
                groups = self._submit_to_processes(remote, processes, arena) if remote else []
            return [pool.submit(self._decode_to_pixels, p) for p in items], groups

        def produce(pool: ThreadPoolExecutor) -> None:
            in_flight: collections.deque[tuple[_Chunk, list[Future[None]], list[_Group]]] = collections.deque()
            try:
                on_device = self._jpeg is not None and self._jpeg.decodes_jpeg()  # may load the model
                read_and_hash = functools.partial(self._read_and_hash,
                                                  defer_read=processes is not None and not on_device)
                for number in itertools.count():
                    if stop.is_set():
                        break
                    chunk = _Chunk([p for _, p in zip(range(size), pending)], number)
                    if not chunk.items:
                        break
                    list(pool.map(read_and_hash, chunk.items))
                    self._look_up(chunk, written)
                    todo = [p for p in chunk.items if p.error is None and
                            (p.encoded is not None or p.image is not None or p.input is not None)]
                    jpegs = [p for p in todo if on_device and _looks_like_jpeg(p)]
                    if jpegs:
                        todo = [p for p in todo if not _looks_like_jpeg(p)]
                    decoding, groups = start_decoding(todo, pool)
                    if jpegs:  # on the device, while the others decode; what it leaves follows them
                        more, more_groups = start_decoding(self._decode_on_device(jpegs), pool)
                        decoding, groups = decoding + more, groups + more_groups
                    in_flight.append((chunk, decoding, groups))
                    if len(in_flight) > 1:
                        hand_over(*in_flight.popleft(), pool)
                while in_flight and not stop.is_set():
                    hand_over(*in_flight.popleft(), pool)
                _cancel(in_flight)  # stopped early: drop the queued work
            except BaseException as exc:  # hand any failure to the consumer
                _cancel(in_flight)
                done.put(exc)
                return
            done.put(None)

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="lookalike-load") as pool:
            producer = threading.Thread(target=produce, args=(pool,), name="lookalike-producer", daemon=True)
            producer.start()
            try:
                while True:
                    got = done.get()
                    if got is None:
                        break
                    if isinstance(got, BaseException):
                        raise got
                    yield got
            finally:
                stop.set()
                while producer.is_alive():
                    try:
                        done.get(timeout=0.1)
                    except queue.Empty:
                        pass
                producer.join()
                if arena is not None:
                    arena.close()

    # -- stage 4: embed ---------------------------------------------------------------
    def _sort_and_embed(
        self, chunk: _Chunk, report: AddReport, seen: set[str], written: _Written, on_error: str,
        replace_metadata: bool,
    ) -> _Embedding:
        """Sort a chunk into failed / unchanged / to embed, merge metadata, start embedding."""
        to_embed: list[Pending] = []
        records: list[Record] = []
        outcome: list[tuple[str, str]] = []
        for p in chunk.items:
            if p.error is not None:
                if on_error == "raise":
                    raise ImageLoadError(p.source, p.error)
                report.failed.append(Failure(p.source, p.error, p.id))
                continue
            assert p.id is not None
            p.existed = p.existing is not None or p.id in seen
            seen.add(p.id)
            earlier = written.metadata.get(p.id)  # written in this call, maybe not visible yet
            base = earlier[1] if earlier is not None else None if p.existing is None else dict(p.existing.metadata)
            p.metadata = merged_metadata(base, p.metadata, replace_metadata)
            if base is not None and base == p.metadata:  # same fields, same sha256: same content
                report.unchanged.append(p.id)
                continue
            written.remember(chunk.number, p.id, p.metadata)
            if p.existing is not None and _same_content(p, p.existing):
                # metadata changed, pixels did not: keep the vector
                records.append(Record(p.id, p.existing.vector, p.metadata))
                outcome.append(("updated", p.id))
            else:
                to_embed.append(p)
        written.forget_before(chunk.landed_before)
        embedding = _Embedding(records, outcome, to_embed, len(chunk.items), self.embedder, number=chunk.number)
        if to_embed:
            self._start_embedding(embedding)
            report.embedded = (report.embedded or 0) + len(to_embed)
        return embedding

    def _start_embedding(self, embedding: _Embedding) -> None:
        """Submit the chunk's pixels to the model; vectors done at once are checked now."""
        items = embedding.to_embed
        pending = self.embedder.submit_pixels([p.pixels for p in items])
        for p in items:
            p.pixels = None
            p.image = None
        if pending.in_background:
            embedding.pending = pending
        else:
            embedding.vectors = check_vectors(pending.result(), len(items), self.embedder)


#: Stage 1 for the Ray engine (:mod:`lookalike.ray_engine`), which runs it on its workers.
read_and_hash = Ingest._read_and_hash


# -- small helpers -----------------------------------------------------------------------
def _set_hash(item: Pending, sha256: str) -> None:
    item.sha256 = sha256
    item.metadata[HASH_FIELD] = sha256


def _cancel(in_flight: Iterable[tuple[_Chunk, list[Future[None]], list[_Group]]]) -> None:
    for _, decoding, groups in in_flight:
        for future in decoding:
            future.cancel()
        for group_future, _, _ in groups:
            if group_future is not None:
                group_future.cancel()


def _looks_like_jpeg(item: Pending) -> bool:
    """Read bytes that start like a JPEG (the device decoder checks the rest)."""
    return item.encoded is not None and item.image is None and item.encoded.data[:3] == b"\xff\xd8\xff"


def _stored_hash(item: Pending) -> str | None:
    known = None if item.existing is None else item.existing.metadata.get(HASH_FIELD)
    return known if isinstance(known, str) else None


def _same_content(item: Pending, existing: Record) -> bool:
    return item.sha256 is not None and existing.metadata.get(HASH_FIELD) == item.sha256


def _last_wins(records: list[Record]) -> list[Record]:
    by_id: dict[str, Record] = {}
    for r in records:
        by_id.pop(r.id, None)
        by_id[r.id] = r
    return list(by_id.values())
