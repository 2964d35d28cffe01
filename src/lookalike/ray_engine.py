"""``add_many`` on Ray Data: index on a cluster when one machine is not enough.

>>> index.add_many(sources.from_dir("/nfs/photos"), engine="ray")   # doctest: +SKIP
>>> index.add_many(from_uri("s3://bucket/photos/"), engine=RayEngine(gpus_per_worker=1))  # doctest: +SKIP

The contract is the in-process one (:class:`lookalike._ingest.Ingest`), and so is most of
the code: the driver (the process that calls ``add_many``) runs stage 1 (ids, with reads
deferred), stage 2 (one ``store.get`` per chunk: the stored hashes), stage 4 (sorting into
failed / unchanged / metadata only / embedded, the metadata rules, the report) and, for a
single-writer store such as :class:`~lookalike.stores.LocalStore`, stage 5 (the writes).
Ray runs what costs: read + hash + decode + pixels as CPU tasks (a file whose hash equals
the stored one is not decoded), and the forward pass in an actor pool (one model load per
actor, a GPU each when the cluster has GPUs). A store that takes concurrent writers over
the network (:class:`~lookalike.stores.TencentVectorStore`, or any store with a
``worker_spec()``) is written by the model actors directly, so vectors never travel back.

Embedders and stores travel to the workers as :class:`WorkerSpec` (a registry name or the
embedder's identity, a store URL, a ``module:factory`` path, and plain options), never as
pickled models; credentials (``TENCENT_VECTORDB_KEY``) come from the workers' environment.

Ray (``pip install 'lookalike[ray]'``) is imported only here, and only when a run starts.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import re
import time
import warnings
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from ._checks import optional_import
from ._embedding import DoneVectors, check_vectors, pixel_embedder
from ._ingest import Ingest, _Chunk, _Embedding, _Writes, _Written, read_and_hash
from ._inputs import Pending, check_lengths, id_of_resolved, length, merged_metadata, pending_items
from .display import progress_bar
from .errors import (
    ConfigurationError,
    ImageLoadError,
    ImageSearchError,
    SchemaMismatchError,
    quote_name,
)
from .images import IMAGE_EXTENSIONS, ImageBytes, looks_like_url
from .protocols import Embedder, LoadableEmbedder, PendingVectors, VectorStore
from .sources import Source
from .types import HASH_FIELD, PATH_FIELD, AddReport, Failure, Record, Schema

if TYPE_CHECKING:
    from PIL import Image

    from .index import ImageSearchIndex
    from .sources import Item
    from .types import ImageInput

__all__ = ["HasWorkerSpec", "RayEngine", "WorkerSpec", "embedder_spec", "from_uri", "store_spec"]

#: Rows handed to Ray Data at once (one dataset each); the driver looks their stored hashes
#: up before, and sorts and writes them as the results stream back.
DEFAULT_WINDOW = 10_000
#: A batch whose worker died is retried this many times by default (a killed or preempted
#: node costs a retry; a file that crashes every worker fails the run instead of looping).
RETRIES = 3


# -- what travels to the workers -----------------------------------------------------------
@dataclass(frozen=True)
class WorkerSpec:
    """How a worker builds an embedder or a store, instead of receiving a pickled one.

    ``target`` is ``"identity:<embedder identity>"`` (rebuilt through
    :func:`lookalike.registry.embedder_for_identity`), ``"store:<spec>"`` (through
    :func:`lookalike.registry.open_store`) or ``"package.module:factory"`` (imported on the
    worker, called with ``options``). ``options`` travel in the task's arguments: plain
    values only, never a credential (workers read those from their environment).
    """

    target: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        kind, _, rest = self.target.partition(":")
        if kind == "identity":
            from .registry import embedder_for_identity

            built = embedder_for_identity(rest, **self.options)
            if built is None:
                raise ConfigurationError(f"no registered embedder has the identity {rest!r}")
            return built
        if kind == "store":
            from .registry import open_store

            return open_store(rest, **self.options)
        module, sep, name = self.target.partition(":")
        if not sep or not module or not name:
            raise ConfigurationError(
                f"worker spec target {self.target!r} must be 'package.module:factory', "
                "'identity:IDENTITY' or 'store:SPEC'"
            )
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(
                f"cannot build {self.target!r} on this worker: {exc} (is the package installed on "
                "every node of the cluster?)"
            ) from None
        return obj(**dict(self.options))


@runtime_checkable
class HasWorkerSpec(Protocol):
    """An embedder or store that says how a worker builds its twin (``engine="ray"``)."""

    def worker_spec(self) -> WorkerSpec: ...


def embedder_spec(embedder: Embedder) -> WorkerSpec:
    """How the workers build ``embedder``: its own :meth:`~HasWorkerSpec.worker_spec`, else
    its identity when the registry rebuilds the same class from it (every named model).

    Raises:
        ConfigurationError: neither; the message says what ``engine="ray"`` needs.
    """
    if isinstance(embedder, HasWorkerSpec):
        return embedder.worker_spec()
    from .registry import embedder_for_identity

    options = _runtime_options(embedder)
    try:
        rebuilt = embedder_for_identity(embedder.identity, **options)
    except ImageSearchError:
        rebuilt = None
    if rebuilt is not None and type(rebuilt) is type(embedder) and rebuilt.identity == embedder.identity:
        return WorkerSpec("identity:" + embedder.identity, options)
    raise ConfigurationError(
        f"engine='ray' builds the embedder on each worker from a spec, and {embedder!r} has none: "
        "use a named model (--embedder resnet50, efficientnet-lite0, torchvision:ARCH..., fake) or give "
        "the embedder a worker_spec() method returning lookalike.ray_engine.WorkerSpec("
        "'package.module:factory', {options}) that the workers can import"
    )


def _runtime_options(embedder: Embedder) -> dict[str, Any]:
    """The options a worker passes when it rebuilds a torch model: the precision asked for
    (the device is the worker's own: its GPU when Ray gave it one)."""
    from .embedders._torch import TorchEmbedder  # torch-free until a model loads

    if isinstance(embedder, TorchEmbedder):
        return {"precision": embedder._precision}
    return {}


#: Options of a :class:`~lookalike.stores.TencentVectorStore` that a worker needs (the key
#: is not one of them: the workers read ``TENCENT_VECTORDB_KEY``).
_TENCENT_OPTIONS = ("username", "database", "collection", "shards", "replicas", "read_consistency",
                    "timeout", "ef", "hnsw_m", "ef_construction", "batch_size", "retries", "backoff",
                    "max_backoff")


def store_spec(store: VectorStore) -> WorkerSpec | None:
    """How the workers open ``store`` to write to it directly, or ``None``: the driver writes
    (LocalStore's single writer, InMemoryStore, any store without a spec)."""
    if isinstance(store, HasWorkerSpec):
        return store.worker_spec()
    if type(store).__module__ == "lookalike.stores.tencent":
        options = {name: getattr(store, name) for name in _TENCENT_OPTIONS}
        return WorkerSpec("lookalike.stores.tencent:TencentVectorStore", {"url": store.url, **options})  # type: ignore[attr-defined]
    return None


# -- the engine ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RayEngine:
    """Where and how ``add_many(..., engine=RayEngine(...))`` runs; ``engine="ray"`` is
    ``RayEngine()``.

    Args:
        address: the cluster (``ray://HOST:10001``, ``auto``...); default: the one
            ``ray.init`` connected this process to, else ``$RAY_ADDRESS``, else a local one.
        workers: model actors (default: one per GPU of the cluster, else half its CPUs).
        gpus_per_worker: GPUs per model actor (default: 1 when the cluster has GPUs, else 0;
            a fraction shares a GPU between actors).
        cpus_per_worker: CPUs reserved per model actor (default 1); the rest decode.
        window: images handed to Ray Data at once (default 10,000): the driver looks up their
            stored hashes first, and sorts and writes their results as they come back.
        retries: a batch whose worker died (killed, preempted, out of memory) is run again
            up to this many times (default 3); then the run fails, every batch reported
            before stays stored, and running it again completes the rest.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    window: int = DEFAULT_WINDOW
    retries: int = RETRIES

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ConfigurationError(f"workers must be a positive whole number, got {self.workers!r}")
        for name in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or value < 0 or value != value):
                raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigurationError(f"window must be a positive whole number, got {self.window!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigurationError(f"retries must be a whole number >= 0, got {self.retries!r}")


def as_engine(engine: object) -> RayEngine | None:
    """``add_many``'s ``engine``: ``None``/``"local"`` (in-process), ``"ray"`` or a :class:`RayEngine`."""
    if engine is None or engine == "local":
        return None
    if engine == "ray":
        return RayEngine()
    if isinstance(engine, RayEngine):
        return engine
    raise ConfigurationError(f"engine must be 'local', 'ray' or a RayEngine, got {engine!r}")


def import_ray() -> ModuleType:
    """Ray with Ray Data, or :class:`~lookalike.errors.MissingDependencyError` naming ``[ray]``."""
    optional_import("ray.data", extra="ray", feature="engine='ray'", package="ray")
    import ray

    return ray


def connect(engine: RayEngine) -> ModuleType:
    """Ray, connected: the cluster this process joined already, ``engine.address``,
    ``$RAY_ADDRESS``, else a new local one (kept for later runs)."""
    ray = import_ray()
    if not ray.is_initialized():
        address = engine.address or os.environ.get("RAY_ADDRESS")
        # a new local cluster without its dashboard; an existing one as it is (Ray Client
        # refuses options it does not know)
        options: dict[str, Any] = {} if address else {"include_dashboard": False}
        if address:
            _check_reachable(address)
        try:
            with _quiet():
                ray.init(address=address, **options)
        except Exception as exc:  # unreachable, refused, a malformed address
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ConfigurationError(f"cannot connect to {where}: {exc}") from None
    return ray


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) that nothing answers at is an error now: Ray
    itself keeps trying to connect for minutes."""
    import socket

    host, colon, port = address.split("://", 1)[-1].rpartition(":")
    if not colon or not port.isdigit() or not host:
        return  # "auto", "local", a name Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot connect to the Ray cluster at {address}: {exc.strerror or exc} (is the head "
            "node running? `ray status` on it shows its address)"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Ray Data warns about its own deprecated settings when it starts; not the caller's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@dataclass
class _Plan:
    """What the workers get: specs and plain values only (a test checks no key is in it)."""

    embedder: WorkerSpec
    identity: str
    dim: int
    store: WorkerSpec | None
    schema: dict[str, Any] | None
    batch_size: int
    workers: int
    gpus: float
    cpus: float
    retries: int


def _plan(ray: ModuleType, index: ImageSearchIndex, engine: RayEngine, batch_size: int) -> _Plan:
    embedder = index.embedder
    spec = embedder_spec(embedder)
    sspec = store_spec(index.store)
    resources = ray.cluster_resources()
    cluster_gpus = float(resources.get("GPU", 0))
    cluster_cpus = float(resources.get("CPU", 1))
    gpus = engine.gpus_per_worker if engine.gpus_per_worker is not None else (1.0 if cluster_gpus else 0.0)
    if engine.workers is not None:
        workers = engine.workers
    elif gpus:
        workers = max(1, int(cluster_gpus // gpus))
    else:
        workers = max(1, int(cluster_cpus // 2))
    if gpus * workers > cluster_gpus:
        raise ConfigurationError(
            f"{workers} model workers with {gpus:g} GPU each need {gpus * workers:g} GPUs; the Ray "
            f"cluster has {cluster_gpus:g}"
        )
    if engine.cpus_per_worker * workers >= cluster_cpus:
        raise ConfigurationError(
            f"{workers} model workers with {engine.cpus_per_worker:g} CPU each would hold all "
            f"{cluster_cpus:g} CPUs of the Ray cluster, leaving none to read and decode images: "
            "use fewer workers or a smaller cpus_per_worker"
        )
    schema = None
    if sspec is not None:  # the workers create the collection before their first write
        schema = (index._schema or index._new_schema(None)).to_dict()
    return _Plan(spec, embedder.identity, embedder.dim, sspec, schema, batch_size, workers, gpus,
                 engine.cpus_per_worker, engine.retries)


# -- the driver ------------------------------------------------------------------------------
class _Precomputed:
    """The model as the driver's sort stage sees it: each item's "pixels" are its vector,
    computed by a model actor (so :meth:`Ingest._sort_and_embed` runs unchanged)."""

    image_size = None

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.dim, self.identity = embedder.dim, embedder.identity

    def embed(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        raise ConfigurationError("the Ray engine embeds on its workers")

    def pixels(self, image: Image.Image) -> Any:
        raise ConfigurationError("the Ray engine decodes on its workers")

    def pixel_function(self) -> None:
        return None

    def embed_pixels(self, items: Sequence[Any]) -> NDArray[np.float32]:
        if not len(items):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(items).astype(np.float32, copy=False)

    def submit_pixels(self, items: Sequence[Any]) -> PendingVectors:
        return DoneVectors(self.embed_pixels(items))

    def __repr__(self) -> str:
        return repr(self.embedder)


def add_many(
    index: ImageSearchIndex,
    images: Iterable[ImageInput | Item],
    *,
    ids: Sequence[str] | None,
    metadata: Any,
    batch_size: int,
    on_error: str,
    progress: bool,
    replace_metadata: bool,
    engine: RayEngine,
) -> tuple[AddReport, int]:
    """``index.add_many(..., engine=...)`` on Ray: the report, and how many images the input
    yielded (as :meth:`Ingest.add <lookalike._ingest.Ingest.add>`)."""
    total = length(images)
    check_lengths(total, ids, metadata)
    embedder_spec(index.embedder)  # before any cluster starts: a model the workers cannot build
    report = AddReport()
    report.embedded = 0
    started = time.perf_counter()
    listed = [0]
    pending = pending_items(images, ids, metadata, listed)
    # the first window before the cluster: bad input fails at once, and no input starts nothing
    window = list(itertools.islice(pending, engine.window))
    if not window:
        report.seconds = time.perf_counter() - started
        return report, listed[0]
    ray = connect(engine)
    plan = _plan(ray, index, engine, batch_size)
    bound = _Bound(index)
    ingest = Ingest(_Precomputed(index.embedder), index.store, workers=1, processes=False,
                    is_bound=bound, bind=bound.bind)
    seen: set[str] = set()
    mentioned: set[str] = set()  # ids shipped so far: a later mention is never written by a worker
    written = _Written()
    numbers = itertools.count()
    bar = progress_bar(total, progress, report, started)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-store") as pool:
            writes = _Writes(index.store, bound.bind, pool, report, bar, written)
            try:
                while window:
                    chunks = [_Chunk(window[start : start + batch_size], next(numbers))
                              for start in range(0, len(window), batch_size)]
                    rows = _ship(ingest, chunks, written, mentioned, plan, replace_metadata)
                    # closed on an error too (on_error="raise"): Ray stops the window's work
                    with contextlib.closing(_results(ray, rows, plan, progress)) as results:
                        for chunk, direct in _in_order(chunks, rows, results):
                            embedding = ingest._sort_and_embed(chunk, report, seen, written, on_error,
                                                               replace_metadata)
                            _drop_written(embedding, direct)
                            writes.write(embedding)
                    window = list(itertools.islice(pending, engine.window))
                writes.finish()
            finally:
                writes.wait()  # the write in flight lands, even after an error
    finally:
        report.seconds = time.perf_counter() - started
        bar.close()
    return report, listed[0]


class _Bound:
    """Whether the store has a schema (the workers may have recorded it), and binding the
    index to it before the driver's first write, without loading the model here: it loaded
    on the workers, whose identity was checked."""

    def __init__(self, index: ImageSearchIndex) -> None:
        self.index = index
        self.known = index._schema is not None

    def __call__(self) -> bool:
        if not self.known:
            self.known = self.index._schema is not None or self.index.store.describe() is not None
        return self.known

    def bind(self) -> None:
        if self.index._schema is None:
            if self.index.store.describe() is not None:
                self.index.create_schema()  # checks the model; loads nothing when a schema exists
            else:
                self.index._record_schema(None)
        self.known = True


def _identify(item: Pending) -> None:
    """Stage 1 on the driver: the id (and the hash of bytes and PIL images); files and URLs
    are read on the workers."""
    if item.error is None and looks_like_url(item.input):
        uri = str(item.input)
        item.metadata[PATH_FIELD] = uri
        if item.id is None:
            item.id = id_of_resolved(uri)
        return
    read_and_hash(item, defer_read=True)


def _ship(
    ingest: Ingest, chunks: list[_Chunk], written: _Written, mentioned: set[str], plan: _Plan,
    replace: bool,
) -> list[dict[str, Any]]:
    """Stages 1 and 2 for a window: ids, stored hashes (one ``store.get`` per chunk), and a
    row per item that needs a worker (each row names its chunk and place)."""
    rows: list[dict[str, Any]] = []
    for chunk in chunks:
        for item in chunk.items:
            _identify(item)
        ingest._look_up(chunk, written)
        for place, item in enumerate(chunk.items):
            if item.error is not None:
                continue
            row: dict[str, Any] = {"chunk": chunk.number, "place": place, "source": item.source,
                                   "known": _stored_hash(item), "path": "", "uri": "", "data": None,
                                   "id": item.id or "", "meta": ""}
            if item.input is not None:  # a file or URL: read and hashed on a worker
                row["uri" if looks_like_url(item.input) else "path"] = os.fspath(item.input)
            elif item.encoded is not None:
                row["data"] = item.encoded.data
            elif item.image is not None:  # a PIL image: lossless PNG, decoded to the same pixels
                row["data"] = _png(item.image)
            else:
                continue  # unchanged content, hashed here: nothing to do on a worker
            if plan.store is not None and item.id not in mentioned:
                # written by the model actor: the record's metadata, but for its hash
                base = None if item.existing is None else dict(item.existing.metadata)
                row["meta"] = json.dumps(merged_metadata(base, dict(item.metadata), replace))
            if item.id is not None:
                mentioned.add(item.id)
            rows.append(row)
        for item in chunk.items:
            if item.id is not None:
                mentioned.add(item.id)
    return rows


def _results(ray: ModuleType, rows: list[dict[str, Any]], plan: _Plan, progress: bool) -> Generator[dict[str, Any], None, None]:
    """The workers' answers, one dict per row, in the order they come back."""
    if not rows:
        return
    with _quiet():
        context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    try:
        context.enable_progress_bars = bars and progress  # quiet runs are quiet
        yield from _run(ray, rows, plan)
    finally:
        context.enable_progress_bars = bars


def _run(ray: ModuleType, rows: list[dict[str, Any]], plan: _Plan) -> Iterator[dict[str, Any]]:
    with _quiet():
        dataset = ray.data.from_items(rows)
        dataset = dataset.map_batches(
            _prepare, batch_size=plan.batch_size, batch_format="numpy", fn_kwargs={"embedder": plan.embedder},
            num_cpus=1, max_retries=plan.retries,  # a file that crashes its worker fails the run, never loops
        )
        dataset = dataset.map_batches(
            _Embed, batch_size=plan.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.workers),
            fn_constructor_kwargs={"embedder": plan.embedder, "identity": plan.identity, "store": plan.store,
                                   "schema": plan.schema},
            # restarts bounded too: an actor still restarting when a failed run shuts down
            # outlives it, holding its CPU or GPU, and the next run would wait for it forever
            num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=plan.retries, max_task_retries=plan.retries,
        )
    batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
    try:
        for batch in batches:
            for i in range(len(batch["chunk"])):
                yield {name: column[i] for name, column in batch.items()}
    except ImageSearchError:
        raise
    except Exception as exc:
        raise _unwrapped(exc) from None


def _in_order(
    chunks: list[_Chunk], rows: list[dict[str, Any]], results: Iterator[dict[str, Any]]
) -> Iterator[tuple[_Chunk, set[int]]]:
    """Each chunk with its workers' results applied, in input order, as soon as it is
    complete; and the positions of its items that a model actor wrote itself."""
    first = chunks[0].number if chunks else 0
    waiting = {chunk.number: 0 for chunk in chunks}
    for row in rows:
        waiting[row["chunk"]] += 1
    direct: dict[int, set[int]] = {chunk.number: set() for chunk in chunks}
    next_up = 0

    def ready() -> Iterator[tuple[_Chunk, set[int]]]:
        nonlocal next_up
        while next_up < len(chunks) and waiting[chunks[next_up].number] == 0:
            chunk = chunks[next_up]
            next_up += 1
            yield chunk, direct[chunk.number]

    yield from ready()
    for result in results:
        number, place = int(result["chunk"]), int(result["place"])
        item = chunks[number - first].items[place]
        item.input = item.encoded = item.image = None
        sha256, error = str(result["sha256"]), str(result["error"])
        if sha256:
            item.sha256 = sha256
            item.metadata[HASH_FIELD] = sha256
        if error:
            item.error = error
        elif bool(result["written"]):
            direct[number].add(item.position)
            item.pixels = _placeholder(len(result["vector"]))
        elif bool(result["embedded"]):
            item.pixels = np.asarray(result["vector"], dtype=np.float32)
        waiting[number] -= 1
        yield from ready()
    if next_up < len(chunks):  # Ray came back without some rows: never report them as done
        raise ImageSearchError(f"the Ray run returned no result for some of the images of chunk {next_up}")


def _drop_written(embedding: _Embedding, direct: set[int]) -> None:
    """Records a model actor wrote already: reported as added or updated, not written again."""
    if not direct or embedding.vectors is None:
        return
    keep = []
    for i, item in enumerate(embedding.to_embed):
        if item.position in direct:
            assert item.id is not None
            embedding.outcome.append(("updated" if item.existed else "added", item.id))
        else:
            keep.append(i)
    embedding.to_embed = [embedding.to_embed[i] for i in keep]
    embedding.vectors = embedding.vectors[keep]


def _placeholder(dim: int) -> NDArray[np.float32]:
    vector = np.zeros(dim, dtype=np.float32)
    vector[0] = 1.0
    return vector


def _stored_hash(item: Pending) -> str:
    known = None if item.existing is None else item.existing.metadata.get(HASH_FIELD)
    return known if isinstance(known, str) else ""


def _png(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _unwrapped(exc: BaseException) -> ImageSearchError:
    """A worker's own lookalike error out of Ray's wrappers; else one naming the worker's
    exception (not Ray's wrappers around it)."""
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    user: BaseException | None = None
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, ImageSearchError):
            return cause
        if isinstance(current, ImageSearchError) and type(current).__module__.startswith("lookalike"):
            return current
        if user is None and not type(current).__module__.startswith("ray"):
            user = current
        stack += [cause if isinstance(cause, BaseException) else None, current.__cause__, current.__context__]
    named = _named_error(str(exc))
    if named is not None:
        return named
    shown = user or exc
    text = str(shown).strip().splitlines()
    return ImageSearchError(f"the Ray run failed: {type(shown).__name__}: {text[0] if text else ''}".rstrip(": "))


def _named_error(text: str) -> ImageSearchError | None:
    """The lookalike error a worker raised where Ray kept only its text (an actor whose
    ``__init__`` raised: Ray's error holds the remote traceback as a string)."""
    from . import errors

    found = re.findall(r"^lookalike\.errors\.(\w+): (.+)$", text, flags=re.MULTILINE)
    if not found:
        return None
    name, message = found[-1]
    kind = getattr(errors, name, None)
    if isinstance(kind, type) and issubclass(kind, ImageSearchError):
        try:
            return kind(message)
        except TypeError:  # an error built from parts (ImageLoadError(source, reason), ...)
            return ImageSearchError(message)
    return None


# -- the workers -----------------------------------------------------------------------------
_BUILT: dict[WorkerSpec, Ingest] = {}


def _worker_ingest(spec: WorkerSpec) -> Ingest:
    """The decode stage of one worker process, built once from the spec (no model loads:
    ``pixels`` needs only the preprocessing, and a torch model's comes from its spec)."""
    key = WorkerSpec(spec.target, _Frozen(spec.options))
    if key not in _BUILT:
        _BUILT[key] = Ingest(spec.build(), _NoStore(), workers=1, processes=False,
                             is_bound=lambda: False, bind=lambda: None)
    return _BUILT[key]


class _Frozen(dict[str, Any]):
    def __hash__(self) -> int:  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True, default=repr))


class _NoStore:
    """The decode stage's store on a worker: never used (lookups happen on the driver)."""

    def __getattr__(self, name: str) -> Any:
        raise ConfigurationError("the Ray engine's decode tasks have no store")


def _prepare(batch: Mapping[str, Any], embedder: WorkerSpec) -> dict[str, Any]:
    """A Ray task (CPU): read, hash, and, unless the hash is the stored one, decode and make
    the model's pixels (the in-process stages 1 and 3)."""
    ingest = _worker_ingest(embedder)
    n = len(batch["chunk"])
    sha: list[str] = []
    errors: list[str] = []
    pixels: list[Any] = []
    for i in range(n):
        item = Pending(-1, str(batch["source"][i]), None, {})
        path, uri, data = str(batch["path"][i]), str(batch["uri"][i]), batch["data"][i]
        if path:
            item.input = path
            read_and_hash(item)
        elif uri:
            try:
                item.input = read_uri(uri)
            except ImageLoadError as exc:
                item.error = exc.reason
            read_and_hash(item)
        else:
            item.encoded = ImageBytes(item.source, bytes(data))
        known = str(batch["known"][i])
        if item.error is None and not (known and item.sha256 == known):
            ingest._decode_to_pixels(item)
        sha.append(item.sha256 or "" if path or uri else "")
        errors.append(item.error or "")
        pixels.append(item.pixels if item.error is None else None)
    out = {name: batch[name] for name in ("chunk", "place", "id", "meta")}
    holder = np.empty(n, dtype=object)
    for i, value in enumerate(pixels):  # one by one: arrays of one shape must not broadcast
        holder[i] = value
    ready = np.array([p is not None for p in pixels], dtype=bool)  # a column of None reads back as NaN
    return {**out, "sha256": np.array(sha, dtype=object), "error": np.array(errors, dtype=object),
            "pixels": holder, "ready": ready}


class _Embed:
    """A Ray actor (GPU when the cluster has them): the model, loaded once, and the store
    when the workers write it directly."""

    def __init__(self, embedder: WorkerSpec, identity: str, store: WorkerSpec | None,
                 schema: dict[str, Any] | None) -> None:
        built = embedder.build()
        if built.identity != identity:  # before anything is written
            raise SchemaMismatchError(
                f"the workers built embedder {built.identity!r} from {embedder.target!r}, but the "
                f"index uses {identity!r}"
            )
        if isinstance(built, LoadableEmbedder):
            built.load()  # one model load per actor, before its first batch
        self.embedder = pixel_embedder(built)
        self.store = None if store is None else store.build()
        self.schema = None if schema is None else Schema.from_dict(schema)
        self.bound = False

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        n = len(batch["chunk"])
        todo = [i for i in range(n) if batch["ready"][i]]
        vectors = np.zeros((n, self.embedder.dim), dtype=np.float32)
        if todo:
            got = self.embedder.embed_pixels([batch["pixels"][i] for i in todo])
            vectors[todo] = check_vectors(got, len(todo), self.embedder)
        embedded = np.zeros(n, dtype=bool)
        embedded[todo] = True
        written = np.zeros(n, dtype=bool)
        if self.store is not None:
            direct = [i for i in todo if str(batch["meta"][i])]
            records = []
            for i in direct:
                meta = json.loads(str(batch["meta"][i]))
                if str(batch["sha256"][i]):  # else hashed on the driver, and in meta already
                    meta[HASH_FIELD] = str(batch["sha256"][i])
                records.append(Record(str(batch["id"][i]), vectors[i].copy(), meta))
            if records:
                if not self.bound and self.schema is not None:
                    self.store.create_schema(self.schema)  # idempotent; refuses another model's
                    self.bound = True
                self.store.upsert(records)
                written[direct] = True
                vectors[direct] = 0.0  # nothing to send back
        return {"chunk": batch["chunk"], "place": batch["place"], "sha256": batch["sha256"],
                "error": batch["error"], "vector": vectors, "embedded": embedded, "written": written}


# -- sources a cluster reads -------------------------------------------------------------------
def _filesystem(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem and path of ``uri`` (``s3://``, ``gs://``, ``file://``, ``hdfs://``),
    through fsspec for schemes pyarrow lacks."""
    fs = optional_import("pyarrow.fs", extra="ray", feature=f"reading {uri}", package="pyarrow")
    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        return filesystem, str(path)
    except Exception as exc:  # an unknown scheme: fsspec may know it
        try:
            import fsspec  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigurationError(f"cannot open {quote_name(uri)}: {exc}") from None
        protocol, _, rest = uri.partition("://")
        try:
            handler = fs.PyFileSystem(fs.FSSpecHandler(fsspec.filesystem(protocol)))
        except Exception as inner:
            raise ConfigurationError(f"cannot open {quote_name(uri)}: {inner}") from None
        return handler, rest


def read_uri(uri: str) -> bytes:
    """The bytes of the file a URL names (on a worker), or :class:`ImageLoadError`."""
    try:
        filesystem, path = _filesystem(uri)
        with filesystem.open_input_stream(path) as stream:
            return bytes(stream.read())
    except (ImageSearchError, FileNotFoundError) as exc:
        reason = "file not found" if isinstance(exc, FileNotFoundError) else str(exc)
        raise ImageLoadError(uri, reason) from None
    except OSError as exc:
        raise ImageLoadError(uri, f"cannot read ({exc.strerror or exc})") from None


def from_uri(uri: str, *, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> Source[str]:
    """Image files under a URL (``s3://bucket/photos/``, ``gs://...``, ``file:///data/photos``),
    sorted, as URLs that ``add_many(..., engine="ray")`` reads on its workers through
    ``pyarrow.fs`` (fsspec for other schemes). Credentials come from the usual places of
    each filesystem (``AWS_*`` variables, instance roles, ``GOOGLE_APPLICATION_CREDENTIALS``).
    Ids derive from the URL, which is the records' ``path``.

    Raises:
        ConfigurationError: the URL names nothing.
    """
    if not looks_like_url(uri):
        raise ConfigurationError(f"{quote_name(uri)} is not a URL (SCHEME://...)")
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    scheme = uri.split("://", 1)[0]

    def listing() -> Iterator[str | Failure]:
        fs = optional_import("pyarrow.fs", extra="ray", feature=f"listing {uri}", package="pyarrow")
        filesystem, path = _filesystem(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.NotFound:
            raise ConfigurationError(f"{quote_name(uri)} does not exist")
        if info.type == fs.FileType.File:
            yield uri
            return
        try:
            found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
        except OSError as exc:
            yield Failure(uri, f"cannot list folder: {exc}")
            return
        names = sorted(f.path for f in found if f.type == fs.FileType.File
                       and os.path.splitext(f.path)[1].lower() in exts
                       and not any(part.startswith(".") for part in f.path.split("/")))
        for name in names:
            yield f"{scheme}://{name}" if scheme != "file" else f"file://{name}"

    return Source(f"from_uri({uri!r})", listing, empty_message=f"no images found under {quote_name(uri)}")
