"""``lookalike serve`` under hostile input: memory in aggregate, oversize and chunked bodies, uploads
of any type, thin images, and the lowercase ``basic`` auth scheme (issue #14).

Everything runs in process (Starlette's TestClient over the real app), and every concurrency check
waits on the pixel budget's own state, never on time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lookalike import ImageSearchIndex
from lookalike.embedders import FakeEmbedder

from ..conftest import encode, make_image

pytest.importorskip("gradio", reason="the [ui] extra (gradio) is not installed")

from lookalike.errors import ConfigurationError  # noqa: E402
from lookalike.serve import (  # noqa: E402
    Limits,
    PixelBudget,
    Rejected,
    SearchService,
    UploadJanitor,
    build_app,
)

USER, PASSWORD = "ann", "s3cret"
TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
MAX_UPLOAD = 200_000
LIMITS = Limits(max_upload_bytes=MAX_UPLOAD, max_pixels=1_000_000, max_k=20, max_wait_s=0)


class GatedEmbedder(FakeEmbedder):
    """A FakeEmbedder whose ``embed`` waits for ``gate`` (or raises ``fail`` when set)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.fail: BaseException | None = None

    def embed(self, images: Sequence[Any]) -> Any:
        if self.fail is not None:
            raise self.fail
        assert self.gate.wait(30), "the test never opened the gate"
        return super().embed(images)


def _png(width: int, height: int, seed: int = 1) -> bytes:
    return encode(make_image(seed, (max(width, 9), max(height, 9))).resize((width, height)), "PNG")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The real app (page + API, basic auth) over an in-memory index; uploads go to a temp folder."""
    from starlette.testclient import TestClient

    import lookalike.serve.middleware as serve_middleware

    root = tmp_path_factory.mktemp("hostile-serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio-tmp"))
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        mp.setattr(serve_middleware, "UPLOAD_GRACE_S", 0.0)  # delete an upload as soon as its search read it
        embedder = GatedEmbedder()
        index = ImageSearchIndex(embedder=embedder)
        for seed in range(4):
            index.add(make_image(seed))

        async def build() -> Any:  # inside a running loop: Gradio leaks loops otherwise
            return build_app(index, limits=LIMITS, auth=(USER, PASSWORD))

        web = asyncio.run(build())
        with TestClient(web, headers={"Authorization": f"Basic {TOKEN}"}) as client:
            yield {"client": client, "service": web.state.search_service, "embedder": embedder,
                   "uploads": root / "gradio-tmp", "app": web}


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- memory in aggregate: the pixel budget ---------------------------------------------------------
def test_pixels_in_flight_never_exceed_the_budget() -> None:
    """Four parallel 10,000-pixel uploads with room for two: two decode, two wait their turn."""
    embedder = GatedEmbedder()
    index = ImageSearchIndex(embedder=embedder)
    stored = index.add(make_image(3))
    service = SearchService(index, Limits(max_pixels=10_000, max_pixels_in_flight=20_000, max_wait_s=60))
    embedder.gate.clear()  # the first search holds the model; the next one holds its decoded image
    data = encode(make_image(3).resize((100, 100)), "PNG")
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(service.search_upload(data, k=1))) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert service.budget.wait_until(lambda b: b.in_flight == 20_000 and b.waiting == 2, timeout=30)
        assert service.budget.peak == 20_000  # never a third image decoded at once
    finally:
        embedder.gate.set()
        for thread in threads:
            thread.join(30)
    assert [hits[0].id for hits in results] == [stored] * 4
    assert service.budget.in_flight == 0 and service.budget.peak == 20_000


def test_budget_serves_first_come_first_and_never_waits_forever() -> None:
    budget = PixelBudget(100)
    order: list[str] = []
    with budget.reserve(60, timeout=0):
        big = threading.Thread(target=lambda: _hold(budget, 50, "big", order))
        big.start()
        assert budget.wait_until(lambda b: b.waiting == 1, timeout=30)
        small = threading.Thread(target=lambda: _hold(budget, 30, "small", order))
        small.start()
        assert budget.wait_until(lambda b: b.waiting == 2, timeout=30)
        assert budget.in_flight == 60  # 30 would fit, but it queues behind the larger image
        with pytest.raises(Rejected) as busy, budget.reserve(50, timeout=0):
            pass
        assert busy.value.status == 503
    big.join(30)
    small.join(30)
    assert order == ["big", "small"] and budget.in_flight == 0 and budget.waiting == 0
    with pytest.raises(Rejected) as too_big, budget.reserve(101, timeout=60):  # more than the budget
        pass
    assert too_big.value.status == 413 and "more than the server decodes at once" in str(too_big.value)
    with pytest.raises(ConfigurationError, match="at least max_pixels"):
        Limits(max_pixels=1000, max_pixels_in_flight=999)


def test_budgets_and_limits_refuse_true_as_a_count() -> None:
    """One positive-int rule (#15): a bool is not a count, anywhere in serve."""
    import numpy as np

    from lookalike.serve import ByteBudget

    with pytest.raises(ConfigurationError, match="the pixel budget must be a positive int, got True"):
        PixelBudget(True)
    with pytest.raises(ConfigurationError, match="the byte budget must be a positive int, got 0"):
        ByteBudget(0)
    with pytest.raises(ConfigurationError, match="max_k must be a positive int, got True"):
        Limits(max_k=True)
    assert Limits(max_k=np.int64(7)).max_k == 7 and type(Limits(max_k=np.int64(7)).max_k) is int


def _hold(budget: PixelBudget, pixels: int, name: str, order: list[str]) -> None:
    with budget.reserve(pixels, timeout=30):
        order.append(name)


def test_memory_is_given_back_after_a_big_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.serve.limits as serve_limits

    trims: list[int] = []

    def release() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(serve_limits, "release_memory", release)
    service = SearchService(ImageSearchIndex(embedder=FakeEmbedder()), Limits(max_pixels=10_000))
    service.budget.trim_after = 5_000
    with service.decoded_upload(_png(100, 100)) as image:
        assert image.size == (100, 100)
    with pytest.raises(ValueError):  # the decoded pixels were freed at the end of the block
        image.getpixel((0, 0))
    assert trims == [1]
    with service.decoded_upload(_png(50, 50)):
        pass
    assert trims == [1]  # 2,500 pixels: not worth a trim


def test_server_busy_is_a_503_not_a_wait_forever(app: dict[str, Any]) -> None:
    budget = app["service"].budget
    with budget.reserve(budget.capacity, timeout=0):  # every pixel is taken
        response = app["client"].post("/api/search", content=_png(64, 64), headers={"content-type": "image/png"})
    assert response.status_code == 503 and response.headers["retry-after"]
    assert "busy" in response.json()["error"]
    ok = app["client"].post("/api/search", content=_png(64, 64), headers={"content-type": "image/png"})
    assert ok.status_code == 200


# -- thin images and out-of-memory: a clean 4xx, never a 500 ---------------------------------------
@pytest.mark.parametrize("size", [(200_000, 1), (1, 20_000)])
def test_thin_image_gets_a_clean_4xx(app: dict[str, Any], size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size, (200, 10, 10)), "PNG")
    response = app["client"].post("/api/search", content=data, headers={"content-type": "image/png"})
    assert response.status_code == 400, response.text
    assert f"{size[0]}x{size[1]} pixels" in response.json()["error"]
    assert "more than 100 times" in response.json()["error"]
    assert "Traceback" not in response.text
    assert app["service"].budget.in_flight == 0


def test_out_of_memory_while_searching_is_a_clean_4xx(app: dict[str, Any]) -> None:
    app["embedder"].fail = MemoryError()
    try:
        response = app["client"].post("/api/search", content=_png(64, 64), headers={"content-type": "image/png"})
    finally:
        app["embedder"].fail = None
    assert response.status_code == 413, response.text
    assert "memory" in response.json()["error"] and "Traceback" not in response.text
    assert app["service"].budget.in_flight == 0


# -- request bodies are capped before anything parses them -----------------------------------------
def test_oversize_json_body_is_refused_before_parsing(app: dict[str, Any]) -> None:
    """Gradio's API used to parse a 120 MB JSON body; the limit here is an upload as base64."""
    huge = json.dumps({"data": ["A" * (MAX_UPLOAD * 2), 5, None]}).encode()
    for path in ("/gradio_api/call/search", "/gradio_api/queue/join", "/api/search"):
        response = app["client"].post(path, content=huge, headers={"content-type": "application/json"})
        assert response.status_code == 413, (path, response.status_code, response.text[:200])
        assert "larger than the limit" in response.json()["error"]


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    while total > 0:
        yield b"\0" * min(size, total)
        total -= size


def test_chunked_body_is_counted_as_it_streams(app: dict[str, Any]) -> None:
    before = _files(app["uploads"])
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def form() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield head
        yield from _chunks(MAX_UPLOAD * 3)

    response = app["client"].post("/gradio_api/upload", content=form(),
                                  headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413, response.text[:200]
    assert _files(app["uploads"]) == before
    raw = app["client"].post("/api/search", content=_chunks(MAX_UPLOAD * 3), headers={"content-type": "image/png"})
    assert raw.status_code == 413

    def json_body() -> Iterator[bytes]:  # Gradio's API would read and parse all of it
        yield b'{"data": ["'
        for chunk in _chunks(MAX_UPLOAD * 3):
            yield chunk.replace(b"\0", b"A")
        yield b'", 5, null], "fn_index": 0, "session_hash": "x"}'

    joined = app["client"].post("/gradio_api/queue/join", content=json_body(),
                                headers={"content-type": "application/json"})
    assert joined.status_code == 413, joined.text[:200]
    assert "larger than the limit" in joined.json()["error"]


def test_body_limit_middleware_never_hands_the_app_more_than_the_limit() -> None:
    from lookalike.serve import BodyLimitMiddleware

    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            seen.append(total)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"parsed"})

    async def call(headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[Any]:
        sent: list[Any] = []
        queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

        async def receive() -> Any:
            return queue.pop(0)

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
        await BodyLimitMiddleware(app, lambda path: 100)(scope, receive, send)
        return sent

    declared = asyncio.run(call([(b"content-length", b"101")], [b"x" * 101]))
    assert declared[0]["status"] == 413 and seen == []  # refused without reading a byte
    streamed = asyncio.run(call([], [b"x" * 60, b"x" * 60, b"x" * 60]))
    assert streamed[0]["status"] == 413 and seen == [60]  # the app never saw the chunk past the limit
    assert b"parsed" not in b"".join(m.get("body", b"") for m in streamed)
    fits = asyncio.run(call([], [b"x" * 50, b"x" * 50]))
    assert fits[0]["status"] == 200


# -- uploads: images only, deleted once searched -----------------------------------------------------
def _gradio_search(client: Any, path: str, k: int = 3) -> tuple[str, Any]:
    started = client.post("/gradio_api/call/search",
                          json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, k, None]})
    assert started.status_code == 200, started.text
    stream = client.get(f"/gradio_api/call/search/{started.json()['event_id']}").text
    assert "Traceback" not in stream
    lines = stream.splitlines()
    event = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("event:"))
    payload = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("data:"))
    return event, json.loads(payload)


def _upload(client: Any, name: str, data: bytes) -> Any:
    return client.post("/gradio_api/upload", files={"files": (name, data)})


def test_uploads_are_deleted_once_searched(app: dict[str, Any]) -> None:
    client = app["client"]
    uploaded = _upload(client, "query.png", encode(make_image(2), "PNG"))
    assert uploaded.status_code == 200, uploaded.text
    path = Path(uploaded.json()[0])
    assert path.is_file()
    event, payload = _gradio_search(client, str(path))
    assert event == "complete" and len(payload[0]) == 3, payload
    assert not path.exists() and not path.parent.exists()
    # The page's thin-image upload: a readable line in the status, nothing left on disk.
    thin = Path(_upload(client, "thin.png", encode(Image.new("RGB", (200_000, 1)), "PNG")).json()[0])
    event, payload = _gradio_search(client, str(thin))
    assert event == "complete" and payload[0] == [] and "more than 100 times" in payload[1]
    assert not thin.exists()


def test_non_image_uploads_are_refused_and_not_kept(app: dict[str, Any]) -> None:
    before = _files(app["uploads"])
    for name, data in (("notes.txt", b"just some text\n" * 100), ("tool.exe", b"MZ\x90\x00" + bytes(500)),
                       ("x.zip", b"PK\x03\x04" + bytes(100))):
        response = _upload(app["client"], name, data)
        assert response.status_code == 415, (name, response.status_code, response.text)
        assert "not an image" in response.text and name in response.text
    assert _files(app["uploads"]) == before
    ok = _upload(app["client"], "fine.webp", encode(make_image(5), "WEBP"))
    assert ok.status_code == 200
    Path(ok.json()[0]).unlink()


def test_janitor_waits_out_the_grace_period(tmp_path: Path) -> None:
    (tmp_path / "abc").mkdir()
    upload = tmp_path / "abc" / "q.png"
    upload.write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"x")
    now = [100.0]
    janitor = UploadJanitor(tmp_path, grace_s=1000, clock=lambda: now[0])
    janitor.consumed(upload)
    assert janitor._timer is not None
    janitor._timer.cancel()
    janitor.sweep()
    assert upload.exists()  # the page still shows it as the query's preview
    assert janitor._timer is not None  # re-armed for the file still pending
    now[0] += 1001
    janitor.sweep()
    assert janitor._timer is None
    assert not upload.exists() and not upload.parent.exists() and tmp_path.is_dir()
    UploadJanitor(tmp_path, grace_s=0).consumed(outside)  # never outside the upload folder
    assert outside.exists()
    outside.unlink()


# -- basic auth: the scheme is case-insensitive (RFC 7617) -------------------------------------------
@pytest.mark.parametrize("scheme", ["basic", "BASIC", "Basic", "bAsIc"])
def test_basic_auth_scheme_is_case_insensitive(app: dict[str, Any], scheme: str) -> None:
    from starlette.testclient import TestClient

    anonymous = TestClient(app["app"])
    assert anonymous.get("/api/info", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
    wrong = base64.b64encode(f"{USER}:nope".encode()).decode()
    assert anonymous.get("/api/info", headers={"Authorization": f"{scheme} {wrong}"}).status_code == 401
    assert anonymous.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert anonymous.get("/api/info", headers={"Authorization": TOKEN}).status_code == 401


def test_large_blocks_go_back_to_the_system_on_glibc() -> None:
    """`lookalike serve` fixes glibc's mmap threshold and trims: both work where glibc is the libc."""
    import platform
    import subprocess
    import sys

    code = ("from lookalike.serve import release_memory, return_large_blocks\n"
            "print(return_large_blocks(), isinstance(release_memory(), bool))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    on_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.split() == [str(on_glibc), "True"]


def test_cli_budget_smaller_than_one_image_is_refused_in_cli_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookalike.cli import main

    store = tmp_path / "never-opened.lookalike"
    assert main(["serve", "--store", str(store), "--max-pixels", "1000", "--max-pixels-in-flight", "999"]) == 1
    err = capsys.readouterr().err
    assert "--max-pixels-in-flight (999) must be at least --max-pixels (1,000)" in err
    assert "Traceback" not in err and not store.exists()


def test_page_re_searches_by_the_query_vector_once_the_upload_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload is deleted once searched; a new k or label must still search the same query."""
    import gradio as gr

    import lookalike.serve as serve
    import lookalike.serve.middleware as serve_middleware

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    monkeypatch.setattr(serve_middleware, "UPLOAD_GRACE_S", 0.0)
    index = ImageSearchIndex(embedder=FakeEmbedder())
    ids = [index.add(make_image(seed)) for seed in range(4)]
    service = SearchService(index, LIMITS)

    async def build() -> Any:
        return serve._build_blocks(gr, service, 3)

    demo = asyncio.run(build())
    fns = {block_fn.name: block_fn.fn for block_fn in demo.fns.values()}
    upload = tmp_path / "gradio-tmp" / "0123abcd" / "query.png"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(encode(make_image(2), "PNG"))
    payload = {"path": str(upload), "meta": {"_type": "gradio.FileData"}}

    gallery, status, hits, query_id, query_vec, _ = fns["search_upload"](payload, 3, None)
    assert len(gallery) == 3 and hits[0]["id"] == ids[2] and query_id is None
    assert not upload.exists() and len(query_vec) == FakeEmbedder().dim
    gallery, status, hits, *_ = fns["search_current"](payload, 2, None, None, query_vec)
    assert status.startswith("2 results for the uploaded image") and hits[0]["id"] == ids[2]


def test_request_bodies_in_flight_are_bounded_before_they_are_read() -> None:
    """A body waits for its bytes in the network, not in the server: one budget for all requests."""
    from lookalike.serve import BodyLimitMiddleware, ByteBudget

    budget = ByteBudget(100)
    entered = asyncio.Event()
    finish = asyncio.Event()
    read_by_app: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        read_by_app.append(len(message.get("body", b"")))
        entered.set()
        if scope["path"] == "/slow":
            await finish.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(path: str, size: int) -> int:
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b"x" * size, "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path,
                 "headers": [(b"content-length", str(size).encode())]}
        await BodyLimitMiddleware(app, lambda p: 100, budget=budget, max_wait_s=0)(scope, receive, send)
        return int(sent[0]["status"])

    async def scenario() -> list[int]:
        slow = asyncio.create_task(call("/slow", 80))
        await entered.wait()  # 80 of the 100 bytes are held while the first request is served
        refused = await call("/fast", 50)
        fits = await call("/fast", 20)
        finish.set()
        first = await slow  # its bytes are given back once its answer is sent
        after = await call("/fast", 50)
        return [first, refused, fits, after]

    assert asyncio.run(scenario()) == [200, 503, 200, 200]
    assert read_by_app == [80, 20, 50]  # the refused body was never read
    assert budget.in_flight == 0 and budget.peak == 100


def test_server_busy_receiving_bodies_is_a_503(app: dict[str, Any]) -> None:
    budget = app["app"].state.body_budget
    assert budget.capacity == 4 * LIMITS.max_body_bytes
    assert budget.try_take(budget.capacity)
    try:
        busy = app["client"].post("/api/search", content=_png(64, 64), headers={"content-type": "image/png"})
        info = app["client"].get("/api/info")  # requests without a body are never held up
    finally:
        budget.give_back(budget.capacity)
    assert busy.status_code == 503 and busy.headers["retry-after"]
    assert "busy receiving" in busy.json()["error"] and info.status_code == 200
    ok = app["client"].post("/api/search", content=_png(64, 64), headers={"content-type": "image/png"})
    assert ok.status_code == 200 and budget.in_flight == 0


def test_no_request_leaves_anything_in_flight(app: dict[str, Any]) -> None:
    """Whatever this module sent, every reservation was given back, and none went over."""
    ok = app["client"].post("/api/search", content=_png(64, 64), headers={"content-type": "image/png"})
    assert ok.status_code == 200
    pixels, body = app["service"].budget, app["app"].state.body_budget
    assert pixels.in_flight == 0 and pixels.waiting == 0 and 0 < pixels.peak <= pixels.capacity
    assert body.in_flight == 0 and 0 < body.peak <= body.capacity

