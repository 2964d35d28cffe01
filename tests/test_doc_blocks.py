"""Every Python block in README.md and docs/*.md runs, as a reader would run it.

Each page gets its own temporary folder, prepared with the files its examples name
(``photos/`` with images, ``query.jpg``, ``q.jpg``, ``q2.jpg``, ``a.jpg``, ``b.jpg``, a
Towhee-style ``reverse_image_search.csv`` with ``train/`` and ``test/``), and one namespace:
the blocks of a page run in order, so a later block sees what an earlier one defined, as in
a notebook. Names a snippet takes for granted are there too: ``index`` (an index of
``photos/`` labelled goldfish/tench), ``pil_image``, ``vector`` (2048-d) and, for a test
file, a ``myapp.stores.MyStore`` (a store class of "your app").

A block that defines ``test_*`` functions or ``Test*`` classes is a test file: it is run by
pytest (with the lookalike plugin), and all its tests must pass.

An HTML comment on the line before a block changes how it runs (the reason is shown):

- ``<!-- skip: REASON -->``: not run (it is still compiled); e.g. it needs the internet.
- ``<!-- slow: REASON -->``: run only with the slow tests (``-m slow``).
- ``<!-- fake-embedder: REASON -->``: run with ``FakeEmbedder`` standing in for the model
  embedders (ResNet50 as 2048-d, EfficientNet-Lite0 as 1280-d, any torchvision model as
  2048-d), e.g. because their weights need a download, and ``ClipEmbedder`` (any model and
  weights) by the tiny random CLIP of ``tests/conftest.py``, so text search really runs.
  Everything else is real.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DIRECTIVES = ("skip", "slow", "fake-embedder")

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n", re.M)
_DIRECTIVE = re.compile(r"^<!--\s*(?P<name>[\w-]+)\s*:\s*(?P<reason>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    source: str
    directive: str | None = None
    reason: str = ""

    @property
    def id(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"


def python_blocks(page: Path) -> list[Block]:
    """The fenced ``python`` blocks of a Markdown page, with the directive before each."""
    text = page.read_text(encoding="utf-8")
    blocks: list[Block] = []
    pos = 0
    while (start := _FENCE.search(text, pos)) is not None:
        fence = start.group("fence")
        close = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        end = close.search(text, start.end())
        stop = end.start() if end else len(text)
        pos = end.end() if end else len(text)
        if start.group("info").strip().split(" ")[0].lower() not in ("python", "py", "python3"):
            continue
        before = text[: start.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        match = _DIRECTIVE.match(before)
        blocks.append(
            Block(
                page=page,
                line=text.count("\n", 0, start.start()) + 1,
                source=textwrap.dedent(text[start.end():stop]),
                directive=match.group("name") if match else None,
                reason=match.group("reason") if match else "",
            )
        )
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def _param(block: Block) -> Any:
    marks = [pytest.mark.slow] if block.directive == "slow" else []
    return pytest.param(block, id=block.id, marks=marks)


# -- what a page's folder holds ------------------------------------------------------------
def prepare_folder(folder: Path) -> dict[str, Any]:
    """Write the files the examples name into ``folder``; return the names they assume."""
    import numpy as np

    from lookalike import ImageSearchIndex
    from lookalike.testing import FakeEmbedder, InMemoryStore, make_image, make_images

    photos = make_images(folder / "photos", 12)
    for name, seed in (("query.jpg", 3), ("q.jpg", 5), ("q2.jpg", 8), ("a.jpg", 1), ("b.jpg", 2)):
        make_image(seed, path=folder / name)  # the same pictures as photos/img00N.jpg
    rows = []
    for i, label in enumerate(["goldfish", "tench"] * 3):
        make_image(100 + i, path=folder / "train" / label / f"{label}{i}.JPEG")
        rows.append({"id": str(i), "path": f"train/{label}/{label}{i}.JPEG", "label": label})
    make_image(100, path=folder / "test" / "goldfish" / "n01443537_3883.JPEG")
    with open(folder / "reverse_image_search.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "path", "label"])
        writer.writeheader()
        writer.writerows(rows)

    index = ImageSearchIndex(embedder=FakeEmbedder(dim=2048), store=InMemoryStore())
    index.add_many(photos, metadata=[{"label": ("goldfish", "tench")[i % 2]} for i in range(len(photos))])
    vector = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
    return {"index": index, "pil_image": make_image(9), "vector": vector / np.linalg.norm(vector)}


MY_APP_STORES = '''
from lookalike.testing import InMemoryStore


class MyStore(InMemoryStore):
    """Stands in for a store of your app (takes a path, keeps nothing there)."""

    def __init__(self, path=None):
        super().__init__()
'''


@dataclass
class Page:
    folder: Path
    namespace: dict[str, Any]
    done: set[int] = field(default_factory=set)


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, Page]]:
    opened: dict[Path, Page] = {}
    yield opened
    for page in opened.values():
        index = page.namespace.get("index")
        if hasattr(index, "close"):
            index.close()


@pytest.fixture
def fake_embedders(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Any:
    """A context in which the model embedders are FakeEmbedders of the models' dims, and
    ClipEmbedder the tiny random CLIP (when open_clip is installed)."""
    import importlib.util

    from lookalike.embedders import efficientnet_lite, torchvision
    from lookalike.testing import FakeEmbedder

    @contextlib.contextmanager
    def swapped() -> Iterator[None]:
        with monkeypatch.context() as m:
            m.setattr(torchvision, "ResNet50Embedder", lambda *a, **k: FakeEmbedder(dim=2048))
            m.setattr(torchvision, "TorchvisionEmbedder", lambda *a, **k: FakeEmbedder(dim=2048))
            m.setattr(efficientnet_lite, "EfficientNetLite0Embedder", lambda *a, **k: FakeEmbedder(dim=1280))
            if importlib.util.find_spec("open_clip") is not None:
                from lookalike.embedders import clip

                tiny = request.getfixturevalue("tiny_clip")
                real = clip.ClipEmbedder
                m.setattr(clip, "ClipEmbedder", lambda *a, weights=None, **k: real(tiny, None, **k))
            yield

    return swapped


def _is_test_file(source: str) -> bool:
    tree = ast.parse(source)
    return any(
        (isinstance(node, ast.FunctionDef) and node.name.startswith("test"))
        or (isinstance(node, ast.ClassDef) and node.name.startswith("Test"))
        for node in tree.body
    )


def _run(block: Block, page: Page, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    code = compile(block.source, block.id, "exec")
    if _is_test_file(block.source):
        pytester: pytest.Pytester = request.getfixturevalue("pytester")
        pytester.makepyfile(**{"myapp/__init__": "", "myapp/stores": MY_APP_STORES})
        pytester.makepyfile(test_doc_block=block.source)
        result = pytester.runpytest("-p", "no:cacheprovider", "-p", "lookalike.testing.plugin", "-q")
        outcomes = result.parseoutcomes()
        assert result.ret == 0 and outcomes.get("passed", 0) > 0, (
            f"{block.id}: the tests in this block must pass:\n" + "\n".join(result.outlines[-30:])
        )
        return
    monkeypatch.chdir(page.folder)
    try:
        with _time_limit(BLOCK_SECONDS, block):
            if block.directive == "fake-embedder":
                with request.getfixturevalue("fake_embedders")():
                    exec(code, page.namespace)
            else:
                exec(code, page.namespace)
    except Exception as exc:
        raise AssertionError(
            f"{block.id} raised {type(exc).__name__}: {exc}\n"
            "Fix the block; if it cannot run offline or in a test, put one of these on the line "
            "before it: <!-- skip: REASON -->, <!-- slow: REASON -->, <!-- fake-embedder: REASON -->"
        ) from exc


BLOCK_SECONDS = 120


@contextlib.contextmanager
def _time_limit(seconds: int, block: Block) -> Iterator[None]:
    """Interrupt a block that runs too long (a server, a wait) instead of hanging the suite."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise TimeoutError(f"{block.id} ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_doc_block_runs(
    block: Block, pages: dict[Path, Page], tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if block.directive is not None:
        assert block.directive in DIRECTIVES, f"{block.id}: unknown directive {block.directive!r}"
        assert block.reason, f"{block.id}: <!-- {block.directive}: ... --> needs a reason"
    if block.directive == "skip":
        compile(block.source, block.id, "exec")  # a skipped block must still be Python
        pytest.skip(f"{block.id}: {block.reason}")
    page = pages.get(block.page)
    if page is None:
        folder = tmp_path_factory.mktemp(block.page.stem)
        page = pages[block.page] = Page(folder, {"__name__": "__doc_block__"})
        page.namespace.update(prepare_folder(folder))
    # the blocks before this one on the page run first (once), as a reader would have
    for earlier in python_blocks(block.page):
        if earlier.line >= block.line:
            break
        if earlier.line in page.done or earlier.directive in ("skip", "slow"):
            continue
        page.done.add(earlier.line)
        try:
            _run(earlier, page, request, monkeypatch)
        except Exception as exc:
            pytest.fail(f"{block.id}: the block before it at {earlier.id} failed: {exc!r}")
    if block.line not in page.done:
        page.done.add(block.line)
        _run(block, page, request, monkeypatch)


def test_blocks_are_found() -> None:
    ids = {b.id for b in BLOCKS}
    assert any(i.startswith("README.md:") for i in ids)
    assert any(b.page.name == "testing.md" for b in BLOCKS)
    skipped = [b for b in BLOCKS if b.directive == "skip"]
    assert all(b.reason for b in skipped)
    assert len(skipped) <= len(BLOCKS) // 3, "most doc blocks should run"


def test_a_failing_or_hanging_block_is_reported_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    page = Page(tmp_path, {})
    broken = Block(tmp_path / "p.md", 7, "open('nowhere.jpg')\n")
    with pytest.raises(AssertionError, match=r"(?s)p.md:7 raised FileNotFoundError.*<!-- skip: REASON -->"):
        _run(broken, page, request, monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "BLOCK_SECONDS", 1)
    hanging = Block(tmp_path / "p.md", 9, "import time\nwhile True:\n    time.sleep(0.05)\n")
    with pytest.raises(AssertionError, match=r"p.md:9 raised TimeoutError: .* more than 1 s"):
        _run(hanging, page, request, monkeypatch)


def test_the_parser_reads_fences_and_directives(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- skip: needs internet -->\n```python\ny = 2\n```\n"
        "````markdown\n```python\nnot a block\n```\n````\n\n```bash\nls\n```\n"
        "<!-- fake-embedder: weights need a download -->\n~~~py\nz = 3\n~~~\n"
    )
    blocks = python_blocks(page)
    assert [(b.line, b.source, b.directive, b.reason) for b in blocks] == [
        (3, "x = 1\n", None, ""),
        (8, "y = 2\n", "skip", "needs internet"),
        (21, "z = 3\n", "fake-embedder", "weights need a download"),
    ]
