"""``lookalike serve``: the JSON API in process, and the page as a person uses it (real browser).

The browser test needs Debian's Chromium at /usr/bin/chromium and Playwright for Python
(``scripts/bootstrap`` installs both); it saves screenshots under ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike import ImageSearchIndex
from lookalike.embedders import FakeEmbedder
from lookalike.errors import ConfigurationError, MissingDependencyError
from lookalike.stores import LocalStore

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; scripts/bootstrap installs it as root
LABELS = ("squares", "circles")
N_IMAGES = 12
QUERY_SEED = 7  # the stored image the query is a resized, recompressed copy of


def _picture(seed: int) -> Image.Image:
    """A distinct synthetic picture; even seeds get rectangles, odd seeds ellipses."""
    rng = np.random.default_rng(1000 + seed)
    img = Image.new("RGB", (120, 96), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(7):
        x0, y0 = int(rng.integers(0, 100)), int(rng.integers(0, 80))
        box = (x0, y0, x0 + int(rng.integers(10, 60)), y0 + int(rng.integers(10, 50)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if seed % 2 == 0 else draw.ellipse)(box, fill=colour)
    return img


def _encode(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _label(seed: int) -> str:
    return LABELS[seed % 2]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LocalStore over 12 generated images (label squares/circles) and a query file."""
    root = tmp_path_factory.mktemp("serve")
    photos = root / "photos"
    photos.mkdir()
    paths = []
    for seed in range(N_IMAGES):
        path = photos / f"pic{seed:02d}.png"
        _picture(seed).save(path)
        paths.append(path)
    store = root / "index.lookalike"
    with ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(store)) as index:
        report = index.add_many(paths, metadata=[{"label": _label(s)} for s in range(N_IMAGES)])
        assert len(report.added) == N_IMAGES
    query = root / "query.jpg"  # not the stored file: smaller and recompressed, as a person's copy is
    _picture(QUERY_SEED).resize((100, 80)).save(query, quality=85)
    corrupt = root / "corrupt.jpg"
    corrupt.write_bytes(_encode(_picture(3), "JPEG")[:40])  # a JPEG header, then nothing
    return {"root": root, "store": store, "query": query, "corrupt": corrupt, "photos": photos}


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text


# -- without a browser or a server ---------------------------------------------------------------
def test_cli_and_help_do_not_import_gradio() -> None:
    code = (
        "import sys\n"
        "import lookalike\n"
        "from lookalike.cli import main\n"
        "try:\n    main(['serve', '--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'fastapi', 'uvicorn'))\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--host" in out.stdout and "LOOKALIKE_SERVE_AUTH" in out.stdout


def test_missing_gradio_names_the_extra(
    gallery: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lookalike.cli import main
    from lookalike.serve import build_app

    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    with pytest.raises(MissingDependencyError, match=r"lookalike\[ui\]"):
        build_app(ImageSearchIndex(embedder=FakeEmbedder()))
    assert main(["serve", "--store", str(gallery["store"])]) == 1
    assert "pip install 'lookalike[ui]'" in capsys.readouterr().err


def test_binding_publicly_without_auth_warns() -> None:
    from lookalike.serve import bind_warning, parse_auth

    assert bind_warning("127.0.0.1", None) is None
    assert bind_warning("localhost", None) is None
    warning = bind_warning("0.0.0.0", None)
    assert warning is not None and "LOOKALIKE_SERVE_AUTH" in warning
    assert bind_warning("0.0.0.0", ("ann", "secret")) is None
    assert parse_auth("ann:s3:cret") == ("ann", "s3:cret")
    assert parse_auth(None) is None
    for bad in ("ann", ":pw", "ann:"):
        with pytest.raises(ConfigurationError):
            parse_auth(bad)


def test_service_works_with_any_store() -> None:
    """The page and the API use only the store protocol: an in-memory index with no files works."""
    from lookalike.serve import Limits, Rejected, SearchService

    index = ImageSearchIndex(embedder=FakeEmbedder())
    ids = [index.add(_picture(s), metadata={"label": _label(s)}) for s in range(4)]
    service = SearchService(index, Limits(max_k=3))
    assert service.info()["count"] == 4 and service.labels() == sorted(LABELS)
    hits = service.search_upload(_encode(_picture(2), "JPEG", quality=90), k=3)
    assert [h.id for h in hits][0] == ids[2]
    assert service.stored_image(ids[2]) is None  # stored from memory: no file to show
    assert [h.id for h in service.search_similar(ids[1], k=1, filter=["label=circles"])] == [ids[1]]
    with pytest.raises(Rejected, match="between 1 and 3"):
        service.search_upload(_encode(_picture(2)), k=4)


# -- the JSON API, in process ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(gallery: dict[str, Path]) -> Iterator[Any]:
    pytest.importorskip("gradio", reason="the [ui] extra (gradio) is not installed")
    from starlette.testclient import TestClient

    from lookalike.serve import Limits, build_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(gallery["root"] / "gradio-tmp"))
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        index = ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(gallery["store"]))
        limits = Limits(max_upload_bytes=200_000, max_pixels=1_000_000, max_k=20)

        async def build() -> Any:
            # Gradio makes (and leaks) a fresh event loop for each lock it creates when no loop
            # is running; building inside one keeps pytest's warnings-as-errors quiet.
            return build_app(index, limits=limits, auth=("ann", "s3cret"))

        app = asyncio.run(build())
        token = base64.b64encode(b"ann:s3cret").decode()
        with TestClient(app, headers={"Authorization": f"Basic {token}"}) as client:
            client.app_without_auth = TestClient(app)  # type: ignore[attr-defined]
            yield client
        index.close()


def _search(api: Any, data: bytes, **params: Any) -> Any:
    return api.post("/api/search", params=params, files={"image": ("q.jpg", data, "image/jpeg")})


def test_api_info_says_size_and_model(api: Any) -> None:
    info = api.get("/api/info").json()
    assert info["count"] == N_IMAGES
    assert info["embedder"] == FakeEmbedder().identity
    assert info["limits"] == {"max_upload_bytes": 200_000, "max_pixels": 1_000_000, "max_k": 20,
                              "max_pixels_in_flight": 2_000_000, "max_aspect_ratio": 100,
                              "max_text_chars": 1000}
    assert info["text_search"] is False  # FakeEmbedder has no text tower


def test_api_search_finds_the_image_with_k_and_filter(api: Any, gallery: dict[str, Path]) -> None:
    query = gallery["query"].read_bytes()
    response = _search(api, query, k=3)
    assert response.status_code == 200
    hits = response.json()["hits"]
    assert len(hits) == 3
    assert Path(hits[0]["path"]).name == f"pic{QUERY_SEED:02d}.png"
    assert hits[0]["metadata"]["label"] == _label(QUERY_SEED)
    assert hits[0]["score"] > 0.95 > hits[1]["score"]

    other = "squares" if _label(QUERY_SEED) == "circles" else "circles"
    filtered = _search(api, query, k=20, filter=f"label={other}").json()["hits"]
    assert len(filtered) == N_IMAGES // 2
    assert {h["metadata"]["label"] for h in filtered} == {other}

    raw = api.post("/api/search?k=1", content=query, headers={"content-type": "image/jpeg"})
    assert raw.json()["hits"][0]["id"] == hits[0]["id"]

    image = api.get(f"/api/image/{hits[0]['id']}", params={"size": 64})
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(image.content)).size) == 64


@pytest.mark.parametrize(
    ("send", "status", "message"),
    [
        ({"json": {"path": "/etc/passwd"}}, 415, "never reads paths"),
        ({"data": {"image": "/etc/passwd"}}, 415, "never reads paths"),
        ({"files": {"image": (None, "/etc/passwd")}}, 400, "never reads paths"),
        ({"files": {"image": ("a.png", b"x"), "path": (None, "/etc/passwd")}}, 400, "never reads paths"),
        ({"files": {"image": ("c.jpg", b"\xff\xd8\xff\xe0 junk", "image/jpeg")}}, 400,
         "could not read the uploaded image"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "no image"),
        ({"content": b"\0" * 300_000, "headers": {"content-type": "image/png"}}, 413, "limit"),
        ({"content": _encode(Image.new("RGB", (1200, 1000))), "headers": {"content-type": "image/png"}},
         400, "exceeds the limit"),
        ({"content": _encode(_picture(1)), "headers": {"content-type": "image/png"}, "params": {"k": 21}},
         400, "k must be between 1 and 20"),
        ({"content": _encode(_picture(1)), "headers": {"content-type": "image/png"},
          "params": {"filter": "sha256=abc"}}, 400, "cannot filter on 'sha256'"),
    ],
    ids=["json-path", "form-path", "text-field", "extra-path-field", "corrupt", "empty", "too-many-bytes",
         "too-many-pixels", "k-too-large", "bad-filter"],
)
def test_api_refuses_cleanly(api: Any, send: dict[str, Any], status: int, message: str) -> None:
    response = api.post("/api/search", **send)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    _no_traceback(response.text)


def test_api_serves_only_indexed_images(api: Any) -> None:
    assert api.get("/api/image/not-an-id").status_code == 404
    assert api.get("/api/image/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_basic_auth_covers_page_and_api(api: Any) -> None:
    anonymous = api.app_without_auth
    wrong = base64.b64encode(b"ann:wrong").decode()
    for path in ("/", "/api/info", "/gradio_api/info", f"/gradio_api/file={__file__}"):
        assert anonymous.get(path).status_code == 401, path
        assert anonymous.get(path, headers={"Authorization": f"Basic {wrong}"}).status_code == 401, path
    assert anonymous.post("/api/search", content=b"x").status_code == 401
    assert anonymous.get("/api/info").headers["www-authenticate"].startswith("Basic")
    assert api.get("/").status_code == 200


# -- the real server, as a person and as an attacker use it ---------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_process(store: Path, root: Path) -> Iterator[str]:
    """`lookalike serve` over ``store`` on a loopback port, its files (and ``serve.log``)
    under ``root``; yields its URL."""
    import httpx

    (root / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio-tmp"), "TMPDIR": str(root / "tmp"),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("LOOKALIKE_SERVE_AUTH", None)
    port = _free_port()
    cmd = [sys.executable, "-m", "lookalike", "serve", "--store", str(store), "--port", str(port)]
    with open(root / "serve.log", "w+") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        try:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"lookalike serve exited with {proc.returncode}:\n{log.read()}")
                try:
                    if httpx.get(url + "/", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("lookalike serve did not answer within 60 s")
                time.sleep(0.25)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def server(gallery: dict[str, Path]) -> Iterator[str]:
    """`lookalike serve` on a loopback port over the gallery; yields its URL."""
    pytest.importorskip("gradio", reason="the [ui] extra (gradio) is not installed")
    with serve_process(gallery["store"], gallery["root"]) as url:
        yield url
    assert "serving 12 images" in (gallery["root"] / "serve.log").read_text()


def _gradio_call(url: str, data: list[Any]) -> tuple[str, Any]:
    """Call the page's search through Gradio's HTTP API: (event, payload)."""
    import httpx

    started = httpx.post(f"{url}/gradio_api/call/search", json={"data": data}, timeout=30)
    started.raise_for_status()
    stream = httpx.get(f"{url}/gradio_api/call/search/{started.json()['event_id']}", timeout=30).text
    _no_traceback(stream)
    event = next(line.split(":", 1)[1].strip() for line in stream.splitlines() if line.startswith("event:"))
    payload = next(line.split(":", 1)[1].strip() for line in stream.splitlines() if line.startswith("data:"))
    return event, json.loads(payload)


def _file(path: str | Path) -> dict[str, Any]:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def test_server_refuses_server_paths_and_corrupt_uploads(server: str, gallery: dict[str, Path]) -> None:
    import httpx

    indexed = gallery["photos"] / f"pic{QUERY_SEED:02d}.png"
    # The tutorial's hole: a path (or glob, or loopback URL) on the server instead of an upload.
    for sneaky in (_file(indexed), _file("/etc/passwd"), _file(f"{gallery['photos']}/*.png"),
                   _file(f"{server}/api/image/x"), {"path": str(indexed)}):
        event, payload = _gradio_call(server, [sneaky, 5, "(any label)"])
        assert event == "error", (sneaky, payload)
        assert "pic07" not in json.dumps(payload)
    refused = httpx.post(f"{server}/api/search", json={"path": str(indexed)}, timeout=30)
    assert refused.status_code == 415 and "never reads paths" in refused.json()["error"]

    # A corrupt file uploaded the normal way: a readable message, no results, no traceback.
    event, payload = _gradio_call(server, [_upload(server, gallery["corrupt"]), 5, None])
    assert event == "complete"
    gallery_value, status = payload[0], payload[1]
    assert gallery_value == [] and "Could not read the uploaded image" in status
    with open(gallery["corrupt"], "rb") as fh:
        api = httpx.post(f"{server}/api/search", files={"image": fh}, timeout=30)
    assert api.status_code == 400 and "could not read the uploaded image" in api.json()["error"]
    _no_traceback(api.text)


def _upload(server: str, path: Path) -> dict[str, Any]:
    import httpx

    with open(path, "rb") as fh:
        uploaded = httpx.post(f"{server}/gradio_api/upload", files={"files": (path.name, fh)}, timeout=30)
    uploaded.raise_for_status()
    return {**_file(uploaded.json()[0]), "orig_name": path.name}


def test_page_search_takes_k_and_label(server: str, gallery: dict[str, Path]) -> None:
    query = _upload(server, gallery["query"])
    event, payload = _gradio_call(server, [query, 3, None])
    assert event == "complete"
    captions = [item["caption"] for item in payload[0]]
    assert len(captions) == 3 and f"pic{QUERY_SEED:02d}.png" in captions[0]
    assert captions[0].startswith(("0.99", "1.00")) and _label(QUERY_SEED) in captions[0]

    other = "squares" if _label(QUERY_SEED) == "circles" else "circles"
    event, payload = _gradio_call(server, [query, 12, other])
    captions = [item["caption"] for item in payload[0]]
    assert len(captions) == N_IMAGES // 2 and all(f" {other} " in c for c in captions)


def _launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync",
              # a fake camera (a test pattern) and no permission prompt, for the webcam source
              "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
    )


def test_page_finds_the_uploaded_image(server: str, gallery: dict[str, Path]) -> None:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/bootstrap as root (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    expect = sync_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    expected = f"pic{QUERY_SEED:02d}.png"

    with sync_api.sync_playwright() as p:
        browser = _launch_chromium(p)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}, permissions=["camera"]).new_page()
            page.goto(server + "/")
            expect(page.locator("#info")).to_contain_text(f"{N_IMAGES} images", timeout=30_000)
            expect(page.locator("#info")).to_contain_text(FakeEmbedder().identity)
            expect(page.locator("#text")).to_be_hidden()  # no text tower: no text box

            page.locator("#query input[type=file]").set_input_files(str(gallery["query"]))
            expect(page.locator("#gallery img")).to_have_count(10, timeout=30_000)
            expect(page.locator("#status")).to_contain_text("10 results")
            captions = page.locator("#gallery .caption-label")
            expect(captions.first).to_contain_text(expected)  # "0.99x · circles · pic07.png"
            expect(captions.first).to_contain_text(_label(QUERY_SEED))
            page.screenshot(path=str(ARTIFACTS / "serve-search.png"), full_page=True)

            # Clicking a result shows it large; "Search by this image" searches by it.
            page.locator("#gallery img").nth(1).click()
            expect(page.locator("#selected img")).to_be_visible(timeout=30_000)
            second_name = page.locator("#details h3").inner_text()
            assert second_name.endswith(".png") and second_name != expected
            page.locator("#search-by").click()
            expect(page.locator("#status")).to_contain_text("the chosen result", timeout=30_000)
            expect(captions.first).to_contain_text(second_name)
            expect(captions.first).to_contain_text("1.000")
            page.screenshot(path=str(ARTIFACTS / "serve-search-by-result.png"), full_page=True)

            # A corrupt upload: a readable message, never a stack trace.
            page.locator("#query input[type=file]").set_input_files(str(gallery["corrupt"]))
            expect(page.locator("#status")).to_contain_text("Could not read the uploaded image", timeout=30_000)
            expect(page.locator("#gallery img")).to_have_count(0)
            _no_traceback(page.content())
            page.screenshot(path=str(ARTIFACTS / "serve-corrupt-upload.png"), full_page=True)

            # A file that is not an image at all is refused at upload, with the reason, and not kept.
            not_image = gallery["root"] / "notes.png"
            not_image.write_text("a shopping list, not a picture\n" * 20)
            page.locator("#query input[type=file]").set_input_files(str(not_image))
            expect(page.get_by_text("not an image: 'notes.png'")).to_be_visible(timeout=30_000)
            assert not list((gallery["root"] / "gradio-tmp").rglob("notes.png"))

            # The webcam (Chromium's fake camera): take a photo, and it is searched like an upload.
            page.locator("#query button[aria-label='Capture from camera']").click()
            page.get_by_text("Click to Access Webcam").click()
            expect(page.locator("#query video")).to_be_visible(timeout=30_000)
            page.wait_for_function("document.querySelector('#query video').readyState >= 2", timeout=30_000)
            page.locator("#query button[aria-label='capture photo']").click()
            expect(page.locator("#status")).to_contain_text("10 results for the uploaded image", timeout=30_000)
            expect(page.locator("#gallery img")).to_have_count(10)
        finally:
            browser.close()
