"""The web page's "Duplicates in the index" panel (``lookalike serve``).

Kept apart from :mod:`lookalike.serve`, whose page builder adds it with one call. It lists
the index's groups of near-duplicates as rows of thumbnails (the notebook display of
:class:`~lookalike.duplicates.DuplicateGroups`), on request, for indexes up to
``max_images``; a larger one is pointed at ``lookalike dupes --report``.
"""

from __future__ import annotations

import html
import warnings
from typing import TYPE_CHECKING, Any

from .errors import ImageSearchError

if TYPE_CHECKING:
    from .serve.service import SearchService

__all__ = ["MAX_IMAGES", "add_duplicates_panel", "duplicates_html"]

#: Largest index the panel groups on request: the exact path's cost grows with the square of
#: the count, about a minute for 20,000 2048-d vectors on a busy 2-core machine (scaled
#: from the 100,000 figure in docs/quality.md); a web request should not wait longer.
MAX_IMAGES = 20_000
SHOWN_GROUPS = 50


def duplicates_html(service: SearchService, threshold: Any = None, *, max_images: int = MAX_IMAGES) -> str:
    """The panel's content for one request: groups as HTML, or one escaped sentence."""
    from .duplicates import UncalibratedThresholdWarning
    from .eval.duplicates_report import render_groups

    index = service.index
    try:
        count = index.count() if index.store.describe() is not None else 0
        if count > max_images:
            return (f"<p>The index holds {count:,} images, more than this page groups "
                    f"({max_images:,}); run <code>lookalike dupes --report dupes.html</code>.</p>")
        value = None if threshold in (None, "") else float(threshold)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UncalibratedThresholdWarning)
            groups = index.find_duplicates(value)
    except (ImageSearchError, ValueError, TypeError) as exc:
        return f'<p class="error">{html.escape(str(exc))}</p>'
    notes = "".join(f"<p>{html.escape(str(w.message))}</p>" for w in caught)
    if not groups:
        return notes + f"<p>No near-duplicates at cosine threshold {groups.threshold:.3f}.</p>"
    return notes + render_groups(groups, limit=SHOWN_GROUPS, thumb_size=96)


def add_duplicates_panel(gr: Any, service: SearchService) -> None:
    """Add the panel to the ``gr.Blocks`` being built (call inside its ``with`` block)."""
    with gr.Accordion("Duplicates in the index", open=False, elem_id="dupes"):
        with gr.Row():
            # no minimum/maximum here: an out-of-range value gets the library's own sentence
            threshold = gr.Number(value=None, label="Cosine threshold (empty: calibrated default)",
                                  step=0.01, elem_id="dupes-threshold")
            run = gr.Button("Find duplicates", elem_id="dupes-run")
        groups = gr.HTML(elem_id="dupes-groups")
    run.click(lambda t: duplicates_html(service, t), [threshold], [groups], api_name=False)
