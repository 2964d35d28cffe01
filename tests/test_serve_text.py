"""``lookalike serve`` searching by text (#17): the JSON endpoint ``{"text": ...}`` in process,
and the page's text box in Chromium, with the tiny random CLIP model of ``tests/conftest.py``."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lookalike import ImageSearchIndex, Text
from lookalike.embedders import FakeEmbedder
from lookalike.stores import LocalStore

from .test_serve import (
    ARTIFACTS,
    CHROMIUM,
    _encode,
    _label,
    _launch_chromium,
    _no_traceback,
    _picture,
    serve_process,
)

pytest.importorskip("torch")
pytest.importorskip("open_clip", reason="the [clip] extra (open-clip-torch) is not installed")
pytest.importorskip("gradio", reason="the [ui] extra (gradio) is not installed")

N = 12


def _clip() -> Any:
    from lookalike.embedders import ClipEmbedder

    return ClipEmbedder("lookalike-tiny-clip", None, device="cpu", streams=1)


@pytest.fixture
def clip_gallery(tiny_clip: str, tmp_path: Path) -> dict[str, Path]:
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = []
    for seed in range(N):
        path = photos / f"pic{seed:02d}.png"
        path.write_bytes(_encode(_picture(seed)))
        paths.append(path)
    store = tmp_path / "clip.lookalike"
    with ImageSearchIndex(embedder=_clip(), store=LocalStore(store)) as index:
        index.add_many(paths, metadata=[{"label": _label(s)} for s in range(N)])
    query = tmp_path / "query.jpg"
    query.write_bytes(_encode(_picture(7).resize((240, 192)), "JPEG", quality=90))
    return {"root": tmp_path, "store": store, "photos": photos, "query": query}


def _client(index: ImageSearchIndex) -> Any:
    from starlette.testclient import TestClient

    from lookalike.serve import Limits, build_app

    async def build() -> Any:  # inside a loop: Gradio leaks none (see tests/test_serve.py)
        return build_app(index, limits=Limits(max_k=20, max_text_chars=200))

    return TestClient(asyncio.run(build()))


@pytest.fixture
def api(clip_gallery: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, ImageSearchIndex]]:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(clip_gallery["root"] / "gradio-tmp"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with ImageSearchIndex(embedder=_clip(), store=LocalStore(clip_gallery["store"])) as index, \
            _client(index) as client:
        yield client, index


def test_api_searches_by_text(api: tuple[Any, ImageSearchIndex]) -> None:
    client, index = api
    assert client.get("/api/info").json()["text_search"] is True
    response = client.post("/api/search", json={"text": "a red car", "k": 3})
    assert response.status_code == 200, response.text
    expected = index.search(Text("a red car"), k=3)
    hits = response.json()["hits"]
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-5)
    filtered = client.post("/api/search", json={"text": "a red car", "k": 20, "filter": {"label": "circles"}})
    assert filtered.status_code == 200, filtered.text
    assert len(filtered.json()["hits"]) == N // 2
    assert {h["metadata"]["label"] for h in filtered.json()["hits"]} == {"circles"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": ""}, 400, "the text is empty"),
        ({"text": "   "}, 400, "the text is empty"),
        ({"text": 3}, 400, "text must be a string"),
        ({"text": "x" * 201}, 400, "the limit is 200"),
        ({"text": "a car", "k": 21}, 400, "k must be between 1 and 20"),
        ({"text": "a car", "filter": {"sha256": "abc"}}, 400, "cannot filter on 'sha256'"),
        ({"text": "a car", "size": 3}, 400, "unknown field(s) 'size'"),
        ({"path": "/etc/passwd"}, 415, "never reads paths"),
        ({"text": "a car", "url": "http://127.0.0.1/x.png"}, 415, "never reads paths"),
        (["a car"], 415, "never reads paths"),
    ],
    ids=["empty", "blank", "not-a-string", "too-long", "k", "filter", "unknown-field", "path", "url", "list"],
)
def test_api_text_refusals(api: tuple[Any, ImageSearchIndex], body: Any, status: int, message: str) -> None:
    response = api[0].post("/api/search", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    _no_traceback(response.text)


def test_api_text_bad_json_and_huge_bodies(api: tuple[Any, ImageSearchIndex]) -> None:
    client = api[0]
    bad = client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    huge = client.post("/api/search", content=b'{"text": "' + b"a" * 200_000 + b'"}',
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "larger than the limit of 64 KB" in huge.json()["error"]


def test_api_text_on_an_index_without_a_text_tower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    with ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(tmp_path / "f.lookalike")) as index, \
            _client(index) as client:
        index.add(_picture(1))
        response = client.post("/api/search", json={"text": "a red car"})
    assert response.status_code == 400
    assert "text tower" in response.json()["error"] and "ClipEmbedder" in response.json()["error"]


def test_page_text_box_searches_by_words(clip_gallery: dict[str, Path]) -> None:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/bootstrap as root (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    expect = sync_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    with ImageSearchIndex(embedder=_clip(), store=LocalStore(clip_gallery["store"])) as index:
        expected = index.search(Text("a red car"), k=10)
    first = Path(expected[0].path).name

    with serve_process(clip_gallery["store"], clip_gallery["root"]) as url, sync_api.sync_playwright() as p:
        browser = _launch_chromium(p)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(url + "/")
            expect(page.locator("#info")).to_contain_text("clip:lookalike-tiny-clip:random-init", timeout=30_000)
            box = page.locator("#text textarea, #text input").first
            expect(box).to_be_visible()
            box.fill("a red car")
            box.press("Enter")
            expect(page.locator("#status")).to_contain_text("10 results for “a red car”", timeout=30_000)
            expect(page.locator("#gallery img")).to_have_count(10)
            captions = page.locator("#gallery .caption-label")
            expect(captions.first).to_contain_text(first)
            expect(captions.first).to_contain_text(f"{expected[0].score:.3f}")
            page.screenshot(path=str(ARTIFACTS / "serve-text-search.png"), full_page=True)

            # An empty text: a readable message, no traceback.
            box.fill(" ")
            box.press("Enter")
            expect(page.locator("#status")).to_contain_text("The text is empty", timeout=30_000)
            _no_traceback(page.content())

            # An uploaded image takes over: the text box empties, the image finds itself.
            box.fill("two cats")
            page.locator("#query input[type=file]").set_input_files(str(clip_gallery["query"]))
            expect(page.locator("#status")).to_contain_text("results for the uploaded image", timeout=30_000)
            expect(box).to_have_value("")
            expect(captions.first).to_contain_text("pic07.png")

            # Words typed after the upload, then the Search button: a text search, the image cleared.
            box.fill("a red car")
            page.locator("#run").click()
            expect(page.locator("#status")).to_contain_text("10 results for “a red car”", timeout=30_000)
            expect(captions.first).to_contain_text(first)
            expect(page.locator("#query img")).to_have_count(0)
        finally:
            browser.close()
