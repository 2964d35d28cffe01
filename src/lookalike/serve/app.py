"""The web app: the page at ``/`` and the JSON API under ``/api``, behind the middleware."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..index import ImageSearchIndex
from .api import _add_api_routes
from .limits import DEFAULT_PORT, Limits
from .middleware import (
    BasicAuthMiddleware,
    BodyLimitMiddleware,
    ByteBudget,
    UploadCheckMiddleware,
    body_limits,
)
from .page import _CSS, _build_blocks, _import_gradio
from .service import SearchService

if TYPE_CHECKING:
    from fastapi import FastAPI


def build_app(
    index: ImageSearchIndex,
    *,
    limits: Limits | None = None,
    auth: tuple[str, str] | None = None,
    default_k: int = 10,
) -> FastAPI:
    """The web app for ``index``: the page at ``/``, the JSON API under ``/api``.

    Serve it with any ASGI server, e.g. ``uvicorn.run(build_app(index), host="127.0.0.1")``.

    Raises:
        MissingDependencyError: Gradio (the ``[ui]`` extra) is not installed.
    """
    gr = _import_gradio()
    from fastapi import FastAPI

    service = SearchService(index, limits)
    default_k = service.check_k(default_k)
    app = FastAPI(title="lookalike", docs_url=None, redoc_url=None, openapi_url=None)
    _add_api_routes(app, service)
    demo = _build_blocks(gr, service, min(default_k, 50))
    mounted: FastAPI = gr.mount_gradio_app(
        app, demo, path="/", show_error=False, max_file_size=service.limits.max_upload_bytes,
        ssr_mode=False, mcp_server=False, allowed_paths=[], footer_links=[], css=_CSS,
    )
    # Gradio checks that a file named in a request was uploaded by the browser only once the app
    # "has launched", which mount_gradio_app never sets: without this line a request naming any
    # server file (the tutorial's hole) would be copied into the cache and searched.
    demo.has_launched = True
    mounted.state.search_service = service  # its limits and pixel budget, for tests and monitoring
    mounted.add_middleware(UploadCheckMiddleware, root=Path(gr.utils.get_upload_folder()).resolve())
    body_budget = ByteBudget(service.limits.max_body_bytes_in_flight)
    mounted.add_middleware(BodyLimitMiddleware, limit_for=body_limits(service.limits), budget=body_budget,
                           max_wait_s=service.limits.max_wait_s)
    mounted.state.body_budget = body_budget
    if auth is not None:  # added last, so it runs first: no body is read before auth
        mounted.add_middleware(BasicAuthMiddleware, credentials=auth)
    return mounted


def run(app: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
