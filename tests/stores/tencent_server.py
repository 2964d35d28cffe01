"""A loopback HTTP server speaking Tencent Cloud VectorDB's wire protocol, for tests.

It serves the endpoints ``TencentVectorStore`` uses through the real ``tcvectordb``
``VectorDBClient`` (``/database/*``, ``/collection/*``, ``/document/*``), following
``shared/docs/tencent-vectordb-api.md``:

- framing: success is HTTP 200 ``{"code": 0, "msg": "Operation success", ...}``; errors are
  HTTP 400 ``{"code": N, "msg": "..."}``. Codes: 15302 collection not exist (real), 15301
  database not exist (Go SDK constant), 15000 syntax/parameter error (Go SDK constant). The
  real "already exists" codes are unknown; we answer 15102 (database) and 15202 (collection)
  with the messages ``"Database already exist: x"`` / ``"Collection already exist: x"``.
- authorization: ``Authorization: Bearer account=<user>&api_key=<key>`` is checked; the real
  failure answer is unknown, so we answer like an HTTP gateway: 401 with a plain-text body.
- limits are enforced: at most 1,000 documents per upsert, 20 vectors per search, 20
  ``documentIds`` per query/delete (HTTP 400, code 15000), so a batching bug fails a test.
- search is exact (brute-force cosine, float32 storage), best first, scores rounded to 5
  decimals, filter applied before top-k, ``outputFields`` trimming (``id`` only when asked,
  as the real server does), ``indexes`` in a shuffled order in describe answers.
- the filter language subset: ``f = "v"``, ``f != "v"``, ``f in ("a", "b")``, ``f not in (...)``,
  ``and``, ``or``, ``not``, parentheses, on filter-indexed fields only. String literals have
  no escapes (the first ``"`` ends them), like a naive server, so an unescaped quote in a
  value shows up as a syntax error or as a different filter.
- an upsert of an existing id deletes and re-inserts it (it moves to the end of the order).

Faults on request (:meth:`FakeTencentServer.set_faults`, :meth:`FakeTencentServer.fail_next`):
``"5xx"`` (HTTP 502/503/504, plain-text body, like a gateway), ``"timeout"`` (the answer comes
after ``timeout_delay`` seconds), ``"drop"`` (the connection is closed without an answer) and
``"slow"`` (the answer comes after ``slow_delay`` seconds). For the first three the operation
is applied before failing half of the time, so the client cannot know whether it happened.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

FAULT_KINDS = ("5xx", "timeout", "drop", "slow")
MAX_UPSERT = 1000
MAX_SEARCH_VECTORS = 20
MAX_IDS = 20
_VECTOR_TYPES = {"vector"}
_SCALAR_TYPES = {"string", "uint64", "double", "int64", "array", "json"}
_VECTOR_INDEXES = {"FLAT", "HNSW", "IVF_FLAT", "IVF_PQ", "IVF_SQ4", "IVF_SQ8", "IVF_SQ16", "DISK_FLAT"}
_METRICS = {"L2", "IP", "COSINE"}


class ApiError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


@dataclass
class _Collection:
    name: str
    database: str
    shards: int
    replicas: int
    description: str
    indexes: list[dict[str, Any]]
    dim: int
    metric: str
    filter_fields: dict[str, str]  # name -> fieldType (includes the primary key "id")
    created: str
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> doc (vector: float32)


@dataclass
class _Faults:
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    timeout_delay: float = 1.0
    slow_delay: float = 0.05
    paths: frozenset[str] | None = None


class FakeTencentServer:
    """The fake service on ``127.0.0.1:<free port>``; use as a context manager or start()/stop()."""

    def __init__(self, username: str = "root", key: str = "test-key", seed: int = 0) -> None:
        self.username, self.key = username, key
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self.databases: dict[str, dict[str, _Collection]] = {}
        self.db_created: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []
        self.injected: list[tuple[str, str, bool]] = []  # (path, kind, applied)
        self._faults = _Faults()
        self._queued: list[tuple[str, str | None, bool | None]] = []  # (kind, path, apply)
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on keep-alive

            def do_GET(self) -> None:
                app._handle(self, "GET")

            def do_POST(self) -> None:
                app._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that gave up (timeouts) break the pipe: expected

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeTencentServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeTencentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls -------------------------------------------------------------------------
    def set_faults(
        self,
        rate: float,
        kinds: tuple[str, ...] = FAULT_KINDS,
        *,
        timeout_delay: float = 1.0,
        slow_delay: float = 0.05,
        paths: tuple[str, ...] | None = None,
        seed: int | None = None,
    ) -> None:
        """Inject a fault into a fraction ``rate`` of requests (to ``paths`` only, if given)."""
        assert set(kinds) <= set(FAULT_KINDS), kinds
        with self._lock:
            self._faults = _Faults(rate, tuple(kinds), timeout_delay, slow_delay,
                                   None if paths is None else frozenset(paths))
            if seed is not None:
                self._rng = random.Random(seed)

    def fail_next(self, kind: str, n: int = 1, path: str | None = None, *, apply: bool | None = None) -> None:
        """Make the next ``n`` requests (to ``path``, if given) fail with ``kind``.

        ``apply``: whether the operation takes effect before the failure (default: at random).
        """
        assert kind in FAULT_KINDS, kind
        with self._lock:
            self._queued.extend([(kind, path, apply)] * n)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults = _Faults()
            self._queued.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()
            self.injected.clear()

    def documents(self, database: str, collection: str) -> dict[str, dict[str, Any]]:
        """A copy of the stored documents (vectors as float32 arrays)."""
        with self._lock:
            return {k: dict(v) for k, v in self.databases[database][collection].docs.items()}

    def collection_info(self, database: str, collection: str) -> dict[str, Any]:
        with self._lock:
            return self._item(self.databases[database][collection])

    # -- HTTP --------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        path = req.path.split("?", 1)[0]
        with self._lock:
            self.counts[path] += 1
            self.log.append((method, path))
            fault, forced = self._pick_fault(path)
        expected = f"Bearer account={self.username}&api_key={self.key}"
        if req.headers.get("Authorization") != expected:
            self._send(req, 401, b"Unauthorized", "text/plain")
            return
        if fault == "slow":
            with self._lock:
                self.injected.append((path, fault, True))
            time.sleep(self._faults.slow_delay)
            fault = None
        with self._lock:
            apply = fault is None or (self._rng.random() < 0.5 if forced is None else forced)
            if fault is not None:
                self.injected.append((path, fault, apply))
        status, payload = 200, b""
        if apply:
            status, payload = self._dispatch(method, path, raw)
        if fault == "drop":
            req.close_connection = True
            return
        if fault == "5xx":
            code = self._rng.choice([502, 503, 504])
            req.close_connection = True
            self._send(req, code, b"upstream unavailable", "text/plain")
            return
        if fault == "timeout":
            time.sleep(self._faults.timeout_delay)
            req.close_connection = True
            try:
                self._send(req, 504, b"gateway timeout", "text/plain")
            except OSError:
                pass
            return
        self._send(req, status, payload, "application/json")

    def _pick_fault(self, path: str) -> tuple[str | None, bool | None]:
        for i, (kind, only, apply) in enumerate(self._queued):
            if only is None or only == path:
                del self._queued[i]
                return kind, apply
        f = self._faults
        if f.rate > 0 and (f.paths is None or path in f.paths) and self._rng.random() < f.rate:
            return self._rng.choice(f.kinds), None
        return None, None

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str) -> None:
        req.send_response(status)
        if req.close_connection:  # say so, as a gateway does; a silent close races keep-alive reuse
            req.send_header("Connection", "close")
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)
        req.wfile.flush()

    def _dispatch(self, method: str, path: str, raw: bytes) -> tuple[int, bytes]:
        route = _ROUTES.get((method, path))
        if route is None:
            return 404, json.dumps({"code": 404, "msg": f"no such API: {method} {path}"}).encode()
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ApiError(15000, "request body must be a JSON object")
            with self._lock:
                result = route(self, body)
        except ApiError as exc:
            return exc.status, json.dumps({"code": exc.code, "msg": exc.msg}).encode()
        except (ValueError, TypeError, KeyError) as exc:
            return 400, json.dumps({"code": 15000, "msg": f"invalid request: {exc}"}).encode()
        answer = {"code": 0, "msg": "Operation success", "requestId": f"req-{self.counts.total()}"}
        answer.update(result)
        return 200, json.dumps(answer, ensure_ascii=False).encode()

    # -- helpers -----------------------------------------------------------------------------
    def _collection(self, body: dict[str, Any]) -> _Collection:
        db, name = body.get("database"), body.get("collection")
        if not db or db not in self.databases:
            raise ApiError(15301, f"Database not exist: {db}")
        if not name or name not in self.databases[db]:
            raise ApiError(15302, f"Collection not exist: {name}")
        return self.databases[db][name]

    def _item(self, c: _Collection) -> dict[str, Any]:
        indexes = [dict(i) for i in c.indexes]
        for i in indexes:
            if i["fieldType"] in _VECTOR_TYPES:
                i["indexedCount"] = len(c.docs)
        self._rng.shuffle(indexes)  # the real server's order is not stable
        return {
            "database": c.database, "collection": c.name, "documentCount": len(c.docs),
            "replicaNum": c.replicas, "shardNum": c.shards, "createTime": c.created,
            "description": c.description, "indexes": indexes,
            "indexStatus": {"status": "ready", "startTime": ""},
        }

    def _matching(self, c: _Collection, query: dict[str, Any]) -> list[dict[str, Any]]:
        ids = query.get("documentIds")
        if ids is not None:
            if not isinstance(ids, list) or len(ids) > MAX_IDS:
                raise ApiError(15000, f"documentIds must be a list of at most {MAX_IDS} ids")
            docs = [c.docs[i] for i in dict.fromkeys(ids) if i in c.docs]
        else:
            docs = list(c.docs.values())
        expr = query.get("filter")
        if expr:
            test = parse_filter(expr, c.filter_fields)
            docs = [d for d in docs if test(d)]
        return docs

    @staticmethod
    def _output(doc: dict[str, Any], fields: list[str] | None, vector: bool) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if k != "vector" and (fields is None or k in fields)}
        if vector:
            out["vector"] = doc["vector"].tolist()
        return out

    # -- endpoints ---------------------------------------------------------------------------
    def _db_list(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "databases": list(self.databases),
            "info": {
                name: {"createTime": self.db_created[name], "dbType": "BASE_DB", "count": len(cols)}
                for name, cols in self.databases.items()
            },
        }

    def _db_create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("database")
        _check_name(name, "database")
        if name in self.databases:
            raise ApiError(15102, f"Database already exist: {name}")
        self.databases[name] = {}
        self.db_created[name] = _now()
        return {"affectedCount": 1}

    def _db_drop(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("database")
        if name not in self.databases:
            raise ApiError(15301, f"Database not exist: {name}")
        del self.databases[name]
        return {"affectedCount": 1}

    def _col_create(self, body: dict[str, Any]) -> dict[str, Any]:
        db, name = body.get("database"), body.get("collection")
        if db not in self.databases:
            raise ApiError(15301, f"Database not exist: {db}")
        _check_name(name, "collection")
        if name in self.databases[db]:
            raise ApiError(15202, f"Collection already exist: {name}")
        shards, replicas = body.get("shardNum"), body.get("replicaNum")
        if not isinstance(shards, int) or shards < 1 or not isinstance(replicas, int) or replicas < 0:
            raise ApiError(15000, "shardNum must be >= 1 and replicaNum >= 0")
        indexes = body.get("indexes") or []
        dim, metric, fields, primary = 0, "", {}, 0
        for idx in indexes:
            ftype, itype, fname = idx.get("fieldType"), idx.get("indexType"), idx.get("fieldName")
            if not fname or fname in fields:
                raise ApiError(15000, "fieldName must exist and be unique")
            if ftype in _VECTOR_TYPES:
                if dim or itype not in _VECTOR_INDEXES or idx.get("metricType") not in _METRICS:
                    raise ApiError(15000, f"invalid vector index {idx}")
                dim, metric = int(idx["dimension"]), idx["metricType"]
                if dim < 1:
                    raise ApiError(15000, "dimension must be positive")
            elif ftype in _SCALAR_TYPES and itype in ("primaryKey", "filter"):
                fields[fname] = ftype
                primary += itype == "primaryKey"
            else:
                raise ApiError(15000, f"invalid index {idx}")
        if not dim or primary != 1 or fields.get("id") != "string":
            raise ApiError(15000, "a collection needs one vector index and the string primary key 'id'")
        self.databases[db][name] = _Collection(
            name, db, shards, replicas, body.get("description") or "", indexes, dim, metric,
            fields, _now(),
        )
        return {"affectedCount": 1}

    def _col_describe(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"collection": self._item(self._collection(body))}

    def _col_list(self, body: dict[str, Any]) -> dict[str, Any]:
        db = body.get("database")
        if db not in self.databases:
            raise ApiError(15301, f"Database not exist: {db}")
        return {"collections": [self._item(c) for c in self.databases[db].values()]}

    def _col_drop(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self._collection(body)
        del self.databases[c.database][c.name]
        return {"affectedCount": 1}

    def _col_truncate(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self._collection(body)
        n = len(c.docs)
        c.docs.clear()
        return {"affectedCount": n}

    def _doc_upsert(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self._collection(body)
        docs = body.get("documents")
        if not isinstance(docs, list) or len(docs) > MAX_UPSERT:
            raise ApiError(15000, f"documents must be a list of at most {MAX_UPSERT} documents")
        prepared = []
        for doc in docs:
            rid, vector = doc.get("id"), doc.get("vector")
            if not isinstance(rid, str) or not rid:
                raise ApiError(15000, "every document needs a non-empty string id")
            if not isinstance(vector, list) or len(vector) != c.dim or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector
            ):
                raise ApiError(15000, f"document {rid}: vector must be {c.dim} numbers")
            arr = np.asarray(vector, dtype=np.float32)
            if not np.isfinite(arr).all():
                raise ApiError(15000, f"document {rid}: vector has NaN or infinity")
            for name, ftype in c.filter_fields.items():
                if name in doc and ftype == "string" and not isinstance(doc[name], str):
                    raise ApiError(15000, f"document {rid}: field {name} must be a string")
            prepared.append({**doc, "vector": arr})
        for doc in prepared:  # all-or-nothing: validated first
            c.docs.pop(doc["id"], None)
            c.docs[doc["id"]] = doc
        return {"affectedCount": len(prepared)}

    def _doc_query(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self._collection(body)
        query = body.get("query") or {}
        docs = self._matching(c, query)
        offset, limit = int(query.get("offset") or 0), int(query.get("limit") or 10)
        docs = docs[offset : offset + limit]
        fields = query.get("outputFields")
        out = [self._output(d, fields, bool(query.get("retrieveVector"))) for d in docs]
        return {"count": len(out), "documents": out}

    def _doc_search(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self._collection(body)
        search = body.get("search") or {}
        vectors = search.get("vectors")
        if search.get("documentIds") or not isinstance(vectors, list):
            raise ApiError(15000, "this fake server supports search by vectors only")
        if len(vectors) > MAX_SEARCH_VECTORS:
            raise ApiError(15000, f"at most {MAX_SEARCH_VECTORS} vectors per search, got {len(vectors)}")
        limit = int(search.get("limit") or 10)
        ef = (search.get("params") or {}).get("ef")
        if ef is not None and not 1 <= int(ef) <= 32768:
            raise ApiError(15000, "ef must be in [1, 32768]")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != c.dim:
            raise ApiError(15000, f"query vectors must have dimension {c.dim}")
        docs = self._matching(c, {"filter": search.get("filter")})
        fields = search.get("outputFields")
        retrieve = bool(search.get("retrieveVector"))
        if not docs:
            return {"documents": [[] for _ in vectors]}
        matrix = np.stack([d["vector"] for d in docs]).astype(np.float64)
        q = queries.astype(np.float64)
        scores = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)) @ (
            q / np.linalg.norm(q, axis=1, keepdims=True)
        ).T
        results = []
        for j in range(q.shape[0]):
            order = np.argsort(-scores[:, j], kind="stable")[:limit]
            results.append([
                {**self._output(docs[i], fields, retrieve), "score": round(float(scores[i, j]), 5)}
                for i in order
            ])
        return {"documents": results}

    def _doc_delete(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self._collection(body)
        query = body.get("query") or {}
        if not query.get("documentIds") and not query.get("filter"):
            raise ApiError(15000, "delete needs documentIds or a filter")
        docs = self._matching(c, query)
        for d in docs:
            del c.docs[d["id"]]
        return {"affectedCount": len(docs)}

    def _doc_count(self, body: dict[str, Any]) -> dict[str, Any]:
        c = self._collection(body)
        return {"count": len(self._matching(c, body.get("query") or {}))}


_ROUTES: dict[tuple[str, str], Callable[[FakeTencentServer, dict[str, Any]], dict[str, Any]]] = {
    ("GET", "/database/list"): FakeTencentServer._db_list,
    ("POST", "/database/create"): FakeTencentServer._db_create,
    ("POST", "/database/drop"): FakeTencentServer._db_drop,
    ("POST", "/collection/create"): FakeTencentServer._col_create,
    ("POST", "/collection/describe"): FakeTencentServer._col_describe,
    ("POST", "/collection/list"): FakeTencentServer._col_list,
    ("POST", "/collection/drop"): FakeTencentServer._col_drop,
    ("POST", "/collection/truncate"): FakeTencentServer._col_truncate,
    ("POST", "/document/upsert"): FakeTencentServer._doc_upsert,
    ("POST", "/document/query"): FakeTencentServer._doc_query,
    ("POST", "/document/search"): FakeTencentServer._doc_search,
    ("POST", "/document/delete"): FakeTencentServer._doc_delete,
    ("POST", "/document/count"): FakeTencentServer._doc_count,
}


def _now() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,127}", name):
        raise ApiError(15000, f"invalid {what} name: {name!r}")


# -- the filter language -----------------------------------------------------------------------
_TOKEN = re.compile(
    r'\s*(?:(?P<str>"[^"]*")|(?P<num>-?\d+(?:\.\d+)?)|(?P<op>!=|=|\(|\)|,)|(?P<word>[A-Za-z_]\w*))'
)
Predicate = Callable[[dict[str, Any]], bool]


def _tokens(expr: str) -> Iterator[tuple[str, Any]]:
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ApiError(15000, f"filter syntax error at {expr[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        text = m.group(kind)  # type: ignore[arg-type]
        if kind == "str":
            yield "lit", text[1:-1]
        elif kind == "num":
            yield "lit", float(text) if "." in text else int(text)
        elif kind == "word" and text.lower() in ("and", "or", "not", "in"):
            yield text.lower(), text
        else:
            yield str(kind), text


def parse_filter(expr: str, fields: dict[str, str]) -> Predicate:
    """Compile a filter expression to a predicate over documents (ApiError 15000 if invalid)."""
    tokens = list(_tokens(expr))
    pos = 0

    def peek(*kinds: str) -> bool:
        if pos >= len(tokens):
            return False
        kind, text = tokens[pos]
        return kind in kinds or (kind == "op" and text in kinds)

    def take(*kinds: str) -> Any:
        nonlocal pos
        if not peek(*kinds):
            got = tokens[pos][1] if pos < len(tokens) else "end of filter"
            raise ApiError(15000, f"filter syntax error: expected {' or '.join(kinds)}, got {got!r}")
        pos += 1
        return tokens[pos - 1][1]

    def disjunction() -> Predicate:
        parts = [conjunction()]
        while peek("or"):
            take("or")
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else (lambda d: any(p(d) for p in parts))

    def conjunction() -> Predicate:
        parts = [factor()]
        while peek("and"):
            take("and")
            parts.append(factor())
        return parts[0] if len(parts) == 1 else (lambda d: all(p(d) for p in parts))

    def factor() -> Predicate:
        if peek("not"):
            take("not")
            inner = factor()
            return lambda d: not inner(d)
        if peek("("):
            take("(")
            inner = disjunction()
            take(")")
            return inner
        name = take("word")
        if name not in fields:
            raise ApiError(15000, f"field {name!r} has no filter index")
        if peek("=", "!="):
            op = take("=", "!=")
            value = take("lit")
            if op == "=":
                return lambda d: name in d and d[name] == value
            return lambda d: name not in d or d[name] != value
        negate = False
        if peek("not"):
            take("not")
            negate = True
        take("in")
        take("(")
        values = [take("lit")]
        while peek(","):
            take(",")
            values.append(take("lit"))
        take(")")
        allowed = set(values)
        if negate:
            return lambda d: name not in d or d[name] not in allowed
        return lambda d: name in d and d[name] in allowed

    predicate = disjunction()
    if pos != len(tokens):
        raise ApiError(15000, f"filter syntax error near {tokens[pos][1]!r}")
    return predicate
