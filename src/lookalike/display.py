"""Results you can see: search results and add reports in notebooks, as text and as tables.

:class:`SearchResults` is what :meth:`~lookalike.ImageSearchIndex.search` returns: a
``list`` of :class:`~lookalike.Hit` (index it, iterate it, compare it to a list) that a
notebook shows as a grid of thumbnails, best first, each with its rank, score, label and
file name. The HTML is self-contained: thumbnails (at most ``THUMBNAIL_SIZE`` pixels) are
inlined as ``data:image/jpeg`` URIs, with no server and no JavaScript, so the grid survives
``jupyter nbconvert --to html``. They are made only when the grid is rendered, in a few
threads, and kept in a small cache keyed by file, modification time and size. An image that
is gone or unreadable shows a placeholder, never an exception.

Nothing here imports torch or pandas at import time; Pillow is imported when a thumbnail
is made, pandas by :meth:`SearchResults.to_pandas`.
"""

from __future__ import annotations

import base64
import collections
import html
import io
import os
import stat
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, SupportsIndex, overload

from .errors import MissingDependencyError
from .images import DEFAULT_MAX_PIXELS
from .types import AddReport, Hit, Mix, Record, Text, format_rate

if TYPE_CHECKING:
    import pandas
    from PIL import Image

__all__ = [
    "MAX_TILES",
    "THUMBNAIL_SIZE",
    "SearchResults",
    "clear_thumbnail_cache",
    "describe_query",
    "hits_html",
    "report_html",
    "report_text",
]

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 128
#: Hits shown in one grid; the rest are counted below it (slice the results to see them).
MAX_TILES = 100
#: Rows of the text repr before "... and N more".
MAX_TEXT_ROWS = 20
#: Failures listed by an AddReport's repr and HTML table.
MAX_FAILURES_TEXT = 5
MAX_FAILURES_HTML = 50
#: A picture with more pixels than this (after JPEG's reduced-scale decoding) is not previewed.
PREVIEW_MAX_PIXELS = 50_000_000
#: Thumbnails kept in memory (about 5 KB each).
CACHE_SIZE = 1024

_ORIENTATION = 0x0112


class _NoPreview(Exception):
    """No thumbnail for this image; the message is the placeholder's text."""


class _NeedsPandas(MissingDependencyError):
    """``to_pandas`` without pandas installed."""

    def __init__(self, package: str = "pandas", extra: str = "", feature: str = "SearchResults.to_pandas()") -> None:
        self.package, self.extra, self.feature = package, extra, feature
        ImportError.__init__(
            self, f"{feature} needs the 'pandas' package, which is not installed. "
            "Install it with: pip install pandas"
        )


class SearchResults(list[Hit]):
    """The hits of one search, best first: a ``list[Hit]`` that shows itself.

    - in a notebook, a grid of thumbnails with rank, score, label and file name
      (``_repr_html_``), with the query beside it when it is an image;
    - as text, one short line per hit (``repr``), without ids or absolute paths;
    - :meth:`to_pandas`, and the columns :attr:`ids`, :attr:`paths`, :attr:`scores`.

    ``query`` is what was searched for (a path, bytes, a PIL image, a vector, or the
    :class:`~lookalike.Hit` / :class:`~lookalike.Record` for "more like this"), or ``None``.
    Slicing keeps the type and the query, so ``hits[:5]`` is a smaller grid.
    """

    query: Any

    def __init__(self, hits: Iterable[Hit] = (), query: Any = None) -> None:
        super().__init__(hits)
        self.query = query

    @overload
    def __getitem__(self, index: SupportsIndex) -> Hit: ...

    @overload
    def __getitem__(self, index: slice) -> SearchResults: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Hit | SearchResults:
        if isinstance(index, slice):
            return SearchResults(super().__getitem__(index), query=self.query)
        return super().__getitem__(index)

    @property
    def ids(self) -> list[str]:
        return [h.id for h in self]

    @property
    def paths(self) -> list[str | None]:
        return [h.path for h in self]

    @property
    def scores(self) -> list[float]:
        return [h.score for h in self]

    def to_pandas(self) -> pandas.DataFrame:
        """One row per hit, best first, indexed by rank (1, 2, ...): ``id``, ``score``,
        ``path`` and every metadata field (a field a hit lacks is missing, as pandas writes it).

        Raises:
            MissingDependencyError: pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise _NeedsPandas() from None
        fields: dict[str, None] = {}
        for hit in self:
            fields.update(dict.fromkeys(hit.metadata))
        columns = {name: (f"metadata_{name}" if name in ("id", "score", "path") else name) for name in fields}
        rows = [
            {"id": h.id, "score": h.score, "path": h.path,
             **{columns[name]: h.metadata.get(name) for name in fields}}
            for h in self
        ]
        frame = pd.DataFrame(rows, columns=["id", "score", "path", *columns.values()],
                             index=pd.RangeIndex(1, len(self) + 1, name="rank"))
        return frame

    def __repr__(self) -> str:
        head = f"{len(self)} hit{'' if len(self) == 1 else 's'}"
        about = describe_query(self.query)
        if about:
            head += f" for {about}"
        if not self:
            return head
        shown = list(self) if len(self) <= MAX_TEXT_ROWS + 2 else list(self)[:MAX_TEXT_ROWS]
        labels = [_label(h) for h in shown]
        width = max(len(label) for label in labels)
        lines = [head + ":"]
        for rank, (hit, label) in enumerate(zip(shown, labels), 1):
            label_part = f"  {label:<{width}}" if width else ""
            lines.append(f"{rank:>4}  {hit.score:.2f}{label_part}  {_name(hit)}")
        if len(shown) < len(self):
            lines.append(f"   ... and {len(self) - len(shown)} more (hits[{len(shown)}:] shows them)")
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        return hits_html(self, query=self.query)


# -- text ------------------------------------------------------------------------------
def _clean(text: str, limit: int = 40) -> str:
    """``text`` made safe for one line: quoted when it has control characters, shortened."""
    shown = text if text.isprintable() else repr(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "\u2026"


def _short_id(id: str) -> str:
    return id if len(id) <= 16 else id[:15] + "\u2026"


def _name(hit: Hit | Record) -> str:
    """A hit's file name (not its folder), or a shortened id when it has no file."""
    if hit.path:
        return _clean(os.path.basename(hit.path) or hit.path)
    return _short_id(hit.id)


def _label(hit: Hit) -> str:
    label = hit.metadata.get("label")
    return "" if label is None else _clean(str(label), 24)


def describe_query(query: Any) -> str:
    """A few words for what was searched for (its file name, not its folder)."""
    if query is None:
        return ""
    if isinstance(query, (Hit, Record)):
        return f"more like {_name(query)}"
    if isinstance(query, Text):
        return f"“{query.text}”"
    if isinstance(query, Mix):
        return " + ".join(f"{w:g} × {describe_query(q)}" for q, w in query.parts).replace("+ -", "- ")
    if isinstance(query, (str, os.PathLike)):
        path = os.fspath(query)
        return _clean(os.path.basename(path) or path)
    if isinstance(query, (bytes, bytearray, memoryview)):
        return f"<{len(query)} bytes>"
    size = getattr(query, "size", None)
    if type(query).__module__.startswith("PIL.") and isinstance(size, tuple):
        filename = getattr(query, "filename", None)
        if isinstance(filename, str) and filename:
            return _clean(os.path.basename(filename))
        return f"<{size[0]}x{size[1]} image>"
    shape = getattr(query, "shape", None)
    if isinstance(shape, tuple):
        return "<a vector>"
    return f"<{type(query).__name__}>"


def report_text(report: AddReport) -> str:
    """An :class:`AddReport`'s repr: the counts, time and rate, and the first failures."""
    lines = [f"AddReport: {report}"]
    for failure in report.failed[:MAX_FAILURES_TEXT]:
        lines.append(f"  {_clean(failure.source, 60)}: {_clean(failure.reason, 100)}")
    more = len(report.failed) - MAX_FAILURES_TEXT
    if more > 0:
        lines.append(f"  ... and {more} more (report.failed lists them all)")
    return "\n".join(lines)


# -- HTML ------------------------------------------------------------------------------
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def report_html(report: AddReport) -> str:
    """An :class:`AddReport` for a notebook: the summary line and a table of failures."""
    parts = [f'<div class="lookalike-report" style="font-family:sans-serif;font-size:13px">'
             f"<div>{_e(report)}</div>"]
    if report.failed:
        parts.append('<table style="border-collapse:collapse;margin-top:4px">'
                     '<thead><tr><th style="text-align:right;padding:2px 6px">#</th>'
                     '<th style="text-align:left;padding:2px 6px">failed</th>'
                     '<th style="text-align:left;padding:2px 6px">reason</th></tr></thead><tbody>')
        for n, failure in enumerate(report.failed[:MAX_FAILURES_HTML], 1):
            parts.append(f'<tr><td style="text-align:right;padding:2px 6px">{n}</td>'
                         f'<td style="text-align:left;padding:2px 6px">{_e(failure.source)}</td>'
                         f'<td style="text-align:left;padding:2px 6px">{_e(failure.reason)}</td></tr>')
        parts.append("</tbody></table>")
        more = len(report.failed) - MAX_FAILURES_HTML
        if more > 0:
            parts.append(f"<div>... and {more} more (report.failed lists them all)</div>")
    parts.append("</div>")
    return "".join(parts)


_TILE = (f"display:inline-block;vertical-align:top;width:{THUMBNAIL_SIZE}px;margin:0 8px 8px 0;"
         "text-align:center;overflow:hidden")
_FRAME = (f"width:{THUMBNAIL_SIZE}px;height:{THUMBNAIL_SIZE}px;display:flex;align-items:center;"
          "justify-content:center;background:#f2f2f2;overflow:hidden;")
_LINE = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis"


def hits_html(hits: Sequence[Hit], *, query: Any = None, ranked: bool = True) -> str:
    """A grid of thumbnails for ``hits`` (at most :data:`MAX_TILES`), best first, with the
    query's own thumbnail first when it is an image."""
    shown = list(hits[:MAX_TILES])
    query_source = _query_source(query)
    sources: list[Any] = [h.path for h in shown]
    if query_source is not None:
        sources.append(query_source)
    thumbnails = _thumbnails(sources)
    tiles = []
    if query_source is not None:
        tiles.append(_tile(thumbnails[-1], ["<b>query</b>", _e(describe_query(query))], query=True))
    for rank, hit in enumerate(shown, 1):
        first = f"<b>#{rank}</b> {hit.score:.2f}" if ranked else f"{hit.score:.2f}"
        label = _label(hit)
        lines = [first] + ([_e(label)] if label else []) + [_e(_name(hit))]
        tiles.append(_tile(thumbnails[rank - 1], lines))
    head = f"{len(hits)} hit{'' if len(hits) == 1 else 's'}"
    about = describe_query(query)
    if about:
        head += f" for {_e(about)}"
    out = ['<div class="lookalike-results" style="font-family:sans-serif;font-size:12px;line-height:1.4">']
    if ranked:
        out.append(f'<div style="margin:0 0 6px">{head}</div>')
    out.append('<div style="display:flex;flex-wrap:wrap;align-items:flex-start">')
    out.extend(tiles)
    out.append("</div>")
    if len(hits) > len(shown):
        out.append(f"<div>... and {len(hits) - len(shown)} more (hits[{len(shown)}:] shows them)</div>")
    out.append("</div>")
    return "".join(out)


def _tile(thumbnail: tuple[str | None, str], lines: list[str], *, query: bool = False) -> str:
    uri, note = thumbnail
    border = "border:3px solid #e8890c;box-sizing:border-box;" if query else ""
    if uri is not None:
        picture = f'<img src="{uri}" alt="" style="max-width:100%;max-height:100%">'
    else:
        picture = f'<span style="color:#888;padding:4px">{_e(note)}</span>'
    text = "".join(f'<div style="{_LINE}">{line}</div>' for line in lines)
    return f'<div style="{_TILE}"><div style="{_FRAME}{border}">{picture}</div>{text}</div>'


def _query_source(query: Any) -> Any:
    """What to draw for the query: a path, bytes or PIL image; ``None`` for a vector."""
    if query is None:
        return None
    if isinstance(query, (Hit, Record)):
        return query.path
    if isinstance(query, (str, os.PathLike, bytes, bytearray, memoryview)):
        return query
    if type(query).__module__.startswith("PIL.") and hasattr(query, "getpixel"):
        return query
    return None


# -- thumbnails ------------------------------------------------------------------------
_cache: collections.OrderedDict[tuple[str, int, int], str] = collections.OrderedDict()
_cache_lock = threading.Lock()


def _thumbnails(sources: Sequence[Any]) -> list[tuple[str | None, str]]:
    """``(data URI, "")`` or ``(None, placeholder text)`` for each source, made in threads."""
    # a file shown twice (the query is often its own first hit) is made once
    keys = [os.fspath(s) if isinstance(s, (str, os.PathLike)) else id(s) for s in sources]
    unique = {key: source for key, source in zip(keys, sources)}
    workers = min(8, os.cpu_count() or 1, len(unique))
    if workers <= 1:
        made = [_thumbnail(s) for s in unique.values()]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-thumbnail") as pool:
            made = list(pool.map(_thumbnail, unique.values()))
    by_key = dict(zip(unique, made))
    return [by_key[key] for key in keys]


def _thumbnail(source: Any) -> tuple[str | None, str]:
    try:
        if source is None:
            return None, "no file"
        if isinstance(source, (str, os.PathLike)):
            return _file_thumbnail(os.fspath(source)), ""
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _make_thumbnail(io.BytesIO(bytes(source))), ""
        return _make_thumbnail(source), ""
    except _NoPreview as exc:
        return None, str(exc)
    except Exception:  # a preview must never break the display
        return None, "cannot read"


def _file_thumbnail(path: str) -> str:
    try:
        # O_NONBLOCK: opening a FIFO or device must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise _NoPreview("image missing") from None
    except IsADirectoryError:
        raise _NoPreview("not a file") from None
    except OSError:
        raise _NoPreview("cannot read") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _NoPreview("not a file")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        key = (path, info.st_mtime_ns, info.st_size)
        with _cache_lock:
            cached = _cache.get(key)
            if cached is not None:
                _cache.move_to_end(key)
                return cached
        uri = _make_thumbnail(fh)
    with _cache_lock:
        _cache[key] = uri
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return uri


def _make_thumbnail(source: Any) -> str:
    """A JPEG data URI at most THUMBNAIL_SIZE pixels a side, from an open file, a
    ``BytesIO`` or a PIL image (which is left untouched)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = source if isinstance(source, Image.Image) else Image.open(source)
        except Image.DecompressionBombError:
            raise _NoPreview("too large to preview") from None
        width, height = img.size
        if width * height > DEFAULT_MAX_PIXELS or width == 0 or height == 0:
            raise _NoPreview("too large to preview" if width and height else "no pixels")
        try:
            orientation = int(img.getexif().get(_ORIENTATION, 1))
        except Exception:
            orientation = 1
        if img is not source and getattr(img, "is_animated", False):
            img.seek(0)  # the first frame stands for the image
        if img is not source:  # a file: JPEGs decode at 1/2 to 1/8 scale, to about twice the thumbnail
            scale = 2 * THUMBNAIL_SIZE / max(width, height)
            if scale < 1:
                img.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))
        if img.size[0] * img.size[1] > PREVIEW_MAX_PIXELS:
            raise _NoPreview("too large to preview")
        small = _small_rgb(img)
    transpose = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}.get(orientation)
    if transpose is not None:
        small = small.transpose(transpose)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _small_rgb(img: Image.Image) -> Image.Image:
    """A new RGB image that fits in THUMBNAIL_SIZE, transparent areas on white."""
    from PIL import Image

    from .images import _to_rgb

    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
        img = img.convert("RGB")
    elif img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = _to_rgb(img, "thumbnail", DEFAULT_MAX_PIXELS)  # 16-bit and float: scaled to 8 bits
    width, height = img.size
    scale = min(1.0, THUMBNAIL_SIZE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    if small.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", small.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, small.convert("RGBA")).convert("RGB")
    return small.convert("RGB")


def clear_thumbnail_cache() -> None:
    """Forget the thumbnails made so far (they are remade on the next render)."""
    with _cache_lock:
        _cache.clear()


# -- progress --------------------------------------------------------------------------
def _in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython with a kernel attached)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _has_widgets() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("ipywidgets") is not None
    except (ImportError, ValueError):
        return False


def _bar_class() -> tuple[Any, Any]:
    """tqdm's widget bar in a notebook with ipywidgets; else a text bar (on stdout in a
    notebook, where stderr would draw it in a warning box; on stderr elsewhere)."""
    if _in_notebook():
        if _has_widgets():
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm, None
        from tqdm.std import tqdm as text_tqdm

        return text_tqdm, sys.stdout
    from tqdm.std import tqdm as text_tqdm

    return text_tqdm, sys.stderr


def tqdm_bar(**options: Any) -> Any:
    """A tqdm bar of the kind that suits where it is shown (see :func:`_bar_class`)."""
    cls, file = _bar_class()
    if file is not None:
        options = {"file": file, "dynamic_ncols": True, **options}
    else:
        options = {k: v for k, v in options.items() if k not in ("file", "dynamic_ncols")}
    return cls(**options)


class Progress:
    """``add_many``'s progress bar: images done out of the total, and the same embedded
    images per second as :attr:`AddReport.rate` (so the bar and the report agree)."""

    def __init__(self, total: int | None, enabled: bool, report: AddReport, started: float) -> None:
        self.report = report
        self.started = started
        self.bar: Any = None
        if not enabled:
            return
        if total is None:
            bar_format = "{desc}: {n_fmt} img [{elapsed}{postfix}]"
        else:
            bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
        self.bar = tqdm_bar(total=total, unit="img", desc="indexing", bar_format=bar_format)

    def update(self, n: int) -> None:
        if self.bar is None:
            return
        embedded = self.report.embedded or 0
        elapsed = time.perf_counter() - self.started
        if embedded and elapsed > 0:
            self.bar.set_postfix_str(format_rate(embedded / elapsed), refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        """Show the report's own rate (``report.seconds`` is set by then) and close."""
        if self.bar is None:
            return
        rate = self.report.rate
        self.bar.set_postfix_str("" if rate is None else format_rate(rate), refresh=False)
        self.bar.refresh()
        self.bar.close()


def progress_bar(total: int | None, enabled: bool, report: AddReport, started: float) -> Progress:
    """The progress bar ``add_many`` drives (a no-op when ``enabled`` is false)."""
    return Progress(total, enabled, report, started)

