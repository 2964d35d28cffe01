"""``lookalike serve``: a web page and a small JSON API over an index.

The page (Gradio, the ``[ui]`` extra) lets a person drop, paste, upload or photograph an image and
see the most similar stored images with score, label and file name; a click shows a result large
and searches by it. The same search is a JSON endpoint for apps not written in Python::

    POST /api/search      image as multipart field "image" or as the raw body; ?k=10&filter=label=cat
    GET  /api/info        how many images, which model built the index, the limits
    GET  /api/image/{id}  a stored image, by record id (JPEG, ?size=512)

Safe by default: it binds to 127.0.0.1; the browser can send image bytes only, never a server path,
glob or URL to read; it reads stored images only by record id; uploads have byte and pixel limits;
bad input gets a one-line message, never a traceback; optional HTTP basic auth (``--auth`` or
``$LOOKALIKE_SERVE_AUTH``) covers the page and the API alike.

Gradio is imported only when the app is built, never by ``import lookalike`` or ``lookalike --help``.

The package, one concern a module: :mod:`.limits` (what the server accepts and holds at once),
:mod:`.service` (the search, free of any web framework), :mod:`.api` (the JSON API), :mod:`.middleware`
(body caps, upload checks, basic auth), :mod:`.page` (the Gradio page), :mod:`.app` (all of it as one
ASGI app) and :mod:`.command` (``lookalike serve``). The index comes from
:func:`lookalike.registry.open_index`, as for every command.
"""

from __future__ import annotations

from .app import build_app, run
from .command import add_command, cmd_serve
from .limits import (
    AUTH_ENV,
    DEFAULT_PORT,
    Limits,
    PixelBudget,
    Rejected,
    probe_image,
    release_memory,
    return_large_blocks,
)
from .middleware import (
    BasicAuthMiddleware,
    BodyLimitMiddleware,
    ByteBudget,
    UploadCheckMiddleware,
    UploadJanitor,
    bind_warning,
    body_limits,
    looks_like_image,
    parse_auth,
    remove_upload,
)
from .page import _build_blocks as _build_blocks  # the page alone, for tests
from .service import SearchService, hit_dict

__all__ = [
    "AUTH_ENV",
    "DEFAULT_PORT",
    "BasicAuthMiddleware",
    "BodyLimitMiddleware",
    "ByteBudget",
    "Limits",
    "PixelBudget",
    "Rejected",
    "SearchService",
    "UploadCheckMiddleware",
    "UploadJanitor",
    "add_command",
    "bind_warning",
    "body_limits",
    "build_app",
    "cmd_serve",
    "hit_dict",
    "looks_like_image",
    "parse_auth",
    "probe_image",
    "release_memory",
    "remove_upload",
    "return_large_blocks",
    "run",
]
