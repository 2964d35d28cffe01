"""TencentVectorStore against the loopback wire server (``tencent_server.py``), through the
real ``tcvectordb.VectorDBClient``: limits, request counts, faults, errors, filters, keys.

The shared contract and congruence suites also run against this store (``conftest.py``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import pickle
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lookalike import (
    ConfigurationError,
    ImageSearchError,
    ImageSearchIndex,
    MissingDependencyError,
    Record,
    Schema,
    SchemaMismatchError,
    StoreConnectionError,
    StoreError,
    StoreTimeoutError,
)
from lookalike.embedders.fake import FakeEmbedder
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import TENCENT_KEY
from .tencent_server import FakeTencentServer
from .test_contract import unit_vectors

tcvectordb = pytest.importorskip("tcvectordb")

from lookalike.stores.tencent import (  # noqa: E402
    KEY_ENV,
    TencentVectorStore,
    filter_expression,
    filter_token,
    wire_vectors,
)

DIM = 16
SCHEMA = Schema(dim=DIM, identity="tencent-test:v1", fields=("path", "label"))
_names = itertools.count()


@pytest.fixture
def server(tencent_server: FakeTencentServer) -> Iterator[FakeTencentServer]:
    tencent_server.clear_faults()
    tencent_server.reset_counts()
    yield tencent_server
    tencent_server.clear_faults()


@pytest.fixture
def make_store(server: FakeTencentServer) -> Iterator[Callable[..., TencentVectorStore]]:
    made: list[TencentVectorStore] = []

    def make(**options: Any) -> TencentVectorStore:
        options.setdefault("key", TENCENT_KEY)
        options.setdefault("database", f"t{next(_names)}")
        options.setdefault("collection", "images")
        options.setdefault("timeout", 5)
        options.setdefault("backoff", 0.001)
        store = TencentVectorStore(server.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def records(n: int, dim: int = DIM, seed: int = 0, prefix: str = "r") -> list[Record]:
    vectors = unit_vectors(n, dim, seed)
    return [
        Record(f"{prefix}{i:05d}", vectors[i], {"path": f"/img/{i}.jpg", "label": f"c{i % 7}"})
        for i in range(n)
    ]


def upserts(server: FakeTencentServer) -> int:
    return server.counts["/document/upsert"]


SCHEMA_PATHS = ("/database/list", "/database/create", "/collection/create", "/collection/describe")


# -- import hygiene, dependency, constructor -----------------------------------------------------
def test_import_lookalike_does_not_import_tcvectordb() -> None:
    code = (
        "import sys, lookalike, lookalike.stores; lookalike.stores.TencentVectorStore; "
        "import lookalike.stores.tencent; print('tcvectordb' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch, server: FakeTencentServer) -> None:
    monkeypatch.setitem(sys.modules, "tcvectordb", None)
    with pytest.raises(MissingDependencyError, match=r"lookalike\[tencent\]"):
        TencentVectorStore(server.url, key=TENCENT_KEY)


def test_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, server: FakeTencentServer) -> None:
    with pytest.raises(ConfigurationError, match=KEY_ENV):
        TencentVectorStore(server.url)
    monkeypatch.setenv(KEY_ENV, TENCENT_KEY)
    monkeypatch.setenv("TENCENT_VECTORDB_URL", server.url)
    with TencentVectorStore(database="envdb") as store:
        store.create_schema(SCHEMA)
        assert store.count() == 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"database": "1bad"}, "database name"),
        ({"collection": "has space"}, "collection name"),
        ({"read_consistency": "sometimes"}, "read_consistency"),
        ({"batch_size": 1001}, "batch_size"),
        ({"ef": 0}, "ef"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_options_are_configuration_errors(server: FakeTencentServer, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        TencentVectorStore(server.url, key=TENCENT_KEY, **options)


@pytest.mark.parametrize("url", ["127.0.0.1:80", "ftp://host:1", "http://u:p@host:1", "http://host:1/db"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        TencentVectorStore(url, key=TENCENT_KEY)


# -- the key never leaks ---------------------------------------------------------------------
def test_key_not_in_repr_or_pickle(make_store: Callable[..., TencentVectorStore]) -> None:
    store = make_store()
    assert TENCENT_KEY not in repr(store) and TENCENT_KEY not in str(store)
    assert TENCENT_KEY not in repr(vars(store))
    with pytest.raises(TypeError):
        pickle.dumps(store._key)


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def test_wrong_key_is_a_configuration_error_without_the_key(server: FakeTencentServer) -> None:
    wrong = "wrong-key-4711"
    with TencentVectorStore(server.url, key=wrong, database="authdb") as store, \
            pytest.raises(ConfigurationError, match=KEY_ENV) as info:
        store.describe()
    assert wrong not in _full_text(info.value)


def test_unreachable_server_error_has_no_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = TencentVectorStore("http://127.0.0.1:9", key=TENCENT_KEY, retries=1, backoff=0.001, timeout=2)
    with pytest.raises(StoreConnectionError) as info:
        store.describe()
    text = _full_text(info.value)
    assert "127.0.0.1:9" in text and TENCENT_KEY not in text
    assert "retry 1 of 1" in caplog.text and TENCENT_KEY not in caplog.text


def test_nothing_logged_or_printed_contains_the_key(
    make_store: Callable[..., TencentVectorStore],
    server: FakeTencentServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 and tcvectordb included
    store = make_store(timeout=0.3, retries=10)
    store.create_schema(SCHEMA)
    server.set_faults(0.5, ("5xx", "drop", "timeout"), timeout_delay=0.4, seed=3)
    store.upsert(records(40))
    store.search(unit_vectors(3), 5, {"label": "c1"})
    server.clear_faults()
    assert server.injected, "faults were injected"
    assert tcvectordb.debug.DebugEnable is False  # the SDK's header-printing debug mode stays off
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, *(r.getMessage() for r in caplog.records)):
        assert TENCENT_KEY not in text
    assert "retry" in caplog.text


def _sdk_exception_classes() -> list[type[BaseException]]:
    import requests
    import urllib3

    found: dict[str, type[BaseException]] = {}
    for module in (tcvectordb.exceptions, requests.exceptions, urllib3.exceptions):
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Exception)
                and not issubclass(obj, Warning)
                and obj.__module__.split(".")[0] in ("tcvectordb", "requests", "urllib3")
            ):
                found[f"{obj.__module__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


def _instantiate(cls: type[BaseException], message: str) -> BaseException:
    for make in (
        lambda: cls(code=503, message=message),  # type: ignore[call-arg]
        lambda: cls(message),
        lambda: cls(None, message),
        lambda: cls(message, message, 0),  # JSONDecodeError
        lambda: cls(None, None, message),
        lambda: cls(),
    ):
        try:
            return make()
        except (TypeError, AttributeError):
            continue
    bare = cls.__new__(cls)  # constructors with required objects (urllib3 pools, responses)
    bare.args = (message,)
    return bare


def test_every_sdk_and_requests_exception_is_translated(make_store: Callable[..., TencentVectorStore]) -> None:
    store = make_store()
    classes = _sdk_exception_classes()
    assert len(classes) > 30
    leaky = f"boom: Authorization: Bearer account=root&api_key={TENCENT_KEY} http://h/x?api_key={TENCENT_KEY}"
    for cls in classes:
        original = _instantiate(cls, leaky)
        with pytest.raises(ImageSearchError) as info, store._translate("testing"):
            raise original
        error = info.value
        assert type(error).__module__ == "lookalike.errors", cls
        assert TENCENT_KEY not in _full_text(error), cls
        assert store._where in str(error), cls


def test_exception_mapping_is_specific(make_store: Callable[..., TencentVectorStore]) -> None:
    import requests

    store = make_store()
    exc = tcvectordb.exceptions
    cases: list[tuple[BaseException, type[ImageSearchError]]] = [
        (requests.exceptions.ReadTimeout("read timed out"), StoreTimeoutError),
        (requests.exceptions.ConnectTimeout("connect timed out"), StoreTimeoutError),
        (requests.exceptions.ConnectionError("refused"), StoreConnectionError),
        (exc.ConnectError(message="Connection aborted"), StoreConnectionError),
        (exc.ServerInternalError(code=503, message="Service Unavailable"), StoreConnectionError),
        (exc.ServerInternalError(code=500, message="Internal"), StoreError),
        (exc.ServerInternalError(code=15302, message="Collection not exist: x"), StoreError),
        (exc.ServerInternalError(code=401, message="Unauthorized"), ConfigurationError),
        (exc.ParamError(code=14100, message="bad"), ConfigurationError),
        (requests.exceptions.MissingSchema("no scheme"), ConfigurationError),
        (KeyError("documents"), StoreError),
    ]
    for original, expected in cases:
        with pytest.raises(expected) as info, store._translate("testing"):
            raise original
        assert info.value.__cause__ is original


# -- schema ----------------------------------------------------------------------------------
def test_create_schema_matches_the_tutorial_layout(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store(hnsw_m=24, ef_construction=300, shards=3, replicas=0)
    store.create_schema(SCHEMA)
    info = server.collection_info(store.database, store.collection)
    assert info["shardNum"] == 3 and info["replicaNum"] == 0
    indexes = {i["fieldName"]: i for i in info["indexes"]}
    assert indexes["vector"] == {
        "fieldName": "vector", "fieldType": "vector", "indexType": "HNSW", "dimension": DIM,
        "metricType": "COSINE", "params": {"M": 24, "efConstruction": 300}, "indexedCount": 0,
    }
    assert indexes["id"] == {"fieldName": "id", "fieldType": "string", "indexType": "primaryKey"}
    for name in ("path", "label"):
        assert indexes[name] == {"fieldName": name, "fieldType": "string", "indexType": "filter"}
    assert Schema.from_dict(json.loads(info["description"])["schema"]) == SCHEMA


def test_create_schema_is_idempotent_and_cheap(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    first = make_store()
    first.create_schema(SCHEMA)
    assert sum(server.counts[p] for p in SCHEMA_PATHS) == 4  # describe, list, create db, create
    server.reset_counts()
    again = make_store(database=first.database)
    again.create_schema(SCHEMA)
    again.create_schema(SCHEMA)
    assert again.describe() == SCHEMA
    assert dict(server.counts) == {"/collection/describe": 1}


def _raw_collection(server: FakeTencentServer, database: str, *, dim: int, metric: str, description: str | None) -> None:
    from tcvectordb.model.enum import FieldType, IndexType, MetricType
    from tcvectordb.model.index import FilterIndex, HNSWParams, Index, VectorIndex

    client = tcvectordb.VectorDBClient(server.url, "root", TENCENT_KEY)
    client.create_database(database)
    client.create_collection(
        database, "images", 1, 0, description=description,
        index=Index(
            FilterIndex("id", FieldType.String, IndexType.PRIMARY_KEY),
            VectorIndex("vector", dim, IndexType.HNSW, MetricType(metric), HNSWParams(16, 200)),
            FilterIndex("path", FieldType.String, IndexType.FILTER),
            FilterIndex("label", FieldType.String, IndexType.FILTER),
        ),
    )
    client.close()


@pytest.mark.parametrize(
    ("dim", "metric", "description", "match"),
    [
        (DIM, "COSINE", "the tutorial's collection", "not created by lookalike"),
        (DIM, "COSINE", None, "not created by lookalike"),
        (DIM * 2, "COSINE", "ours", "dimension 32"),
        (DIM, "L2", "ours", "metric L2"),
    ],
    ids=["foreign", "no-description", "dim", "metric"],
)
def test_existing_collection_with_another_layout_is_refused(
    make_store: Callable[..., TencentVectorStore], server: FakeTencentServer,
    dim: int, metric: str, description: str | None, match: str,
) -> None:
    database = f"raw{next(_names)}"
    ours = json.dumps({"lookalike": 1, "schema": SCHEMA.to_dict()})
    _raw_collection(server, database, dim=dim, metric=metric,
                    description=ours if description == "ours" else description)
    store = make_store(database=database)
    with pytest.raises(SchemaMismatchError, match=match):
        store.create_schema(SCHEMA)
    with pytest.raises(SchemaMismatchError, match=match):
        store.describe()


def test_mismatched_embedder_is_refused_through_the_facade(make_store: Callable[..., TencentVectorStore]) -> None:
    store = make_store()
    ImageSearchIndex(FakeEmbedder(dim=DIM), store).create_schema()
    other = ImageSearchIndex(FakeEmbedder(dim=DIM, seed=1), make_store(database=store.database))
    with pytest.raises(SchemaMismatchError, match="seed=1"):
        other.add(Image.new("RGB", (8, 8), (1, 2, 3)))


@pytest.mark.parametrize("path", ["/database/create", "/collection/create"])
def test_create_retried_after_it_took_effect(
    make_store: Callable[..., TencentVectorStore], server: FakeTencentServer, path: str
) -> None:
    store = make_store()
    server.fail_next("5xx", 1, path, apply=True)  # created, but the answer was lost
    store.create_schema(SCHEMA)
    if path == "/collection/create":
        assert server.counts[path] == 2  # the retry met "already exist" and accepted it
    else:
        assert server.counts["/database/list"] == 2  # the retry saw the database listed
    assert make_store(database=store.database).describe() == SCHEMA


def test_collection_dropped_behind_our_back(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store()
    store.create_schema(SCHEMA)
    del server.databases[store.database][store.collection]
    server.reset_counts()
    with pytest.raises(StoreError, match="does not exist") as info:
        store.count()
    assert info.value.code == 15302
    assert server.counts["/document/count"] == 1  # not transient: not retried
    store.create_schema(SCHEMA)  # recreates it
    assert store.count() == 0


# -- batching and request counts --------------------------------------------------------------
@pytest.mark.parametrize(("batch_size", "expected"), [(1000, 1), (300, 4), (1, 1000)])
def test_upsert_batches_and_request_count(
    make_store: Callable[..., TencentVectorStore], server: FakeTencentServer, batch_size: int, expected: int
) -> None:
    store = make_store(batch_size=batch_size)
    store.create_schema(SCHEMA)
    store.upsert(records(1000))
    assert upserts(server) == expected == math.ceil(1000 / batch_size)
    assert sum(server.counts[p] for p in SCHEMA_PATHS) == 4
    assert store.count() == 1000


def test_indexing_1000_images_through_the_facade_request_count(
    make_store: Callable[..., TencentVectorStore], server: FakeTencentServer
) -> None:
    store = make_store()
    index = ImageSearchIndex(FakeEmbedder(dim=DIM), store, batch_size=250)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(1000)]
    report = index.add_many(images)
    assert len(report.added) == 1000 and not report.failed
    counts = dict(server.counts)
    print("requests to index 1,000 images (facade batch 250):", counts)
    assert counts["/document/upsert"] == math.ceil(1000 / 250)
    # a constant: the facade's describe() checks while the collection is absent, list, 2 creates
    assert sum(counts.get(p, 0) for p in SCHEMA_PATHS) <= 6
    # a new collection is looked up only once the first batch has bound it (how many
    # batches are read ahead of that first write is up to the scheduler)
    assert counts.get("/document/query", 0) <= 4 * math.ceil(250 / 20)
    assert set(counts) <= {*SCHEMA_PATHS, "/document/upsert", "/document/query"}
    server.reset_counts()
    again = index.add_many(images)
    assert len(again.unchanged) == 1000
    assert dict(server.counts) == {"/document/query": 4 * math.ceil(250 / 20)}  # skip-unchanged lookups


def test_search_many_splits_by_20_and_keeps_order(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store()
    store.create_schema(SCHEMA)
    recs = records(60)
    store.upsert(recs)
    order = list(range(59, -1, -1)) + [5, 5, 7]
    server.reset_counts()
    results = store.search(np.stack([recs[i].vector for i in order]), 3)
    assert server.counts["/document/search"] == math.ceil(len(order) / 20) == 4
    assert [hits[0].id for hits in results] == [recs[i].id for i in order]


def test_get_and_delete_use_at_most_20_ids_per_request(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store()
    store.create_schema(SCHEMA)
    recs = records(95)
    store.upsert(recs)
    server.reset_counts()
    got = store.get([r.id for r in reversed(recs)] + ["missing"])
    assert [g.id for g in got] == [r.id for r in reversed(recs)]
    assert server.counts["/document/query"] == 5
    server.reset_counts()
    assert store.delete([r.id for r in recs[:45]] + ["nope"]) == 45
    assert server.counts["/document/delete"] == 3 and server.counts["/document/query"] == 3
    assert store.count() == 50


def test_vectors_go_out_as_exact_plain_floats(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    rng = np.random.default_rng(1)
    matrix = (rng.standard_normal((50, DIM)) * 10.0 ** rng.integers(-30, 3, (50, DIM))).astype(np.float32)
    wire = wire_vectors(matrix)
    assert all(type(x) is float for row in wire for x in row)
    assert np.array_equal(np.asarray(wire, dtype=np.float32), matrix)
    store = make_store()
    store.create_schema(SCHEMA)
    unit = unit_vectors(20, seed=4)
    store.upsert([Record(f"v{i}", v) for i, v in enumerate(unit)])
    stored = server.documents(store.database, store.collection)
    assert all(np.array_equal(stored[f"v{i}"]["vector"], unit[i]) for i in range(20))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused_before_sending(
    make_store: Callable[..., TencentVectorStore], server: FakeTencentServer, bad: float
) -> None:
    store = make_store()
    store.create_schema(SCHEMA)
    recs = records(3)
    vector = recs[2].vector.copy()
    vector[0] = bad
    with pytest.raises(ConfigurationError, match="NaN or infinity"):
        store.upsert([*recs[:2], Record("bad", vector)])
    with pytest.raises(ConfigurationError, match="NaN"):
        store.upsert([Record("meta", recs[0].vector, {"score_": float("nan")})])
    assert upserts(server) == 0


# -- filters ---------------------------------------------------------------------------------
INJECTIONS = [
    'x" or path != "',
    '") or (path != "',
    'a\\" or path != \\"b',
    "#n:1",
    "##",
    "tab\tnew\nline",
    "日本語/ü.jpg",
]


def test_filter_tokens_are_safe_and_one_to_one() -> None:
    values: list[Any] = [*INJECTIONS, "", "1", 1, 1.0, 1.5, True, False, 0, "True", "#b:true", -2, 10**20]
    tokens = [filter_token(v) for v in values]
    assert all('"' not in t and "\\" not in t and not any(ord(c) < 32 for c in t) for t in tokens)
    same = {(a, b) for a, b in itertools.combinations(range(len(values)), 2) if tokens[a] == tokens[b]}
    one = len(INJECTIONS) + 2
    assert (values[one], values[one + 1]) == (1, 1.0)
    assert same == {(one, one + 1)}  # 1 == 1.0 (and nothing else collides), as in every store
    assert filter_token("/plain/path.jpg") == "/plain/path.jpg"  # readable in the console
    expr = filter_expression({"path": ('x" or path != "',), "label": ("a", "b")})
    assert expr.count('"') == 6 and " or " not in expr


def test_filter_values_that_would_inject(make_store: Callable[..., TencentVectorStore]) -> None:
    store = make_store()
    store.create_schema(SCHEMA)
    recs = records(20)
    special = [Record(f"s{i}", unit_vectors(1, seed=100 + i)[0], {"path": v, "label": v}) for i, v in enumerate(INJECTIONS)]
    store.upsert(recs + special)
    query = recs[0].vector[None, :]
    for i, value in enumerate(INJECTIONS):
        hits = store.search(query, 50, {"path": value})[0]
        assert [h.id for h in hits] == [f"s{i}"], value
        assert hits[0].path == value
        assert [h.id for h in store.search(query, 50, {"label": [value, "c3"]})[0] if h.id.startswith("s")] == [f"s{i}"]


def test_naive_quoting_would_inject_on_this_server(make_store: Callable[..., TencentVectorStore]) -> None:
    """The fake parses like a naive server, so the test above would catch an unescaped quote."""
    store = make_store()
    store.create_schema(SCHEMA)
    store.upsert(records(10))
    naive = f'path = "{INJECTIONS[0]}"'
    hits = store._client.search(store.database, store.collection, vectors=wire_vectors(unit_vectors(1)),
                                filter=naive, limit=50)
    assert len(hits[0]) == 10  # every document matched: injected


def test_non_string_metadata_round_trips_and_filters_like_memory(make_store: Callable[..., TencentVectorStore]) -> None:
    schema = Schema(dim=DIM, identity="types:v1", fields=("path", "label", "n"))
    values: list[Any] = [1, 1.0, "1", True, False, 0, 2.5, -3, "", "#n:1"]
    vectors = unit_vectors(len(values), seed=9)
    recs = [Record(f"m{i}", vectors[i], {"n": v, "label": v, "extra": v, "path": f"/p/{i}"}) for i, v in enumerate(values)]
    tencent, memory = make_store(), InMemoryStore()
    for store in (tencent, memory):
        store.create_schema(schema)
        store.upsert(recs)
    for got, want in zip(tencent.get([r.id for r in recs]), recs):
        assert got.metadata == want.metadata
        assert [type(v) for v in got.metadata.values()] == [type(v) for v in want.metadata.values()]
    query = unit_vectors(1, seed=1)
    for wanted in [1, True, "1", 0, False, 2.5, [1, "1"], [False, -3], "", "#n:1"]:
        flt = {"n": wanted}
        ours = {h.id for h in tencent.search(query, 20, flt)[0]}
        reference = {h.id for h in memory.search(query, 20, flt)[0]}
        assert ours == reference, wanted


def test_ef_is_sent_and_at_least_k(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(ef=50)
    store.create_schema(SCHEMA)
    store.upsert(records(30))
    sent: list[Any] = []
    original = store._client.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        sent.append(vars(kwargs["params"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(store._client, "search", spy)
    store.search(unit_vectors(1), 10)
    store.search(unit_vectors(1), 200)
    assert sent == [{"ef": 50}, {"ef": 200}]


# -- retries and faults ---------------------------------------------------------------------------
def test_transient_failures_are_retried(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store(retries=3)
    store.create_schema(SCHEMA)
    server.reset_counts()
    server.fail_next("5xx", 2, "/document/count")
    server.fail_next("drop", 1, "/document/count")
    assert store.count() == 0
    assert server.counts["/document/count"] == 4


def test_retries_are_bounded(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store(retries=2)
    store.create_schema(SCHEMA)
    server.reset_counts()
    server.fail_next("5xx", 10, "/document/count")
    with pytest.raises(StoreConnectionError, match="after 3 attempts"):
        store.count()
    assert server.counts["/document/count"] == 3


def test_timeout_without_retries_is_a_timeout_error(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store(retries=0, timeout=0.2)
    store.create_schema(SCHEMA)
    server.fail_next("timeout", 1, "/document/count")
    server.set_faults(0.0, timeout_delay=0.4)
    with pytest.raises(StoreTimeoutError, match="timed out"):
        store.count()


def test_backoff_is_exponential_and_capped(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.stores.tencent as module

    delays: list[float] = []
    monkeypatch.setattr(module.time, "sleep", delays.append)
    store = make_store(retries=5, backoff=1.0, max_backoff=4.0)
    store.create_schema(SCHEMA)
    server.fail_next("5xx", 5, "/document/count")
    assert store.count() == 0
    caps = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(delays) == 5 and all(c / 2 <= d <= c for d, c in zip(delays, caps))


def test_2000_vectors_with_20_percent_faults(make_store: Callable[..., TencentVectorStore], server: FakeTencentServer) -> None:
    store = make_store(timeout=0.3, retries=8, batch_size=50)
    store.create_schema(SCHEMA)
    recs = records(2000, seed=21)
    server.set_faults(0.2, timeout_delay=0.45, slow_delay=0.02, seed=7)
    for start in range(0, 2000, 200):  # faults hit lookups, upserts and reads alike
        store.upsert(recs[start : start + 200])
    assert store.count() == 2000
    scanned = [r.id for batch in store.scan(batch_size=500) for r in batch]
    server.clear_faults()
    kinds = {kind for _, kind, _ in server.injected}
    print(f"faults injected: {len(server.injected)} of {server.counts.total()} requests, kinds {sorted(kinds)}")
    assert len(server.injected) >= 10 and kinds == {"5xx", "timeout", "drop", "slow"}
    assert sorted(scanned) == sorted(r.id for r in recs)  # every id exactly once
    stored = server.documents(store.database, store.collection)
    assert len(stored) == 2000
    for r in recs:
        assert np.array_equal(stored[r.id]["vector"], r.vector)
        assert json.loads(stored[r.id]["lookalike_meta"]) == r.metadata


def test_acknowledged_batches_are_never_lost_without_retries(
    make_store: Callable[..., TencentVectorStore], server: FakeTencentServer
) -> None:
    store = make_store(timeout=0.3, retries=0, batch_size=50)
    store.create_schema(SCHEMA)
    recs = records(2000, seed=22)
    batches = [recs[i : i + 50] for i in range(0, 2000, 50)]
    server.set_faults(0.2, ("5xx", "timeout", "drop"), timeout_delay=0.45, paths=("/document/upsert",), seed=11)
    acknowledged, failed = [], []
    for batch in batches:
        try:
            store.upsert(batch)
            acknowledged.append(batch)
        except (StoreConnectionError, StoreTimeoutError):
            failed.append(batch)
    server.clear_faults()
    print(f"upsert batches acknowledged {len(acknowledged)}, failed {len(failed)}")
    assert acknowledged and failed
    stored = server.documents(store.database, store.collection)
    for batch in acknowledged:
        assert all(r.id in stored for r in batch)
    for batch in failed:  # each request is atomic: all of it or none of it
        assert len({r.id in stored for r in batch}) == 1
    for batch in failed:  # the caller retries: ids replace, nothing duplicates
        store.upsert(batch)
    assert store.count() == 2000 == len(server.documents(store.database, store.collection))


# -- congruence, copy, CLI ----------------------------------------------------------------------
def test_top10_identical_to_in_memory_store(make_store: Callable[..., TencentVectorStore]) -> None:
    recs = records(1000, dim=64, seed=31)
    schema = Schema(dim=64, identity="congruence:v1", fields=("path", "label"))
    tencent, memory = make_store(), InMemoryStore()
    for store in (tencent, memory):
        store.create_schema(schema)
        store.upsert(recs)
    queries = unit_vectors(100, 64, seed=32)
    for flt in (None, {"label": "c3"}, {"label": ["c1", "c2"]}):
        ours, reference = tencent.search(queries, 10, flt), memory.search(queries, 10, flt)
        for a, b in zip(ours, reference):
            assert [h.id for h in a] == [h.id for h in b]
            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
            assert [h.path for h in a] == [h.path for h in b]


def test_copy_local_to_tencent_and_back(make_store: Callable[..., TencentVectorStore], tmp_path: Path) -> None:
    from lookalike.stores import copy_store

    local = LocalStore(tmp_path / "a.lookalike")
    local.create_schema(SCHEMA)
    recs = records(230)
    local.upsert(recs)
    tencent = make_store()
    assert copy_store(local, tencent, batch_size=64) == 230
    back = InMemoryStore()
    assert copy_store(tencent, back, batch_size=100) == 230
    assert back.describe() == SCHEMA
    for got, want in zip(back.get([r.id for r in recs]), recs):
        assert np.array_equal(got.vector, want.vector) and got.metadata == want.metadata
    local.close()


def test_cli_reaches_tencent_with_key_from_environment(
    server: FakeTencentServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookalike.cli import main

    local = LocalStore(tmp_path / "a.lookalike")
    local.create_schema(SCHEMA)
    local.upsert(records(30))
    local.close()
    host = server.url.removeprefix("http://")
    spec = f"tencent://{host}/cli{next(_names)}/gallery"
    monkeypatch.setenv(KEY_ENV, TENCENT_KEY)
    assert main(["copy", "--from", str(tmp_path / "a.lookalike"), "--to", spec, "--json"]) == 0
    assert main(["info", "--store", spec, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"count": 30' in out and TENCENT_KEY not in out
    monkeypatch.delenv(KEY_ENV)
    assert main(["info", "--store", spec]) != 0
    err = capsys.readouterr().err
    assert KEY_ENV in err and TENCENT_KEY not in err


def test_error_table_rows_apply_in_order(make_store: Callable[..., TencentVectorStore]) -> None:
    # a ConnectError that says it timed out is a timeout (row 2 before row 3); a ParamError
    # with an auth code is a credentials problem (the auth row before the ParamError row)
    from lookalike.stores._tencent_errors import is_transient

    store = make_store()
    exc = tcvectordb.exceptions
    with pytest.raises(StoreTimeoutError, match="timed out"), store._translate("testing"):
        raise exc.ConnectError(message="Read timed out. (read timeout=1)")
    with pytest.raises(ConfigurationError, match="refused the credentials"), store._translate("testing"):
        raise exc.ParamError(code=401, message="bad")
    assert is_transient(store._sdk, exc.ServerInternalError(code=503, message="x"))
    assert not is_transient(store._sdk, exc.ServerInternalError(code=400, message="x"))


def test_from_url_opens_what_the_registry_opens(server: FakeTencentServer) -> None:
    from lookalike.registry import open_store

    host = server.url.removeprefix("http://")
    url = f"tencent://root@{host}/url{next(_names)}/gallery"
    store = TencentVectorStore.from_url(url, key=TENCENT_KEY, timeout=5)
    same = open_store(url, key=TENCENT_KEY, timeout=5)
    assert repr(store) == repr(same)
    assert (store.database, store.collection, store.username) == (same.database, same.collection, "root")  # type: ignore[attr-defined]
    store.create_schema(SCHEMA)
    assert same.describe() == SCHEMA
    store.close()
    same.close()
    for bad in (f"tencent://root:{TENCENT_KEY}@{host}/db/c", f"tencent://{host}/only-db", f"http://{host}/db/c"):
        with pytest.raises(ConfigurationError) as info:
            TencentVectorStore.from_url(bad, key=TENCENT_KEY)
        assert TENCENT_KEY not in str(info.value)
