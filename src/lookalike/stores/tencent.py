"""TencentVectorStore: Tencent Cloud VectorDB through its official SDK ``tcvectordb``.

This is the only module that imports ``tcvectordb``, and it does so only when a store is
built, so ``import lookalike.stores`` stays light. Every SDK / ``requests`` exception is
translated into :mod:`lookalike.errors` at one boundary (``TencentVectorStore._translate``,
applying the table in :mod:`._tencent_errors`),
with the API key scrubbed from every message.

How records are kept (one document per record):

- ``id``: the record id (string primary key); ``vector``: the float32 vector (HNSW, COSINE);
- one string filter index per declared schema field (``path``, ``label``, ...) holding a
  *filter token* of the value (see :func:`filter_token`): strings as they are, other types
  and strings with quotes, backslashes or control characters in a tagged form, so that a
  filter never needs escaping and ``1``, ``True`` and ``"1"`` stay distinct, as in every store;
- ``lookalike_meta``: the whole metadata as JSON, so ``str``/``int``/``float``/``bool`` values
  come back exactly as they were written.

The collection ``description`` holds the :class:`~lookalike.Schema` as JSON (dim, embedder
identity, metric, fields), so a store made by another embedder is refused.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import numpy as np
from numpy.typing import NDArray

from .._checks import optional_import
from ..errors import (
    ConfigurationError,
    ImageSearchError,
    SchemaMismatchError,
    StoreError,
)
from ..filters import normalize_filter
from ..types import Filter, Hit, Record, Schema
from ._common import check_same_schema, check_search_args, require_schema, validate_records
from ._tencent_documents import (
    META_FIELD,
    document_metadata,
    document_record,
    filter_expression,
    filter_token,
    wire_vectors,
)
from ._tencent_errors import (
    BACKEND,
    KEY_ENV,
    NOT_EXIST,
    Failure,
    describe,
    is_transient,
    leaks,
    scrub,
    translate,
)

__all__ = [
    "KEY_ENV",
    "MAX_IDS_PER_REQUEST",
    "MAX_UPSERT_BATCH",
    "MAX_VECTORS_PER_SEARCH",
    "META_FIELD",
    "TencentVectorStore",
    "filter_expression",
    "filter_token",
]

logger = logging.getLogger(__name__)

URL_ENV = "TENCENT_VECTORDB_URL"
USERNAME_ENV = "TENCENT_VECTORDB_USERNAME"

#: Service limits (documented by Tencent; the loopback test server enforces them).
MAX_UPSERT_BATCH = 1000
MAX_VECTORS_PER_SEARCH = 20
MAX_IDS_PER_REQUEST = 20
_MAX_EF = 32768
_SCAN_PAGE = 1000

_DESCRIPTION_KEY = "lookalike"
_DESCRIPTION_VERSION = 1

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}\Z")
_CONSISTENCY = {"eventual": "EVENTUAL_CONSISTENCY", "strong": "STRONG_CONSISTENCY"}
_BACKEND = BACKEND

T = TypeVar("T")


class _Secret:
    """Holds the API key; its repr and str never show it, and it cannot be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the Tencent VectorDB API key cannot be pickled")


class TencentVectorStore:
    """A store in a Tencent Cloud VectorDB collection (HTTP API via ``tcvectordb``).

    Args:
        url: the instance's address with scheme and port, e.g. ``"https://vdb.example:443"``
            or ``"http://10.0.0.5:80"``; default ``$TENCENT_VECTORDB_URL``.
        username: the account, default ``$TENCENT_VECTORDB_USERNAME`` or ``"root"``.
        key: the API key, default ``$TENCENT_VECTORDB_KEY``. It never appears in a repr, a
            log line or an exception message.
        database, collection: names (letters, digits, ``_``, ``-``; starting with a letter).
        shards, replicas: used when the collection is created (HNSW holds a few million
            documents per shard well; replicas must be 0 on a single-node instance).
        read_consistency: ``"eventual"`` (default, faster) or ``"strong"`` (reads see every
            acknowledged write).
        timeout: seconds per HTTP request.
        ef: HNSW search breadth (at least ``k`` is used); higher is more exact and slower.
        hnsw_m, ef_construction: HNSW build parameters (the tutorial's 16 and 200).
        batch_size: documents per upsert request (at most 1,000, the service's limit).
        retries, backoff, max_backoff: transient failures (connection errors, timeouts,
            HTTP 429/5xx) are retried up to ``retries`` times, waiting ``backoff * 2**n``
            seconds (capped at ``max_backoff``, with jitter) before retry ``n + 1``.
        ca_cert: a CA bundle to verify an HTTPS certificate with (tcvectordb >= 2.1);
            without it the SDK does not verify certificates.

    >>> store = TencentVectorStore("https://vdb.example:443", database="photos",
    ...                            collection="gallery")  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str | None = None,
        username: str | None = None,
        key: str | None = None,
        *,
        database: str = "lookalike",
        collection: str = "images",
        shards: int = 1,
        replicas: int = 0,
        read_consistency: str = "eventual",
        timeout: float = 10.0,
        ef: int = 64,
        hnsw_m: int = 16,
        ef_construction: int = 200,
        batch_size: int = MAX_UPSERT_BATCH,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        ca_cert: str | os.PathLike[str] | None = None,
        pool_size: int = 10,
    ) -> None:
        self._sdk = _import_sdk()
        self.url = _check_url(url if url is not None else os.environ.get(URL_ENV, ""))
        self.username = username or os.environ.get(USERNAME_ENV) or "root"
        secret = key if key is not None else os.environ.get(KEY_ENV, "")
        if not secret:
            raise ConfigurationError(
                f"TencentVectorStore at {self.url} needs an API key: pass key=... or set "
                f"{KEY_ENV} (the key is on the instance's page in the Tencent Cloud console)"
            )
        self._key = _Secret(secret)
        for what, name in (("database", database), ("collection", collection)):
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ConfigurationError(
                    f"invalid {what} name {name!r}: use 1-128 letters, digits, '_' or '-', "
                    "starting with a letter"
                )
        self.database = database
        self.collection = collection
        if read_consistency not in _CONSISTENCY:
            raise ConfigurationError(
                f"read_consistency must be 'eventual' or 'strong', got {read_consistency!r}"
            )
        self.read_consistency = read_consistency
        _check_int("shards", shards, 1)
        _check_int("replicas", replicas, 0)
        _check_int("ef", ef, 1, _MAX_EF)
        _check_int("hnsw_m", hnsw_m, 1)
        _check_int("ef_construction", ef_construction, 1)
        _check_int("batch_size", batch_size, 1, MAX_UPSERT_BATCH)
        _check_int("retries", retries, 0)
        _check_int("pool_size", pool_size, 1)
        if not timeout > 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        if backoff < 0 or max_backoff < 0:
            raise ConfigurationError("backoff and max_backoff must be >= 0 seconds")
        self.shards, self.replicas = shards, replicas
        self.timeout = float(timeout)
        self.ef, self.hnsw_m, self.ef_construction = ef, hnsw_m, ef_construction
        self.batch_size = batch_size
        self.retries, self.backoff, self.max_backoff = retries, float(backoff), float(max_backoff)
        self._schema: Schema | None = None
        self._client: Any = None
        self._client = self._connect(ca_cert, pool_size)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> TencentVectorStore:
        """The store a ``tencent://[USER@]HOST:PORT/DATABASE/COLLECTION`` URL names
        (``tencents://`` for HTTPS); the key comes from ``options`` or ``TENCENT_VECTORDB_KEY``,
        never from the URL."""
        parts = urlsplit(url)
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if parts.scheme not in ("tencent", "tencents") or not parts.hostname or len(segments) != 2:
            raise ConfigurationError(
                "Tencent store URL must look like tencent://HOST:PORT/DATABASE/COLLECTION"
            )
        if parts.password:
            raise ConfigurationError(
                f"do not put the API key in the store URL; set {KEY_ENV} instead"
            )
        scheme = "https" if parts.scheme == "tencents" else "http"
        port = f":{parts.port}" if parts.port else ""
        kwargs: dict[str, Any] = {"database": segments[0], "collection": segments[1]}
        if parts.username:
            kwargs["username"] = unquote(parts.username)
        kwargs.update(options)
        return cls(f"{scheme}://{parts.hostname}{port}", **kwargs)

    def __repr__(self) -> str:
        return (
            f"TencentVectorStore({self.url!r}, database={self.database!r}, "
            f"collection={self.collection!r}, username={self.username!r})"
        )

    @property
    def _where(self) -> str:
        return f"Tencent VectorDB {self.url} {self.database}/{self.collection}"

    def _connect(self, ca_cert: str | os.PathLike[str] | None, pool_size: int) -> Any:
        from tcvectordb.model.enum import ReadConsistency

        options: dict[str, Any] = {
            "url": self.url,
            "username": self.username,
            "key": self._key.reveal(),
            "read_consistency": getattr(ReadConsistency, _CONSISTENCY[self.read_consistency]),
            "timeout": self.timeout,
            "pool_size": pool_size,
        }
        if ca_cert is not None:
            tls = getattr(self._sdk, "TLSConfig", None)
            if tls is None:
                raise ConfigurationError(
                    "ca_cert= needs tcvectordb >= 2.1: pip install -U 'tcvectordb>=2.1'"
                )
            options["tls_config"] = tls(ca_cert_path=os.fspath(ca_cert))
        with self._translate("connect"):
            return self._sdk.VectorDBClient(**options)

    # -- the one error boundary ------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return scrub(text, self._key.reveal())

    @contextlib.contextmanager
    def _translate(self, action: str, attempts: int = 1) -> Iterator[None]:
        """The boundary: any exception raised inside leaves as a :mod:`lookalike.errors` one,
        chosen by the table in :mod:`._tencent_errors`, with the key scrubbed."""
        try:
            yield
        except ImageSearchError:
            raise
        except Exception as exc:
            code = getattr(exc, "code", None)
            failure = Failure(
                where=self._where,
                action=action,
                detail=self._scrub(describe(exc)),
                tries=f" after {attempts} attempts" if attempts > 1 else "",
                code=code if isinstance(code, int) else None,
                timeout=self.timeout,
                username=self.username,
            )
            error = translate(self._sdk, exc, failure)
            if getattr(error, "code", None) in NOT_EXIST:
                self._schema = None  # dropped behind our back: create_schema() recreates it
            if leaks(exc, self._key.reveal()):
                raise error from None
            raise error from exc

    def _call(self, action: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)``, retrying transient failures; translate whatever escapes."""
        client = self._client
        if client is None:
            raise StoreError(f"{self._where}: the store is closed", backend=_BACKEND)
        for attempt in itertools.count():
            try:
                return fn(client)
            except ImageSearchError:
                raise
            except Exception as exc:
                if attempt < self.retries and is_transient(self._sdk, exc):
                    delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(
                        0.5, 1.0
                    )
                    logger.warning(
                        "%s: %s failed (%s); retry %d of %d in %.2fs",
                        self._where,
                        action,
                        self._scrub(describe(exc))[:200],
                        attempt + 1,
                        self.retries,
                        delay,
                    )
                    time.sleep(delay)
                    continue
                with self._translate(action, attempt + 1):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _op(self, action: str, method: str, **kwargs: Any) -> Any:
        """``client.<method>(database, collection, **kwargs)`` through :meth:`_call`."""
        return self._call(
            action, lambda c: getattr(c, method)(self.database, self.collection, **kwargs)
        )

    # -- schema ----------------------------------------------------------------------------
    def _index(self, schema: Schema) -> Any:
        from tcvectordb.model.enum import FieldType, IndexType, MetricType
        from tcvectordb.model.index import FilterIndex, HNSWParams, Index, VectorIndex

        index = Index()
        index.add(FilterIndex("id", FieldType.String, IndexType.PRIMARY_KEY))
        index.add(
            VectorIndex(
                "vector",
                schema.dim,
                IndexType.HNSW,
                MetricType.COSINE,
                HNSWParams(m=self.hnsw_m, efconstruction=self.ef_construction),
            )
        )
        for name in schema.fields:
            index.add(FilterIndex(name, FieldType.String, IndexType.FILTER))
        return index

    def create_schema(self, schema: Schema) -> None:
        """Create the database and collection if missing; refuse one with another schema."""
        if META_FIELD in schema.fields:
            raise ConfigurationError(f"field name {META_FIELD!r} is reserved by TencentVectorStore")
        existing = self.describe()
        if existing is not None:
            check_same_schema(existing, schema, self._where)
            return
        sdk_errors = self._sdk.exceptions
        description = json.dumps(
            {_DESCRIPTION_KEY: _DESCRIPTION_VERSION, "schema": schema.to_dict()},
            separators=(",", ":"),
        )

        def create_database(client: Any) -> None:
            try:
                client.create_database_if_not_exists(self.database)
            except sdk_errors.ServerInternalError as exc:
                if "exist" not in str(exc.message).lower():  # created meanwhile: fine
                    raise

        def create_collection(client: Any) -> bool:
            try:
                client.create_collection(
                    self.database,
                    self.collection,
                    shard=self.shards,
                    replicas=self.replicas,
                    description=description,
                    index=self._index(schema),
                )
                return True
            except sdk_errors.ServerInternalError as exc:
                if "already exist" in str(exc.message).lower():  # a retry or another process
                    return False
                raise

        self._call("create database", create_database)
        if self._call("create collection", create_collection):
            self._schema = schema
            return
        existing = self.describe()
        if existing is None:
            raise StoreError(
                f"{self._where}: the collection could not be created", backend=_BACKEND
            )
        check_same_schema(existing, schema, self._where)

    def describe(self) -> Schema | None:
        """The schema stored in the collection's description; ``None`` if it does not exist."""
        if self._schema is not None:
            return self._schema
        sdk_errors = self._sdk.exceptions

        def read(client: Any) -> Any:
            try:
                return client.describe_collection(self.database, self.collection)
            except sdk_errors.ServerInternalError as exc:
                if exc.code in NOT_EXIST:
                    return None
                raise

        collection = self._call("describe collection", read)
        if collection is None:
            return None
        self._schema = self._schema_of(collection)
        return self._schema

    def _schema_of(self, collection: Any) -> Schema:
        where = self._where
        try:
            stored = json.loads(collection.description or "")
            schema = Schema.from_dict(stored["schema"])
            if stored.get(_DESCRIPTION_KEY) != _DESCRIPTION_VERSION:
                raise ValueError(f"unknown format {stored.get(_DESCRIPTION_KEY)!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise SchemaMismatchError(
                f"{where} exists but was not created by lookalike (its description holds no "
                f"lookalike schema: {exc}). Use another collection name; to reuse its data, "
                "re-index the images into a new collection."
            ) from None
        indexes = dict(collection.index.indexes)
        vector = indexes.get("vector")
        dim = getattr(vector, "dimension", None)
        metric = getattr(getattr(vector, "metric_type", None), "value", None)
        problems = []
        if dim != schema.dim:
            problems.append(f"its vector index has dimension {dim}, the schema says {schema.dim}")
        if metric != "COSINE":
            problems.append(f"its vector index uses metric {metric}, lookalike needs COSINE")
        missing = [f for f in schema.fields if f not in indexes]
        if missing:
            problems.append(f"filter indexes {missing} are missing")
        if problems:
            raise SchemaMismatchError(
                f"{where} does not match its lookalike schema: {'; '.join(problems)}. "
                "Use another collection name."
            )
        return schema

    def _require_schema(self) -> Schema:
        return require_schema(self.describe(), self._where)

    # -- documents -------------------------------------------------------------------------
    def _document(self, record: Record, vector: list[float], schema: Schema) -> dict[str, Any]:
        try:
            meta = json.dumps(dict(record.metadata), ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise ConfigurationError(
                f"record {record.id!r}: metadata contains NaN or infinity, which cannot be stored"
            ) from None
        doc: dict[str, Any] = {"id": record.id, "vector": vector, META_FIELD: meta}
        for name in schema.fields:
            if name in record.metadata:
                doc[name] = filter_token(record.metadata[name])
        return doc

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records by id, in requests of at most ``batch_size`` documents.

        Each request is atomic on the service; a failure after retries raises, and the
        batches acknowledged before it stay stored (upserting again is safe: ids replace).
        """
        schema = self._require_schema()
        matrix = validate_records(records, schema)
        if not records:
            return
        docs = [self._document(r, [], schema) for r in records]  # validates metadata first
        for start in range(0, len(records), self.batch_size):
            stop = start + self.batch_size
            for doc, vector in zip(docs[start:stop], wire_vectors(matrix[start:stop])):
                doc["vector"] = vector
            batch = docs[start:stop]
            self._op("upsert", "upsert", documents=batch)
            for doc in batch:
                doc["vector"] = []  # free the floats early

    def search(
        self, vectors: NDArray[np.float32], k: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """Up to ``k`` hits per query vector, best first; at most 20 vectors per request."""
        schema = self._require_schema()
        queries = check_search_args(vectors, k, schema)
        expression = filter_expression(normalize_filter(filter, schema.fields))
        from tcvectordb.model.document import HNSWSearchParams

        params = HNSWSearchParams(ef=min(_MAX_EF, max(self.ef, int(k))))
        results: list[list[Hit]] = []
        for start in range(0, queries.shape[0], MAX_VECTORS_PER_SEARCH):
            chunk = wire_vectors(queries[start : start + MAX_VECTORS_PER_SEARCH])
            answer = self._op(
                "search",
                "search",
                vectors=chunk,
                filter=expression or None,
                params=params,
                retrieve_vector=False,
                limit=int(k),
                output_fields=["id", META_FIELD],
            )
            answer = list(answer or [])
            if len(answer) != len(chunk):
                raise StoreError(
                    f"{self._where}: search answered {len(answer)} result lists for "
                    f"{len(chunk)} query vectors",
                    backend=_BACKEND,
                )
            for hits in answer:
                results.append(
                    [Hit.from_metadata(str(h["id"]), float(h["score"]), document_metadata(h)) for h in hits]
                )
        return results

    def get(self, ids: Sequence[str]) -> list[Record]:
        """The records that exist, in the order asked (20 ids per request)."""
        self._require_schema()
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Record] = {}
        for start in range(0, len(wanted), MAX_IDS_PER_REQUEST):
            chunk = wanted[start : start + MAX_IDS_PER_REQUEST]
            docs = self._op(
                "get", "query", document_ids=chunk, retrieve_vector=True, limit=len(chunk)
            )
            for doc in docs or []:
                record = document_record(doc)
                found[record.id] = record
        return [found[i] for i in wanted if i in found]

    def delete(self, ids: Sequence[str]) -> int:
        """Remove the records with these ids; return how many existed.

        The count comes from a lookup before each delete request, so it stays right when a
        delete request is retried after a timeout.
        """
        self._require_schema()
        wanted = list(dict.fromkeys(ids))
        removed = 0
        for start in range(0, len(wanted), MAX_IDS_PER_REQUEST):
            chunk = wanted[start : start + MAX_IDS_PER_REQUEST]
            docs = self._op(
                "delete (lookup)",
                "query",
                document_ids=chunk,
                output_fields=["id"],
                limit=len(chunk),
            )
            present = [str(d["id"]) for d in docs or [] if d.get("id") in chunk]
            if present:
                self._op("delete", "delete", document_ids=present)
                removed += len(present)
        return removed

    def scan(self, batch_size: int = 1000) -> Iterator[list[Record]]:
        """Every record once, in pages of ``min(batch_size, 1000)`` (query with offset).

        Records upserted or deleted while scanning may or may not be seen; an id is never
        yielded twice.
        """
        self._require_schema()
        _check_int("batch_size", batch_size, 1)
        page = min(batch_size, _SCAN_PAGE)
        seen: set[str] = set()
        offset = 0
        while True:
            docs = self._op("scan", "query", retrieve_vector=True, limit=page, offset=offset)
            docs = list(docs or [])
            batch = []
            for doc in docs:
                record = document_record(doc)
                if record.id not in seen:
                    seen.add(record.id)
                    batch.append(record)
            if batch:
                yield batch
            if len(docs) < page:
                return
            offset += len(docs)

    def count(self) -> int:
        """Number of documents (0 before the collection exists)."""
        if self.describe() is None:
            return 0
        return int(self._op("count", "count"))

    def close(self) -> None:
        """Close the HTTP session; idempotent."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> TencentVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers ---------------------------------------------------------------------------------
def _import_sdk() -> Any:
    sdk = optional_import("tcvectordb", extra="tencent", feature="TencentVectorStore")
    optional_import("tcvectordb.exceptions", extra="tencent", feature="TencentVectorStore", package="tcvectordb")
    return sdk


def _check_url(url: str) -> str:
    url = (url or "").strip().rstrip("/")
    if not url:
        raise ConfigurationError(
            "TencentVectorStore needs the instance URL, e.g. 'https://HOST:PORT': pass url=... "
            f"or set {URL_ENV}"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"Tencent VectorDB URL must look like https://HOST:PORT or http://HOST:PORT, got {url!r}"
        )
    if parts.username or parts.password:
        raise ConfigurationError(
            f"do not put credentials in the Tencent VectorDB URL; pass key= or set {KEY_ENV}"
        )
    if parts.path or parts.query or parts.fragment:
        raise ConfigurationError(
            f"Tencent VectorDB URL must have no path ({parts.path!r}); pass database= and collection="
        )
    return url


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high and value > high)
    ):
        bounds = f"between {low} and {high}" if high else f">= {low}"
        raise ConfigurationError(f"{name} must be an integer {bounds}, got {value!r}")
