"""ImageSearchIndex: the facade that ties an embedder to a vector store.

It checks arguments, binds the store to the embedder (the schema) and hands the work
on: :meth:`ImageSearchIndex.add_many` to the add pipeline (:class:`lookalike._ingest.Ingest`),
:meth:`~ImageSearchIndex.search` to the embedder and the store.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ._checks import positive_int
from ._embedding import pixel_embedder
from ._ingest import Ingest
from ._inputs import LIBRARY_FIELDS, RESERVED_WHY, check_user_metadata, missing_file, path_id
from ._processes import DecodeProcesses
from ._queries import check_min_score, excluded_ids, query_parts, query_vectors, text_embedder
from .display import SearchResults
from .errors import ConfigurationError, NotFoundError, SchemaMismatchError
from .images import looks_like_url
from .protocols import (
    CheckableStore,
    Embedder,
    LoadableEmbedder,
    PixelEmbedder,
    VectorStore,
)
from .sources import Item, Source
from .types import (
    AddReport,
    Failure,
    Filter,
    Hit,
    ImageInput,
    MetadataValue,
    QueryInput,
    Record,
    Schema,
    Text,
)

if TYPE_CHECKING:
    from .duplicates import DuplicateGroups
    from .ray_engine import RayEngine

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


class ImageSearchIndex:
    """Search images by image: embed with an :class:`~lookalike.Embedder`, keep the
    vectors in a :class:`~lookalike.VectorStore`.

    Args:
        embedder: turns images into vectors. Default: :class:`~lookalike.embedders.ResNet50Embedder`,
            built on first use (it downloads its weights once; see the offline docs).
        store: keeps the vectors. Default: a fresh :class:`~lookalike.stores.InMemoryStore`.
        batch_size: images embedded per batch in :meth:`add_many` (default 32, or 128
            with ``processes``: fewer pauses between batches; see docs/performance.md).
        workers: threads that read, hash, decode and resize images while the model
            runs (default: the CPUs this process may use, at most 32). A
            :class:`~lookalike.protocols.PixelEmbedder` (the torch ones) gets its per-image
            preprocessing (``pixels``) run in these threads too.
        processes: read, hash, decode and resize in ``workers`` worker processes
            (started with ``spawn``, free of Python's GIL) instead of in the threads;
            their pixels come back through shared memory. Use it when the model runs on
            a GPU, where the threads cannot keep up with the model (2.6x on a 16-core
            machine, docs/performance.md). Off by default: on a CPU the cores are busy with the
            model, and a script that sets it needs the usual ``if __name__ ==
            "__main__":`` guard (the processes import the main module). The CLI turns
            it on by itself when the model runs on CUDA.
        fields: the metadata fields filters may use, for a store that this index
            creates (default ``("path", "label")``); see :meth:`create_schema`.

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
        fields: Iterable[str] | None = None,
    ) -> None:
        batch_size = positive_int(batch_size, "batch_size", optional=True)
        workers = positive_int(workers, "workers", optional=True)
        if not isinstance(processes, bool):
            raise ConfigurationError(f"processes must be True or False, got {processes!r}")
        self._embedder = embedder
        self._store = store
        self.batch_size = batch_size or (PROCESSES_BATCH_SIZE if processes else DEFAULT_BATCH_SIZE)
        self.workers = workers or default_workers()
        self.processes = processes
        #: the embedder as a PixelEmbedder (itself, or a stand-in), decided once
        self._pixels: PixelEmbedder | None = None if embedder is None else pixel_embedder(embedder)
        self._ingest: Ingest | None = None  # the add pipeline, built on first use
        self._schema: Schema | None = None
        self._fields = None if fields is None else tuple(fields)

    # -- components --------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from .embedders.torchvision import ResNet50Embedder

            self._embedder = ResNet50Embedder()
        return self._embedder

    @property
    def _pixel_embedder(self) -> PixelEmbedder:
        if self._pixels is None:
            self._pixels = pixel_embedder(self.embedder)
        return self._pixels

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
        if self._ingest is not None:
            self._ingest.close()
        if self._store is not None:
            self._store.close()

    @property
    def _decoder(self) -> DecodeProcesses | None:
        """The decode processes of the add pipeline, while they run."""
        return None if self._ingest is None else self._ingest.decoder

    def _pipeline(self) -> Ingest:
        if self._ingest is None:
            self._ingest = Ingest(
                self._pixel_embedder, self.store, workers=self.workers, processes=self.processes,
                is_bound=lambda: self._schema is not None, bind=self._bind_store,
            )
        return self._ingest

    def __enter__(self) -> ImageSearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------
    def create_schema(self, fields: Iterable[str] | None = None) -> Schema:
        """Create the store's schema for this embedder (idempotent) and return it.

        The schema records the embedder's identity and dimension, binding the store to
        that model. You rarely need to call this: :meth:`add_many` records the schema
        itself just before it writes the first vectors, so a run whose model never
        loaded (no internet) or that found no images leaves the store unbound. Called
        on a store without a schema, this loads the model first (the embedder's
        ``load()``, where it has one) and records nothing if that fails.

        Args:
            fields: metadata fields that filters may use (``path`` is always one).
                Default: the existing schema's fields, else the index's ``fields``, else
                ``("path", "label")``.

        Raises:
            SchemaMismatchError: the store was created by another embedder, dimension or
                field set; the message names both.
            ModelLoadError: the model could not be loaded; the store is left as it was.
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
        embedder = self.embedder
        if isinstance(embedder, LoadableEmbedder):  # never bind a store to a model that cannot load
            embedder.load()
        return self._record_schema(fields)

    def _new_schema(self, fields: Iterable[str] | None) -> Schema:
        """The schema this index would record for its embedder."""
        if fields is None:
            fields = self._fields if self._fields is not None else DEFAULT_FIELDS
        return Schema(dim=self.embedder.dim, identity=self.embedder.identity, fields=tuple(fields))

    def _record_schema(self, fields: Iterable[str] | None) -> Schema:
        """Record the schema in a store that has none, the model loaded (here, or on the
        Ray engine's workers)."""
        self.store.create_schema(self._new_schema(fields))
        self._schema = self.store.describe() or self._new_schema(fields)
        return self._schema

    @property
    def schema(self) -> Schema | None:
        """The store's schema as stored (``None`` before the first write); not checked
        against this index's embedder, so it reads any store without building a model."""
        return self.store.describe()

    def check(self, *, fix: bool = False, rebuild: bool = False) -> list[str]:
        """Verify the store's integrity; return the problems found (empty when healthy).

        ``fix`` drops damaged records, ``rebuild`` rebuilds derived search indexes;
        nothing is written without either (see :class:`~lookalike.CheckableStore`).

        Raises:
            ConfigurationError: the store cannot check itself.
        """
        store = self.store
        if not isinstance(store, CheckableStore):
            raise ConfigurationError(f"{store!r} has no integrity check")
        return store.check(fix=fix, rebuild=rebuild)

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

    def _bind_store(self) -> None:
        """Before the first write of add_many: record the schema (the model has loaded)."""
        if self._schema is None:
            self.create_schema()

    # -- adding ------------------------------------------------------------------------
    def add(
        self,
        image: ImageInput,
        *,
        id: str | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        replace_metadata: bool = False,
    ) -> str:
        """Add (or update) one image and return its id.

        Metadata merges with what is stored, as in :meth:`add_many`.

        Raises:
            ImageLoadError: the image cannot be read; nothing is stored.
            ConfigurationError: ``metadata`` sets a reserved field (``path``, ``sha256``)
                or a value no store can keep; nothing is stored.
        """
        report = self.add_many(
            [Item(image, id, dict(metadata or {}))], on_error="raise", replace_metadata=replace_metadata
        )
        return (report.added or report.updated or report.unchanged)[0]

    def update(
        self,
        id: str,
        *,
        metadata: Mapping[str, MetadataValue] | None = None,
        drop: Iterable[str] = (),
    ) -> Record:
        """Set and drop metadata fields of a stored record, keeping its vector; return it.

        Fields in ``metadata`` replace theirs, fields named in ``drop`` are removed (an
        absent one is ignored), every other field keeps its value. Nothing is embedded.

        >>> index.update(id, metadata={"label": "tench"}, drop=["note"])  # doctest: +SKIP

        Raises:
            NotFoundError: no record has this id.
            ConfigurationError: a reserved field (``path``, ``sha256``) or an invalid value;
                nothing is written.
        """
        given = dict(metadata or {})
        dropped = [drop] if isinstance(drop, str) else list(drop)
        check_user_metadata(given, "")
        for name in dropped:
            if name in LIBRARY_FIELDS:
                raise ConfigurationError(
                    f"cannot drop metadata field {name!r}: it is reserved ({RESERVED_WHY[name]})"
                )
        record = self.get(id)
        merged = {k: v for k, v in record.metadata.items() if k not in dropped}
        merged.update(given)
        updated = Record(record.id, record.vector, merged)
        if merged != dict(record.metadata):
            self.store.upsert([updated])
        return updated

    def add_many(
        self,
        images: Iterable[ImageInput | Item],
        *,
        ids: Sequence[str] | None = None,
        metadata: Mapping[str, MetadataValue] | Sequence[Mapping[str, MetadataValue]] | None = None,
        batch_size: int | None = None,
        on_error: str = "skip",
        progress: bool = False,
        replace_metadata: bool = False,
        engine: str | RayEngine | None = None,
    ) -> AddReport:
        """Embed and store many images, streaming, in batches that commit one by one.

        Ids default to a hash of each file's resolved path (or of the content for bytes
        and PIL images), so adding the same folder again updates instead of duplicating.
        Files whose content and metadata are unchanged are skipped without decoding or
        embedding; changed files are re-embedded; changed metadata alone is rewritten
        without re-embedding.

        Metadata merges with a stored record's: fields this add gives replace theirs,
        fields it does not give keep their stored value (re-indexing a folder keeps the
        labels a CSV gave). ``path`` and ``sha256`` are set by the index and reserved.

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
            progress: show a progress bar (tqdm): a widget in a notebook with ipywidgets
                installed, else text (on stdout in a notebook, stderr elsewhere).
            replace_metadata: the stored metadata of each image becomes exactly what this
                add gives (plus ``path`` and ``sha256``): fields it does not give are dropped.
                To change single fields of one record, see :meth:`update`.
            engine: ``None`` or ``"local"`` (default): in this process. ``"ray"`` or a
                :class:`~lookalike.ray_engine.RayEngine`: on a Ray cluster (read, decode and
                embed on its workers, the same records and report; ``pip install
                'lookalike[ray]'``, see docs/ray.md). Files must then be paths every node
                sees, or URLs (``lookalike.ray_engine.from_uri("s3://bucket/photos/")``).

        Raises:
            ConfigurationError: ``metadata`` sets a reserved field (``path``, ``sha256``)
                or a value no store can keep (checked before anything is stored for the
                ``metadata`` argument; for an ``Item``, when it is reached).

        Returns:
            An :class:`~lookalike.AddReport` with ids added, updated, unchanged and the failures.
        """
        if on_error not in ("skip", "raise"):
            raise ConfigurationError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        size = self.batch_size if batch_size is None else positive_int(batch_size, "batch_size")
        if not isinstance(replace_metadata, bool):
            raise ConfigurationError(f"replace_metadata must be True or False, got {replace_metadata!r}")
        if isinstance(metadata, Mapping):  # before anything is stored
            check_user_metadata(metadata, "")
        elif metadata is not None:
            metadata = list(metadata)
            for position, meta in enumerate(metadata):
                check_user_metadata(meta, f" in metadata[{position}]")
        on_ray = None
        if engine is not None and engine != "local":
            from . import ray_engine

            on_ray = ray_engine.as_engine(engine)
        self._existing_schema()  # a store of another embedder fails before any work
        if on_ray is not None:
            report, listed = ray_engine.add_many(
                self, images, ids=ids, metadata=metadata, batch_size=size, on_error=on_error,
                progress=progress, replace_metadata=replace_metadata, engine=on_ray,
            )
        else:
            report, listed = self._pipeline().add(
                images, ids=ids, metadata=metadata, batch_size=size, on_error=on_error, progress=progress,
                replace_metadata=replace_metadata,
            )
        if isinstance(images, Source) and not listed:
            warnings.warn(images.empty_message, UserWarning, stacklevel=2)
        return report

    # -- searching ---------------------------------------------------------------------
    def search(
        self,
        query: QueryInput,
        k: int = 10,
        *,
        filter: Filter | None = None,
        min_score: float | None = None,
        exclude: str | Hit | Record | Iterable[str | Hit | Record] | None = None,
    ) -> SearchResults:
        """The ``k`` stored images most similar to ``query``, best first.

        Args:
            query: a path, bytes, PIL image, a vector of the embedder's dimension, or a
                stored :class:`~lookalike.Hit` / :class:`~lookalike.Record` ("more like
                this": its stored vector is used, and it is left out of its own results).
            k: how many hits to return (fewer if the store holds fewer).
            filter: metadata filter, e.g. ``{"label": "goldfish"}`` or
                ``{"label": ["goldfish", "tench"]}``.
            min_score: leave out hits whose score (cosine similarity) is below this.
            exclude: ids to leave out (one id, or an iterable of ids, hits or records);
                ``k`` hits still come back when the store has that many others.

        Returns:
            :class:`~lookalike.display.SearchResults`: a ``list[Hit]`` that a notebook
            shows as a grid of thumbnails, with ``to_pandas()``, ``ids``, ``paths``,
            ``scores`` and ``query``.

        Raises:
            ImageLoadError: the query image cannot be read.
            NotFoundError: the query is a hit that is no longer stored.
        """
        if isinstance(query, (list, tuple)):
            raise ConfigurationError("search takes one query; use search_many for several")
        return self.search_many([query], k, filter=filter, min_score=min_score, exclude=exclude)[0]

    def search_many(
        self,
        queries: Iterable[QueryInput],
        k: int = 10,
        *,
        filter: Filter | None = None,
        min_score: float | None = None,
        exclude: str | Hit | Record | Iterable[str | Hit | Record] | None = None,
    ) -> list[SearchResults]:
        """:meth:`search` for many queries at once (embedded and searched in batches);
        one :class:`~lookalike.display.SearchResults` per query, in order."""
        k = positive_int(k, "k")
        threshold = check_min_score(min_score)
        excluded = excluded_ids(exclude)
        query_list = list(queries)
        if any(isinstance(q, Text) for q in query_parts(query_list)):
            text_embedder(self.embedder)  # before any work
        schema = self._existing_schema()  # a store of another embedder fails before any work
        vectors = self.embed_queries(query_list)
        if schema is None or not query_list:
            return [SearchResults(query=q) for q in query_list]
        own = [q.id if isinstance(q, (Hit, Record)) else None for q in query_list]
        # ask for enough extra hits that k remain once the left-out ids are dropped
        extra = len(excluded) + (1 if any(i is not None for i in own) else 0)
        found = self.store.search(vectors, int(k) + extra, filter)
        results = []
        for query, own_id, hits in zip(query_list, own, found):
            kept = [
                h for h in hits
                if h.id not in excluded and h.id != own_id and (threshold is None or h.score >= threshold)
            ]
            results.append(SearchResults(kept[: int(k)], query=query))
        return results

    def embed_queries(self, queries: Sequence[QueryInput]) -> NDArray[np.float32]:
        """Vectors for queries: images are loaded and embedded, texts embedded by a
        :class:`~lookalike.protocols.TextEmbedder`, vectors checked and normalised, and
        stored hits or records give their stored vectors."""
        stored = self._stored_vectors([q for q in query_parts(queries) if isinstance(q, Hit)])
        return query_vectors(queries, self.embedder, image_size=self._pixel_embedder.image_size, stored=stored,
                             batch_size=self.batch_size)

    def _stored_vectors(self, hits: list[Hit]) -> dict[str, Record]:
        """The stored records of hits used as queries; NotFoundError for one that is gone."""
        if not hits:
            return {}
        ids = list(dict.fromkeys(h.id for h in hits))
        found = {r.id: r for r in self.store.get(ids)} if self._existing_schema() is not None else {}
        for hit in hits:
            if hit.id not in found:
                what = f"{hit.id!r} ({hit.path})" if hit.path else repr(hit.id)
                raise NotFoundError(f"cannot search by hit {what}: it is no longer in {self.store!r}")
        return found

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
        the reason. Records added from bytes or PIL images (no ``path``) or from URLs are kept.
        """
        if self._existing_schema() is None:
            return []
        gone = []
        for batch in self.store.scan():
            for r in batch:
                if r.path is None or looks_like_url(r.path):  # bytes, PIL, or a URL (engine="ray")
                    continue
                problem = missing_file(r.path)
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
