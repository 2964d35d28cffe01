"""Hostile inputs for the result display: files that block, lie, hide or inject."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from pathlib import Path

import pytest

from lookalike import Hit, ImageSearchIndex
from lookalike import display as display_module
from lookalike.display import SearchResults, clear_thumbnail_cache
from lookalike.embedders import FakeEmbedder
from lookalike.stores import InMemoryStore

from ..conftest import make_image


@pytest.fixture(autouse=True)
def fresh_thumbnails() -> None:
    clear_thumbnail_cache()


def _render(results: SearchResults, timeout: float = 20.0) -> str:
    """Render in a thread, so a render that blocks fails the test instead of hanging it."""
    out: list[str] = []
    worker = threading.Thread(target=lambda: out.append(results._repr_html_()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "rendering blocked"
    return out[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_an_image_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    markup = _render(SearchResults([Hit("a", 0.9, str(fifo))], query=str(fifo)))
    assert markup.count("not a file") == 2


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_not_decoded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(100_000, 100_000))
    wide = tmp_path / "wide.png"
    wide.write_bytes(_png_header(60_000, 1_000))  # under the bomb limit, over the preview limit
    markup = _render(SearchResults([Hit("a", 0.9, str(bomb)), Hit("b", 0.8, str(wide))], query=bomb.read_bytes()))
    assert markup.count("too large to preview") == 3


def test_names_and_labels_cannot_inject_markup(tmp_path: Path) -> None:
    name = '<img src=x onerror="alert(1)">.png'
    path = tmp_path / name
    make_image(1).save(path, format="PNG")
    hits = SearchResults([Hit("a", 0.9, str(path), {"label": "<script>alert(2)</script>"})], query=str(path))
    markup = _render(hits)
    assert "<script" not in markup and "onerror=\"alert" not in markup and "<img src=x" not in markup
    assert "&lt;script&gt;" in markup and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.png" in markup
    assert markup.count('<img src="data:image/jpeg;base64,') == 2


def test_control_characters_in_names_keep_one_line_per_hit(tmp_path: Path) -> None:
    hits = SearchResults([
        Hit("a", 0.9, "/photos/two\nlines.jpg", {"label": "tab\there"}),
        Hit("b", 0.8, "/photos/" + "long" * 50 + ".jpg", {"label": "x" * 200}),
        Hit("c", 0.7, "/photos/escape\x1b[31m.jpg"),
    ])
    lines = repr(hits).splitlines()
    assert len(lines) == 4
    assert "'two\\nlines.jpg'" in lines[1] and "'tab\\there'" in lines[1]
    assert "\x1b" not in repr(hits) and max(len(line) for line in lines) < 100


def test_read_errors_and_crashing_decoders_show_a_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    denied, boom = tmp_path / "denied.png", tmp_path / "boom.png"
    make_image(1).save(denied)
    make_image(2).save(boom)
    real_open = os.open

    def guarded_open(path: object, flags: int, *args: object) -> int:
        if str(path) == str(denied):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", guarded_open)
    real_make = display_module._make_thumbnail

    def crashing(source: object) -> str:
        if os.fstat(source.fileno()).st_ino == boom.stat().st_ino:  # type: ignore[attr-defined]
            raise MemoryError("no room")
        return real_make(source)

    monkeypatch.setattr(display_module, "_make_thumbnail", crashing)
    markup = _render(SearchResults([Hit("a", 0.9, str(denied)), Hit("b", 0.8, str(boom))]))
    assert markup.count("cannot read") == 2


def test_a_file_replaced_after_rendering_is_drawn_again(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    make_image(1).save(path)
    hits = SearchResults([Hit("a", 0.9, str(path))])
    before = _render(hits)
    make_image(2, (120, 60)).save(path)
    os.utime(path, ns=(1, 1))  # a different modification time, even on coarse clocks
    assert _render(hits) != before


def test_search_results_from_an_in_memory_image_index_have_no_files() -> None:
    index = ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore())
    buf = io.BytesIO()
    make_image(3).save(buf, format="PNG")
    index.add(buf.getvalue())
    hits = index.search(make_image(3), k=1)
    markup = _render(hits)
    assert "no file" in markup and markup.count("data:image/jpeg") == 1  # only the query
    assert hits[0].id.startswith("sha256-") and hits[0].id not in repr(hits)
