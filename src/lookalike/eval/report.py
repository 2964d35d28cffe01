"""Present :class:`~lookalike.eval.EvalReport` objects: a text table, JSON, one HTML page.

The HTML page is self-contained (thumbnails are inline ``data:`` URIs, no scripts, no
external files): the summary table, then for each report every query with its top-k
thumbnails, each marked hit or miss with its score, worst queries first. Every piece of
text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .evaluation import EvalReport, QueryResult

__all__ = ["format_table", "render_html", "write_html"]


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _table_rows(reports: Sequence[EvalReport]) -> tuple[list[str], list[list[str]]]:
    k = reports[0].k if reports else 10
    header = ["name", "refine", f"mHR@{k}", f"Towhee-mAP@{k}", f"mAP@{k}", "recall@1",
              "queries", "gallery", "index s", "query embed s", "search ms/q"]
    rows = [
        [r.name, r.refine or "-", f"{r.mhr:.3f}", f"{r.map_towhee:.3f}", f"{r.map:.3f}",
         f"{r.recall_at_1:.3f}", str(r.queries), str(r.gallery), _fmt_seconds(r.index_seconds),
         _fmt_seconds(r.embed_seconds), f"{1000 * r.search_seconds / max(1, r.queries):.2f}"]
        for r in reports
    ]
    return header, rows


def format_table(reports: Sequence[EvalReport]) -> str:
    """A plain-text table, one line per report."""
    header, rows = _table_rows(reports)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _Thumbs:
    """Inline thumbnails, each image encoded once and referenced by a CSS class."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.classes: dict[str, str] = {}
        self.rules: list[str] = []

    def css_class(self, path: str | None) -> str | None:
        if path is None:
            return None
        if path not in self.classes:
            uri = self._data_uri(path)
            if uri is None:
                return None
            name = f"i{len(self.classes)}"
            self.classes[path] = name
            self.rules.append(f".{name}{{background-image:url({uri})}}")
        return self.classes[path]

    def _data_uri(self, path: str) -> str | None:
        from ..errors import ImageLoadError
        from ..images import load_image

        try:
            img = load_image(path, min_size=self.size)
        except ImageLoadError:
            return None
        img.thumbnail((self.size, self.size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=75)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
.q{display:flex;gap:6px;align-items:flex-start;margin:0 0 10px;padding-bottom:8px;border-bottom:1px solid #eee}
.card{width:SIZEpx;font-size:11px;text-align:center;overflow-wrap:anywhere}
.img{width:SIZEpx;height:SIZEpx;background:#eee center/contain no-repeat;box-sizing:border-box;border:4px solid #fff}
.query .img{border-color:#36c}.hit .img{border-color:#2a2}.miss .img{border-color:#d33}
.hit b{color:#2a2}.miss b{color:#d33}
.meta{width:11em;font-size:12px;overflow-wrap:anywhere}
details{margin:0 0 1.5em}summary{cursor:pointer;font-weight:600}
"""


def _card(thumbs: _Thumbs, path: str | None, kind: str, caption: str, title: str) -> str:
    name = thumbs.css_class(path)
    cls = f"img {name}" if name else "img"
    return (f'<div class="card {kind}" title="{html.escape(title)}"><div class="{cls}"></div>'
            f"{caption}</div>")


def _query_block(thumbs: _Thumbs, row: QueryResult) -> str:
    parts = [
        f'<div class="meta"><b>{html.escape(row.label or row.name)}</b><br>'
        f"hits {sum(row.is_relevant)}/{row.relevant}<br>AP {row.average_precision:.3f}<br>"
        f"Towhee-AP {row.towhee_average_precision:.3f}</div>",
        _card(thumbs, row.path, "query", "query", row.name),
    ]
    for rank, (hit, ok) in enumerate(zip(row.hits, row.is_relevant), 1):
        label = hit.metadata.get("label")
        mark = "hit" if ok else "miss"
        caption = f"<b>{rank}. {mark}</b> {hit.score:.3f}<br>{html.escape(str(label or ''))}"
        parts.append(_card(thumbs, hit.path, mark, caption, hit.path or hit.id))
    return '<div class="q">' + "".join(parts) + "</div>"


def render_html(reports: Sequence[EvalReport], *, title: str = "lookalike eval", thumb_size: int = 96,
                notes: Sequence[str] = ()) -> str:
    """The whole page as a string (see the module docstring)."""
    thumbs = _Thumbs(thumb_size)
    header, rows = _table_rows(reports)
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
             + "</table>")
    sections = []
    for i, report in enumerate(reports):
        blocks = "".join(_query_block(thumbs, row) for row in report.worst_first())
        opened = " open" if i == 0 else ""
        sections.append(
            f"<details{opened}><summary>{html.escape(str(report))}"
            f"{' + ' + html.escape(report.refine) if report.refine else ''}</summary>"
            f"<p>Embedder <code>{html.escape(report.embedder)}</code>, store {html.escape(report.store)}; "
            "queries worst first (by AP); green = relevant, red = not.</p>"
            f"{blocks}</details>"
        )
    return _page(title, notes, thumbs, table + "".join(sections))


def _page(title: str, notes: Sequence[str], thumbs: _Thumbs, body: str) -> str:
    """A whole self-contained HTML page: the title, the notes, then ``body``, with the
    thumbnails' CSS rules inlined."""
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    css = _CSS.replace("SIZE", str(thumbs.size)) + "\n".join(thumbs.rules)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{note_html}{body}</body></html>\n"
    )


def write_html(reports: Sequence[EvalReport], path: str | os.PathLike[str], **options: Any) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8) and return the path."""
    out = Path(path).expanduser()
    out.write_text(render_html(reports, **options), encoding="utf-8")
    return out
