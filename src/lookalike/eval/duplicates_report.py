"""Show :class:`~lookalike.duplicates.DuplicateGroups`: an HTML page, or a notebook fragment.

Same style and helpers as the eval report (:mod:`lookalike.eval.report`): each group is
one row of thumbnails, the representative first (blue frame, "keep"), then the others
with their cosine similarity to it. Self-contained (inline thumbnails, no scripts); every
piece of text is HTML-escaped.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .report import _CSS, _card, _page, _Thumbs

if TYPE_CHECKING:
    from ..duplicates import DuplicateGroup, DuplicateGroups

__all__ = ["render_groups", "render_html", "write_html"]


def _row(thumbs: _Thumbs, number: int, group: DuplicateGroup, inline: bool) -> str:
    card = _inline_card if inline else _card
    rep = group.representative
    parts = [
        f'<div class="meta"><b>group {number}</b><br>{len(group)} images<br>'
        f"lowest {min(h.score for h in group):.3f}</div>",
        card(thumbs, rep.path, "query", f"<b>keep</b><br>{html.escape(_name(rep.path or rep.id))}",
             rep.path or rep.id),
    ]
    for hit in group.duplicates:
        caption = f"<b>{hit.score:.3f}</b><br>{html.escape(_name(hit.path or hit.id))}"
        parts.append(card(thumbs, hit.path, "hit", caption, hit.path or hit.id))
    return '<div class="q">' + "".join(parts) + "</div>"


def _inline_card(thumbs: _Thumbs, path: str | None, kind: str, caption: str, title: str) -> str:
    """A card whose thumbnail is an ``<img>`` with a data URI: survives HTML sanitisers
    (Gradio's) that drop CSS background images. The thumbnail (or its placeholder text) is
    the notebook grid's, from :mod:`lookalike.display`."""
    from ..display import _thumbnail

    uri, note = _thumbnail(path)
    img = (f'<img class="img" alt="" style="object-fit:contain" src="{uri}">' if uri
           else f'<div class="img">{html.escape(note)}</div>')
    return f'<div class="card {kind}" title="{html.escape(title)}">{img}{caption}</div>'


def _name(text: str) -> str:
    return os.path.basename(text) or text


def _body(groups: DuplicateGroups, thumbs: _Thumbs, limit: int | None, inline: bool = False) -> str:
    shown = groups if limit is None else groups[:limit]
    rows = "".join(_row(thumbs, i, g, inline) for i, g in enumerate(shown, 1))
    more = len(groups) - len(shown)
    tail = f"<p>... and {more} more groups</p>" if more > 0 else ""
    summary = (f"<p>{len(groups)} groups of near-duplicates, {groups.images} images, "
               f"cosine threshold {groups.threshold:.3f}. Blue: the group's representative; "
               "green: its duplicates with their similarity to it.</p>")
    return summary + rows + tail


def render_groups(groups: DuplicateGroups, *, limit: int | None = 20, thumb_size: int = 72) -> str:
    """An HTML fragment (for notebooks): the first ``limit`` groups as rows of thumbnails."""
    body = _body(groups, _Thumbs(thumb_size), limit, inline=True)
    css = _scoped(_CSS.replace("SIZE", str(thumb_size)), ".lookalike-dupes")
    return f'<div class="lookalike-dupes"><style>{css}</style>{body}</div>'


def _scoped(css: str, scope: str) -> str:
    """The page's CSS limited to one element, so a notebook's own styles stay untouched."""
    out = []
    for rule in css.strip().splitlines():
        selectors, _, rest = rule.partition("{")
        names = [scope if s.strip() == "body" else f"{scope} {s.strip()}" for s in selectors.split(",")]
        out.append(",".join(names) + "{" + rest)
    return "\n".join(out)


def render_html(groups: DuplicateGroups, *, title: str = "lookalike duplicates", thumb_size: int = 96,
                notes: tuple[str, ...] = ()) -> str:
    """The whole page as a string: every group, largest first."""
    thumbs = _Thumbs(thumb_size)
    return _page(title, notes, thumbs, _body(groups, thumbs, None))


def write_html(groups: DuplicateGroups, path: str | os.PathLike[str], **options: object) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8) and return the path."""
    out = Path(path).expanduser()
    out.write_text(render_html(groups, **options), encoding="utf-8")  # type: ignore[arg-type]
    return out
