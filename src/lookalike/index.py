"""ImageSearchIndex: the facade that ties an embedder to a vector store."""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import os
import queue
import threading
import time
import warnings
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._processes import DecodeProcesses, Done, Job, SlotArena
from .errors import (
    ConfigurationError,
    ImageLoadError,
    ImageSearchError,
    NotFoundError,
    SchemaMismatchError,
    quote_name,
)
from .images import (
    ImageBytes,
    decode_image,
    describe_source,
    load_image,
    pixel_digest,
    read_image_bytes,
    resolved_path,
)
from .protocols import Embedder, VectorStore
from .sources import Item, Source
from .types import (
    HASH_FIELD,
    PATH_FIELD,
    AddReport,
    Failure,
    Filter,
    Hit,
    ImageInput,
    MetadataValue,
    QueryInput,
    Record,
    Schema,
)

if TYPE_CHECKING:
    from PIL import Image

    from .duplicates import DuplicateGroups

__all__ = ["ImageSearchIndex", "path_id"]

DEFAULT_FIELDS = ("path", "label")
#: Images per add_many batch: with decode threads, and with decode processes.
DEFAULT_BATCH_SIZE = 32
PROCESSES_BATCH_SIZE = 128


def default_workers() -> int:
    """Decode threads by default: the CPUs this process may use, at most 32."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(32, cpus))


def path_id(path: str | os.PathLike[str]) -> str:
    """The default id of an image file: derived from its absolute, resolved path."""
    return _id_of_resolved(resolved_path(path))


def _id_of_resolved(resolved: str) -> str:
    return hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:32]


@dataclass
class _Pending:
    """One input on its way through add_many."""

    position: int
    source: str
    id: str | None
    metadata: dict[str, Any]
    input: Any = None
    encoded: ImageBytes | None = None
    image: Image.Image | None = None
    sha256: str | None = None
    existing: Record | None = None
    error: str | None = None
    tensor: Any = None
    existed: bool = False


@dataclass
class _Chunk:
    items: list[_Pending] = field(default_factory=list)


@dataclass
class _Embedding:
    """One chunk after sorting: records to write as they are, and the items being embedded."""

    ready: list[Record]
    outcome: list[tuple[str, str]]
    to_embed: list[_Pending]
    n_items: int
    vectors: NDArray[np.float32] | None = None
    pending: Any = None  # PendingVectors of the rows in pending_rows, still being embedded
    pending_rows: list[int] = field(default_factory=list)
    embedder: Any = None

    @property
    def overlaps(self) -> bool:
        """True while the vectors are still being embedded in the background, so the next
        chunk may be queued before this one is collected."""
        return self.pending is not None and bool(getattr(self.pending, "in_background", True))

    def records(self) -> tuple[list[Record], list[tuple[str, str]]]:
        """Wait for the vectors; all records to write, and what each write means."""
        if self.pending is not None:
            vectors = self.pending.result()
            assert self.vectors is not None
            self.vectors[self.pending_rows] = _check_vectors(vectors, len(self.pending_rows), self.embedder)
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
_Group = tuple["Future[list[Done]] | None", list[_Pending], list[int]]


class ImageSearchIndex:
    """Search images by image: embed with an :class:`~lookalike.Embedder`, keep the
    vectors in a :class:`~lookalike.VectorStore`.

    Args:
        embedder: turns images into vectors. Default: :class:`~lookalike.embedders.ResNet50Embedder`,
            built on first use (it downloads its weights once; see the offline docs).
        store: keeps the vectors. Default: a fresh :class:`~lookalike.stores.InMemoryStore`.
        batch_size: images embedded per batch in :meth:`add_many` (default 32, or 128
            with ``processes``: fewer pauses between batches, 2,381 vs 1,786 img/s on an H100).
        workers: threads that read, hash, decode and resize images while the model
            runs (default: the CPUs this process may use, at most 32). Embedders that offer
            ``prepare(image)`` and ``embed_prepared(list)`` (the torch ones) get their
            per-image preprocessing run in these threads too.
        processes: read, hash, decode and resize in ``workers`` worker processes
            (started with ``spawn``, free of Python's GIL) instead of in the threads;
            their pixels come back through shared memory. Use it when the model runs on
            a GPU: on a 16-core H100 machine it took ResNet50 from 904 to 2,381 img/s
            (docs/performance.md). Off by default: on a CPU the cores are busy with the
            model, and a script that sets it needs the usual ``if __name__ ==
            "__main__":`` guard (the processes import the main module). The CLI turns
            it on by itself when the model runs on CUDA.

    >>> from lookalike import ImageSearchIndex
    >>> from lookalike.embedders import FakeEmbedder
    >>> index = ImageSearchIndex(embedder=FakeEmbedder())
    >>> index.count()
    0
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        processes: bool = False,
    ) -> None:
        if batch_size is None:
            batch_size = PROCESSES_BATCH_SIZE if processes else DEFAULT_BATCH_SIZE
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ConfigurationError(f"workers must be a positive int or None, got {workers!r}")
        if not isinstance(processes, bool):
            raise ConfigurationError(f"processes must be True or False, got {processes!r}")
        self._embedder = embedder
        self._store = store
        self.batch_size = batch_size
        self.workers = workers or default_workers()
        self.processes = processes
        self._decoder: DecodeProcesses | None = None
        self._schema: Schema | None = None

    # -- components --------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from .embedders.torchvision import ResNet50Embedder

            self._embedder = ResNet50Embedder()
        return self._embedder

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            from .stores.memory import InMemoryStore

            self._store = InMemoryStore()
        return self._store

    def __repr__(self) -> str:
        embedder = "ResNet50Embedder (not built yet)" if self._embedder is None else repr(self._embedder)
        store = "InMemoryStore (not built yet)" if self._store is None else repr(self._store)
        return f"ImageSearchIndex(embedder={embedder}, store={store})"

    def close(self) -> None:
        """Close the store (and stop the decode processes, if any ran)."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._store is not None:
            self._store.close()

    def _decode_processes(self) -> DecodeProcesses | None:
        """The decode process pool (started on first use) when ``processes`` is set."""
        if not self.processes:
            return None
        if self._decoder is None or self._decoder.broken:
            process_prepare = getattr(self.embedder, "process_prepare", None)
            prepare = None  # the processes hand back PIL images
            if callable(process_prepare) and _prepare_hook(self.embedder) is not None:
                prepare = process_prepare()  # they hand back what embed_prepared takes
            self._decoder = DecodeProcesses(self.workers, prepare)
        return self._decoder

    def __enter__(self) -> ImageSearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------
    def create_schema(self, fields: Iterable[str] | None = None) -> Schema:
        """Create the store's schema for this embedder (idempotent) and return it.

        Args:
            fields: metadata fields that filters may use (``path`` is always one).
                Default: the existing schema's fields, else ``("path", "label")``.

        Raises:
            SchemaMismatchError: the store was created by another embedder, dimension or
                field set; the message names both.
        """
        existing = self.store.describe()
        if existing is not None:
            self._check_embedder(existing)
            if fields is not None:
                wanted = Schema(existing.dim, existing.identity, existing.metric, tuple(fields))
                if wanted.fields != existing.fields:
                    raise SchemaMismatchError(
                        f"{self.store!r} already has filter fields {list(existing.fields)}; "
                        f"cannot change them to {list(wanted.fields)}. Create a new store."
                    )
            self._schema = existing
            return existing
        schema = Schema(
            dim=self.embedder.dim,
            identity=self.embedder.identity,
            fields=tuple(fields) if fields is not None else DEFAULT_FIELDS,
        )
        self.store.create_schema(schema)
        self._schema = self.store.describe() or schema
        return self._schema

    def _check_embedder(self, schema: Schema) -> None:
        embedder = self.embedder
        if schema.identity != embedder.identity or schema.dim != embedder.dim:
            raise SchemaMismatchError(
                f"{self.store!r} was built with embedder {schema.identity!r} (dim {schema.dim}), "
                f"but this index uses {embedder.identity!r} (dim {embedder.dim}). Use the same "
                "embedder to search or add, or index into a new store."
            )

    def _existing_schema(self) -> Schema | None:
        if self._schema is None:
            existing = self.store.describe()
            if existing is not None:
                self._check_embedder(existing)
            self._schema = existing
        return self._schema

    def _writable_schema(self) -> Schema:
        return self._existing_schema() or self.create_schema()

    # -- adding ------------------------------------------------------------------------
    def add(
        self,
        image: ImageInput,
        *,
        id: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> str:
        """Add (or replace) one image and return its id.

        Raises:
            ImageLoadError: the image cannot be read; nothing is stored.
        """
        report = self.add_many([Item(image, id, dict(metadata or {}))], on_error="raise")
        return (report.added or report.updated or report.unchanged)[0]

    def add_many(
        self,
        images: Iterable[ImageInput | Item],
        *,
        ids: Sequence[str] | None = None,
        metadata: Mapping[str, MetadataValue] | Sequence[Mapping[str, MetadataValue]] | None = None,
        batch_size: int | None = None,
        on_error: str = "skip",
        progress: bool = False,
    ) -> AddReport:
        """Embed and store many images, streaming, in batches that commit one by one.

        Ids default to a hash of each file's resolved path (or of the content for bytes
        and PIL images), so adding the same folder again updates instead of duplicating.
        Files whose content and metadata are unchanged are skipped without decoding or
        embedding; changed files are re-embedded; changed metadata alone is rewritten
        without re-embedding.

        Args:
            images: paths, bytes, PIL images or :class:`~lookalike.sources.Item`; any
                iterable, e.g. ``sources.from_dir("photos/")``. What a
                :class:`~lookalike.sources.Source` could not use (a folder it cannot list,
                a FIFO named like an image) is listed in ``AddReport.failed``; a source that
                yields no image at all warns (``UserWarning``) with what it looked for.
            ids: one id per image (overrides the default ids).
            metadata: one mapping for all images, or one per image; ``label`` is a
                filterable field by default.
            batch_size: images per embedding batch (default: the index's).
            on_error: ``"skip"`` lists unreadable images in ``AddReport.failed`` and goes on;
                ``"raise"`` raises :class:`~lookalike.errors.ImageLoadError` at the first
                one (earlier batches stay stored).
            progress: show a progress bar (tqdm) on stderr.

        Returns:
            An :class:`~lookalike.AddReport` with ids added, updated, unchanged and the failures.
        """
        if on_error not in ("skip", "raise"):
            raise ConfigurationError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        size = self.batch_size if batch_size is None else batch_size
        if not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {size!r}")
        self._writable_schema()
        total = _length(images)
        _check_lengths(total, ids, metadata)  # before anything is stored, when we can
        report = AddReport()
        started = time.perf_counter()
        listed: list[int] = [0]  # images the input yielded (not counting a source's failures)
        pending = self._pending_items(images, ids, metadata, listed)
        seen: set[str] = set()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="img", desc="indexing", disable=not progress, dynamic_ncols=True)
        # Three stages run at once: the producer thread reads, hashes and decodes chunk
        # N+2 (with `workers` threads), the model embeds chunk N+1, and the writer thread
        # upserts chunk N. Embedders with `submit_prepared` (torch on CPU streams) get
        # chunk N+2 queued before chunk N+1 is collected, so no stream idles between
        # chunks. At most one write is in flight, so report order is input order and a
        # failure leaves every earlier batch stored.
        writing: tuple[Future[None], list[tuple[str, str]], int] | None = None
        embedding: _Embedding | None = None

        def write(done: _Embedding) -> None:
            nonlocal writing
            records, outcome = done.records()
            if writing is not None:
                self._finish_write(writing, report, bar)
                writing = None
            if records:
                writing = (writer.submit(self.store.upsert, _last_wins(records)), outcome, done.n_items)
            else:
                self._record_outcome(outcome, report)
                bar.update(done.n_items)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-store") as writer, \
                contextlib.closing(self._prepared_chunks(pending, size, self._decode_processes())) as chunks:
            try:
                for chunk in chunks:
                    try:
                        following = self._start_chunk(chunk, report, seen, on_error)
                    except Exception:  # e.g. on_error="raise": the chunk before still lands
                        if embedding is not None:
                            landing, embedding = embedding, None
                            write(landing)
                        raise
                    del chunk
                    previous, embedding = embedding, following
                    if previous is not None:
                        write(previous)
                    if not embedding.overlaps:
                        write(embedding)
                        embedding = None
                if embedding is not None:
                    write(embedding)
                    embedding = None
                if writing is not None:
                    self._finish_write(writing, report, bar)
                    writing = None
            finally:
                if embedding is not None:  # an error above: drop the batches not started
                    embedding.cancel()
                if writing is not None:  # ... and let the batch in flight land first
                    writing[0].exception()
                bar.close()
                report.seconds = time.perf_counter() - started
        if isinstance(images, Source) and not listed[0]:
            warnings.warn(images.empty_message, UserWarning, stacklevel=2)
        return report

    @staticmethod
    def _record_outcome(outcome: list[tuple[str, str]], report: AddReport) -> None:
        for kind, rid in outcome:
            (report.updated if kind == "updated" else report.added).append(rid)

    def _finish_write(
        self, writing: tuple[Future[None], list[tuple[str, str]], int], report: AddReport, bar: Any
    ) -> None:
        future, outcome, n_items = writing
        future.result()  # re-raises the store's error, if any
        self._record_outcome(outcome, report)
        bar.update(n_items)

    def _pending_items(
        self,
        images: Iterable[ImageInput | Item],
        ids: Sequence[str] | None,
        metadata: Mapping[str, MetadataValue] | Sequence[Mapping[str, MetadataValue]] | None,
        listed: list[int],
    ) -> Iterator[_Pending]:
        if isinstance(images, (str, os.PathLike)):
            where = os.fspath(images)
            if os.path.isdir(where):
                raise ConfigurationError(
                    f"add_many takes an iterable of images, not a folder path; for the images in "
                    f"{quote_name(where)} use add_many(sources.from_dir({where!r}))"
                )
            raise ConfigurationError(
                "add_many takes an iterable of images, not one path; use add() for one image, "
                "sources.from_dir(folder) for a folder or sources.from_glob(pattern) for a pattern"
            )
        if isinstance(images, bytes) or _is_pil(images):
            raise ConfigurationError("add_many takes an iterable of images; use add() for one image")
        shared_meta: Mapping[str, MetadataValue] | None = None
        per_meta: list[Mapping[str, MetadataValue]] | None = None
        if isinstance(metadata, Mapping):
            shared_meta = metadata
        elif metadata is not None:
            per_meta = list(metadata)
        id_list = None if ids is None else list(ids)
        count = 0
        position = -1
        entries: Iterable[Any] = images.entries() if isinstance(images, Source) else images
        for entry in entries:
            if isinstance(entry, Failure):  # what the source found but cannot use: no image, no position
                yield _Pending(position, entry.source, entry.id, {}, error=entry.reason)
                continue
            position += 1
            count += 1
            listed[0] = count
            item = entry if isinstance(entry, Item) else Item(entry)
            meta: dict[str, Any] = dict(item.metadata)
            if shared_meta is not None:
                meta.update(shared_meta)
            if per_meta is not None:
                if position >= len(per_meta):
                    raise ConfigurationError(f"metadata has {len(per_meta)} entries but there are more images")
                meta.update(per_meta[position])
            explicit_id = item.id
            if id_list is not None:
                if position >= len(id_list):
                    raise ConfigurationError(f"ids has {len(id_list)} entries but there are more images")
                explicit_id = id_list[position]
            if explicit_id is not None and (not isinstance(explicit_id, str) or not explicit_id):
                raise ConfigurationError(f"ids must be non-empty strings, got {explicit_id!r}")
            if HASH_FIELD in meta:
                raise ConfigurationError(f"metadata key {HASH_FIELD!r} is reserved for the content hash")
            yield _Pending(position, describe_source(item.image), explicit_id, meta, input=item.image)
        if id_list is not None and count != len(id_list):
            raise ConfigurationError(f"ids has {len(id_list)} entries but there were {count} images")

    def _prepare(self, item: _Pending, defer_read: bool = False) -> None:
        """Read bytes and compute id and content hash (runs in a worker thread).

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
                item.metadata.setdefault(PATH_FIELD, resolved)
                if item.id is None:
                    item.id = _id_of_resolved(resolved)
                if defer_read:
                    item.input = image
                    return
                item.encoded = read_image_bytes(image)
                item.sha256 = item.encoded.sha256
            elif isinstance(image, (bytes, bytearray, memoryview)):
                item.encoded = ImageBytes(item.source, bytes(image))
                item.sha256 = item.encoded.sha256
            elif _is_pil(image):
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

    def _decode(self, item: _Pending) -> None:
        """Decode, then run the embedder's per-image preprocessing (in a worker thread).

        Embedders with ``prepare(image)`` and ``embed_prepared(list)`` (the torch ones)
        get their resize/crop done here, in parallel, so the model thread only stacks
        ready arrays; others receive decoded ``PIL.Image`` objects in ``embed``.
        """
        if item.error is not None:
            return
        if item.input is not None:  # a read deferred to the decode processes, which broke
            self._prepare(item)
            if item.error is not None:
                return
            if item.existing is not None and _same_content(item, item.existing):
                item.encoded = None
                return
        if item.image is None:
            if item.encoded is None:
                return
            try:
                item.image = decode_image(item.encoded, min_size=getattr(self.embedder, "image_size", None))
            except ImageLoadError as exc:
                item.error = exc.reason
                return
            finally:
                item.encoded = None
        prepare = _prepare_hook(self.embedder)
        if prepare is not None:
            try:
                item.tensor = prepare(item.image)
                item.image = None
            except ImageSearchError:  # the model itself failed (e.g. no weights): not this image
                raise
            except Exception as exc:  # an image the model's preprocessing cannot handle
                item.error = f"cannot preprocess: {exc}"

    def _submit_to_processes(
        self, items: list[_Pending], processes: DecodeProcesses, arena: SlotArena | None
    ) -> list[_Group]:
        """Hand files and bytes to the decode processes, in about one group per process."""
        min_size = getattr(self.embedder, "image_size", None)
        n_groups = min(len(items), processes.size)
        groups = []
        for g in range(n_groups):
            members = items[g * len(items) // n_groups : (g + 1) * len(items) // n_groups]
            slots = arena.take(len(members)) if arena is not None and processes.prepares else []
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
        self,
        group: _Group,
        processes: DecodeProcesses,
        arena: SlotArena | None,
        pool: ThreadPoolExecutor,
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
                list(pool.map(self._decode, items))
                return
            to_prepare = []
            for i, (p, done) in enumerate(zip(items, results)):
                p.input = p.encoded = None
                if done.sha256 is not None:
                    _set_hash(p, done.sha256)
                if done.error is not None:
                    p.error = done.error
                elif done.layout is not None:
                    assert arena is not None
                    p.tensor = arena.read(slots[i], done.layout)
                elif done.value is not None:
                    if processes.prepares:
                        processes.learn(done.value)
                        p.tensor = done.value
                    else:
                        p.image = done.value
                        to_prepare.append(p)
            if to_prepare and _prepare_hook(self.embedder) is not None:
                list(pool.map(self._decode, to_prepare))  # the embedder's own preprocessing
        finally:
            if arena is not None and slots:
                arena.give_back(slots)

    def _prepared_chunks(
        self, pending: Iterator[_Pending], size: int, processes: DecodeProcesses | None
    ) -> Generator[_Chunk, None, None]:
        """Read, look up and decode chunks in background threads, ahead of the model.

        Two chunks decode at once, so the worker threads never wait at a chunk's end for
        its slowest image (that barrier idled most of 16 workers on a GPU machine). With
        ``processes``, files are read, hashed, decoded and prepared there instead; the
        threads only work out ids (and decode in-memory PIL images).
        """
        store = self.store
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

        def produce(pool: ThreadPoolExecutor) -> None:
            nonlocal arena
            in_flight: collections.deque[tuple[_Chunk, list[Future[None]], list[_Group]]] = collections.deque()
            prepare = functools.partial(self._prepare, defer_read=processes is not None)
            try:
                while not stop.is_set():
                    chunk = _Chunk([p for _, p in zip(range(size), pending)])
                    if not chunk.items:
                        break
                    list(pool.map(prepare, chunk.items))
                    ids = [p.id for p in chunk.items if p.error is None and p.id is not None]
                    existing = {r.id: r for r in store.get(ids)} if ids else {}
                    for p in chunk.items:
                        p.existing = existing.get(p.id or "")
                        if p.existing is not None and p.error is None and _same_content(p, p.existing):
                            p.encoded = p.image = None  # unchanged content: no need to decode
                    todo = [p for p in chunk.items if p.error is None and
                            (p.encoded is not None or p.image is not None or p.input is not None)]
                    groups: list[_Group] = []
                    if processes is not None and not processes.broken:
                        if arena is None and processes.slot_bytes is not None:
                            # slots for the two chunks in flight; a job without one sends its array back pickled
                            arena = SlotArena.sized(2 * size + processes.size, processes.slot_bytes)
                        remote = [p for p in todo if p.image is None]
                        todo = [p for p in todo if p.image is not None]
                        groups = self._submit_to_processes(remote, processes, arena) if remote else []
                    in_flight.append((chunk, [pool.submit(self._decode, p) for p in todo], groups))
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

    def _start_chunk(
        self, chunk: _Chunk, report: AddReport, seen: set[str], on_error: str
    ) -> _Embedding:
        """Sort a chunk into failed / unchanged / to embed, and start embedding."""
        to_embed: list[_Pending] = []
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
            if p.existing is not None and _same_content(p, p.existing):
                if dict(p.existing.metadata) == p.metadata:
                    report.unchanged.append(p.id)
                else:  # metadata changed, pixels did not: keep the vector
                    records.append(Record(p.id, p.existing.vector, p.metadata))
                    outcome.append(("updated", p.id))
                continue
            to_embed.append(p)
        embedding = _Embedding(records, outcome, to_embed, len(chunk.items))
        if to_embed:
            self._embed_items(embedding)
        return embedding

    def _embed_items(self, embedding: _Embedding) -> None:
        embedder = self.embedder
        items = embedding.to_embed
        prepared = [i for i, p in enumerate(items) if p.tensor is not None]
        plain = [i for i, p in enumerate(items) if p.tensor is None]
        out = embedding.vectors = np.empty((len(items), embedder.dim), dtype=np.float32)
        if prepared:
            tensors = [items[i].tensor for i in prepared]
            submit = getattr(embedder, "submit_prepared", None)
            if submit is not None:
                embedding.pending, embedding.pending_rows = submit(tensors), prepared
            else:
                embed_prepared = getattr(embedder, "embed_prepared")  # noqa: B009
                out[prepared] = _check_vectors(embed_prepared(tensors), len(prepared), embedder)
        if plain:
            images = [img for i in plain if (img := items[i].image) is not None]
            vectors = embedder.embed(images)
            out[plain] = _check_vectors(vectors, len(plain), embedder)
        for p in items:
            p.tensor = None
            p.image = None
        embedding.embedder = embedder

    # -- searching ---------------------------------------------------------------------
    def search(self, query: QueryInput, k: int = 10, *, filter: Filter | None = None) -> list[Hit]:
        """The ``k`` stored images most similar to ``query``, best first.

        Args:
            query: a path, bytes, PIL image, or a vector of the embedder's dimension.
            k: how many hits to return (fewer if the store holds fewer).
            filter: metadata filter, e.g. ``{"label": "goldfish"}`` or
                ``{"label": ["goldfish", "tench"]}``.

        Raises:
            ImageLoadError: the query image cannot be read.
        """
        if isinstance(query, (list, tuple)):
            raise ConfigurationError("search takes one query; use search_many for several")
        return self.search_many([query], k, filter=filter)[0]

    def search_many(
        self, queries: Iterable[QueryInput], k: int = 10, *, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """:meth:`search` for many queries at once (embedded and searched in batches)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigurationError(f"k must be a positive integer, got {k!r}")
        query_list = list(queries)
        schema = self._existing_schema()  # a store of another embedder fails before any work
        vectors = self.embed_queries(query_list)
        if schema is None or not query_list:
            return [[] for _ in query_list]
        return self.store.search(vectors, int(k), filter)

    def embed_queries(self, queries: Sequence[QueryInput]) -> NDArray[np.float32]:
        """Vectors for queries: images are loaded and embedded, vectors checked and normalised."""
        dim = self.embedder.dim
        out = np.zeros((len(queries), dim), dtype=np.float32)
        to_embed: list[int] = []
        images: list[Image.Image] = []
        for i, q in enumerate(queries):
            if isinstance(q, np.ndarray):
                vec = np.asarray(q, dtype=np.float32).reshape(-1)
                if vec.shape[0] != dim:
                    raise ConfigurationError(f"query vector has {vec.shape[0]} values, the index expects {dim}")
                norm = float(np.linalg.norm(vec))
                if not np.isfinite(vec).all() or norm == 0.0:
                    raise ConfigurationError("query vector must be finite and non-zero")
                out[i] = vec / norm
            else:
                images.append(load_image(q, min_size=getattr(self.embedder, "image_size", None)))
                to_embed.append(i)
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            vecs = _check_vectors(self.embedder.embed(batch), len(batch), self.embedder)
            out[to_embed[start : start + len(batch)]] = vecs
        return out

    # -- duplicates (engine: lookalike.duplicates) ----------------------------------------
    def find_duplicates(
        self, threshold: float | None = None, *, filter: Filter | None = None, progress: bool = False
    ) -> DuplicateGroups:
        """Every group of near-duplicates among the stored images, largest first; each group a
        list of :class:`~lookalike.Hit`, its representative first. ``threshold`` (cosine):
        default calibrated for the store's model. See :mod:`lookalike.duplicates`."""
        from .duplicates import find_duplicates

        self._existing_schema()
        return find_duplicates(self.store, threshold, filter=filter, progress=progress)

    def duplicates_of(
        self, image: QueryInput, threshold: float | None = None, *, filter: Filter | None = None
    ) -> list[Hit]:
        """The stored near-duplicates of ``image`` (stored or not), best first."""
        from .duplicates import duplicates_of

        return duplicates_of(self, image, threshold, filter=filter)

    # -- records -----------------------------------------------------------------------
    def get(self, id: str) -> Record:
        """The stored record with this id. Raises :class:`~lookalike.errors.NotFoundError`."""
        if self._existing_schema() is not None:
            found = self.store.get([id])
            if found:
                return found[0]
        raise NotFoundError(f"no record with id {id!r} in {self.store!r}")

    def delete(self, ids: str | Iterable[str]) -> int:
        """Delete records by id (a single id or many); return how many existed."""
        id_list = [ids] if isinstance(ids, str) else list(ids)
        if self._existing_schema() is None or not id_list:
            return 0
        return self.store.delete(id_list)

    def remove_missing(self, report: AddReport | None = None) -> list[str]:
        """Delete records whose image file is really gone; return their ids.

        A file is gone when looking it up says so (no such file, or a folder on its path
        is no longer a folder). A file that cannot be checked (permission denied, I/O
        error, an unmounted share answering with an error) may still exist, so its
        record is kept; with ``report`` (e.g. the :class:`~lookalike.AddReport` of the
        ``add_many`` that just ran) each such file is listed in ``report.failed`` with
        the reason. Records added from bytes or PIL images (no ``path``) are kept.
        """
        if self._existing_schema() is None:
            return []
        gone = []
        for batch in self.store.scan():
            for r in batch:
                if r.path is None:
                    continue
                problem = _missing(r.path)
                if problem is None:
                    continue
                if problem == "":
                    gone.append(r.id)
                elif report is not None:
                    report.failed.append(Failure(r.path, f"kept, cannot check whether it exists: {problem}", r.id))
        for start in range(0, len(gone), 1000):
            self.store.delete(gone[start : start + 1000])
        return gone

    def count(self) -> int:
        """Number of stored images."""
        return self.store.count()

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and self._existing_schema() is not None and bool(self.store.get([id]))


def _missing(path: str) -> str | None:
    """``None``: the file is there; ``""``: it is really gone; else why it cannot be checked."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # ENOENT, ENOTDIR: nothing can be at that path
        return ""
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    except ValueError as exc:  # e.g. a NUL character: not a path this system can hold
        return str(exc)
    return None


def _check_lengths(total: int | None, ids: Any, metadata: Any) -> None:
    if total is None:
        return
    if ids is not None and not isinstance(ids, str) and len(ids) != total:
        raise ConfigurationError(f"ids has {len(ids)} entries but there are {total} images")
    if metadata is not None and not isinstance(metadata, Mapping) and len(metadata) != total:
        raise ConfigurationError(f"metadata has {len(metadata)} entries but there are {total} images")


def _length(images: Iterable[Any]) -> int | None:
    try:
        return len(images)  # type: ignore[arg-type]
    except TypeError:
        return None


def _prepare_hook(embedder: Embedder) -> Any:
    """The embedder's ``prepare`` when it also has ``embed_prepared``, else ``None``."""
    prepare = getattr(embedder, "prepare", None)
    if callable(prepare) and callable(getattr(embedder, "embed_prepared", None)):
        return prepare
    return None


def _is_pil(obj: object) -> bool:
    module = type(obj).__module__
    return module.startswith("PIL.") and hasattr(obj, "getpixel")


def _set_hash(item: _Pending, sha256: str) -> None:
    item.sha256 = sha256
    item.metadata[HASH_FIELD] = sha256


def _cancel(in_flight: Iterable[tuple[_Chunk, list[Future[None]], list[_Group]]]) -> None:
    for _, decoding, groups in in_flight:
        for future in decoding:
            future.cancel()
        for group_future, _, _ in groups:
            if group_future is not None:
                group_future.cancel()


def _stored_hash(item: _Pending) -> str | None:
    known = None if item.existing is None else item.existing.metadata.get(HASH_FIELD)
    return known if isinstance(known, str) else None


def _same_content(item: _Pending, existing: Record) -> bool:
    return item.sha256 is not None and existing.metadata.get(HASH_FIELD) == item.sha256


def _last_wins(records: list[Record]) -> list[Record]:
    by_id: dict[str, Record] = {}
    for r in records:
        by_id.pop(r.id, None)
        by_id[r.id] = r
    return list(by_id.values())


def _check_vectors(vectors: Any, n: int, embedder: Embedder) -> NDArray[np.float32]:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.shape != (n, embedder.dim):
        raise ConfigurationError(
            f"{embedder!r} returned shape {arr.shape} for {n} images; expected ({n}, {embedder.dim})"
        )
    if not np.isfinite(arr).all():
        raise ConfigurationError(f"{embedder!r} returned NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ConfigurationError(f"{embedder!r} returned an all-zero vector")
    normalised: NDArray[np.float32] = (arr / norms).astype(np.float32, copy=False)
    return normalised

