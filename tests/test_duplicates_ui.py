"""The web page's duplicates panel (issue #19): its content, and in the browser."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lookalike import ImageSearchIndex
from lookalike.duplicates_ui import duplicates_html
from lookalike.embedders import FakeEmbedder
from lookalike.serve import SearchService
from lookalike.stores import LocalStore

from .conftest import make_image
from .test_serve import ARTIFACTS, CHROMIUM, _launch_chromium, _no_traceback, serve_process


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six pictures, two of them with a re-saved copy, indexed with the fake embedder."""
    root = tmp_path_factory.mktemp("dupes-ui")
    folder = root / "photos"
    folder.mkdir()
    for i in range(6):
        make_image(i, size=(160, 120)).save(folder / f"p{i}.png")
    make_image(1, size=(160, 120)).resize((80, 60)).save(folder / "p1-small.jpg", quality=80)
    make_image(4, size=(160, 120)).save(folder / "p4-<b>resaved.jpg", quality=40)
    with ImageSearchIndex(FakeEmbedder(), LocalStore(root / "s.lookalike")) as index:
        assert index.add_many(sorted(folder.iterdir())).ok
    return root


def test_panel_content(photos: Path) -> None:
    service = SearchService(ImageSearchIndex(FakeEmbedder(), LocalStore(photos / "s.lookalike")))
    page = duplicates_html(service, 0.95)
    assert page.count('class="q"') == 2 and page.count("data:image/jpeg;base64,") == 4
    assert "<b>resaved" not in page and "&lt;b&gt;resaved" in page
    default = duplicates_html(service, None)  # the fake model has no calibration: said, not hidden
    assert "no calibrated duplicate threshold" in default and "0.900" in default
    assert "threshold must be a cosine similarity" in duplicates_html(service, 2.0)
    assert "No near-duplicates" in duplicates_html(service, 0.9999999)
    big = duplicates_html(service, 0.95, max_images=3)
    assert "holds 8 images" in big and "lookalike dupes --report" in big
    service.index.close()


@pytest.fixture(scope="module")
def server(photos: Path) -> Iterator[str]:
    pytest.importorskip("gradio", reason="the [ui] extra (gradio) is not installed")
    with serve_process(photos / "s.lookalike", photos) as url:
        yield url


def test_page_lists_duplicate_groups(server: str) -> None:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/bootstrap as root (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    expect = sync_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = _launch_chromium(p)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.goto(server + "/")
            expect(page.locator("#info")).to_contain_text("8 images", timeout=30_000)
            page.get_by_text("Duplicates in the index").click()
            page.locator("#dupes-threshold input").fill("0.95")
            page.locator("#dupes-run").click()
            rows = page.locator("#dupes-groups .q")
            expect(rows).to_have_count(2, timeout=30_000)
            expect(rows.first.locator(".card")).to_have_count(2)
            expect(rows.first.locator("img.img")).to_have_count(2)  # the thumbnails survive sanitising
            assert rows.first.locator("img.img").first.evaluate("e => e.naturalWidth") > 0
            expect(page.locator("#dupes-groups")).to_contain_text("keep")
            expect(page.locator("#dupes-groups")).to_contain_text("<b>resaved")  # shown as text
            page.screenshot(path=str(ARTIFACTS / "serve-duplicates.png"), full_page=True)
            page.locator("#dupes-threshold input").fill("3")
            page.locator("#dupes-run").click()
            expect(page.locator("#dupes-groups")).to_contain_text("threshold must be", timeout=30_000)
            _no_traceback(page.content())
        finally:
            browser.close()
