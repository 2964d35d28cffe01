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
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .duplicates_ui import add_duplicates_panel
from .errors import (
    ConfigurationError,
    ImageLoadError,
    ImageSearchError,
    MissingDependencyError,
    NotFoundError,
    StoreError,
)
from .images import DEFAULT_MAX_PIXELS, load_image
from .index import ImageSearchIndex
from .types import HASH_FIELD, Hit

if TYPE_CHECKING:
    from fastapi import FastAPI
    from PIL import Image
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["AUTH_ENV", "Limits", "SearchService", "add_command", "bind_warning", "build_app", "run"]

#: Environment variable holding ``USER:PASSWORD`` for HTTP basic auth (safer than ``--auth``).
AUTH_ENV = "LOOKALIKE_SERVE_AUTH"
DEFAULT_PORT = 7860
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "ip6-localhost"})
_NOT_A_PATH = (
    "send the image itself (multipart field 'image', or the raw bytes as the request body); "
    "this server never reads paths, globs or URLs sent to it"
)
_FORM_OVERHEAD = 64 * 1024  # multipart headers and small fields on top of the image bytes


@dataclass(frozen=True)
class Limits:
    """What the server accepts from a browser or an API client.

    Attributes:
        max_upload_bytes: largest upload, in bytes (the page and the API).
        max_pixels: largest image, in pixels (a decompression-bomb guard).
        max_k: most results one search may ask for.
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_k: int = 100

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive int, got {value!r}")


class Rejected(ImageSearchError):
    """A request the server refuses; ``status`` is the HTTP status, the message is for the user."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


# -- the search service: everything the page and the API do, without any web framework ----------
class SearchService:
    """Searches an index by uploaded image bytes or by a stored record, within :class:`Limits`.

    Stored images are read only through a record id (id → the record's stored ``path``), so a
    client can never make the server open a file that is not in the index.
    """

    def __init__(self, index: ImageSearchIndex, limits: Limits | None = None, *, label_field: str = "label") -> None:
        self.index = index
        self.limits = limits or Limits()
        self.label_field = label_field
        self._lock = threading.RLock()
        self._labels: list[str] | None = None

    # -- facts about the index ----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Size, model and limits, as ``GET /api/info`` returns them."""
        with self._lock:
            schema = self.index.store.describe()
            count = self.index.count() if schema is not None else 0
        return {
            "count": count,
            "embedder": schema.identity if schema else None,
            "dim": schema.dim if schema else None,
            "metric": schema.metric if schema else None,
            "fields": list(schema.fields) if schema else [],
            "store": type(self.index.store).__name__,
            "lookalike": __version__,
            "limits": {
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_pixels": self.limits.max_pixels,
                "max_k": self.limits.max_k,
            },
        }

    def filter_fields(self) -> tuple[str, ...]:
        schema = self.index.store.describe()
        return tuple(f for f in schema.fields if f != "path") if schema else ()

    def labels(self, scan_limit: int = 20_000) -> list[str]:
        """Distinct values of the label field (from the first ``scan_limit`` records; cached)."""
        if self._labels is None:
            found: set[str] = set()
            if self.label_field in self.filter_fields():
                seen = 0
                with self._lock:
                    for batch in self.index.store.scan(1000):
                        for record in batch:
                            value = record.metadata.get(self.label_field)
                            if value is not None and value != "":
                                found.add(str(value))
                        seen += len(batch)
                        if seen >= scan_limit:
                            break
            self._labels = sorted(found)
        return self._labels

    # -- checking what clients send -------------------------------------------------------------
    def check_k(self, k: object) -> int:
        try:
            value = int(str(k)) if not isinstance(k, (int, float)) else int(k)
        except ValueError:
            raise Rejected(400, f"k must be a whole number, got {k!r}") from None
        if isinstance(k, bool) or not 1 <= value <= self.limits.max_k:
            raise Rejected(400, f"k must be between 1 and {self.limits.max_k}, got {k!r}")
        return value

    def check_filter(self, pairs: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any] | None:
        """``["label=cat,dog", ...]`` or ``{"label": "cat"}`` → a store filter on filterable fields."""
        flt: dict[str, list[str]] = {}
        items = list(pairs.items()) if isinstance(pairs, Mapping) else [_split_pair(p) for p in pairs or ()]
        fields = self.filter_fields()
        for key, value in items:
            if key not in fields:
                shown = ", ".join(fields) or "none"
                raise Rejected(400, f"cannot filter on {key!r}; filterable fields: {shown}")
            values = value if isinstance(value, list) else str(value).split(",")
            flt.setdefault(key, []).extend(str(v) for v in values if str(v) != "")
        return {k: (v[0] if len(v) == 1 else v) for k, v in flt.items() if v} or None

    def decode_upload(self, data: bytes) -> Image.Image:
        """The uploaded bytes as an RGB image, or :class:`Rejected` with a readable reason."""
        if len(data) > self.limits.max_upload_bytes:
            raise Rejected(413, f"the image is {_size(len(data))}; the limit is {_size(self.limits.max_upload_bytes)}")
        try:
            return load_image(data, max_pixels=self.limits.max_pixels)
        except ImageLoadError as exc:
            raise Rejected(400, f"could not read the uploaded image: {exc.reason}") from None

    # -- searching --------------------------------------------------------------------------------
    def search_upload(self, data: bytes, k: object = 10, filter: Any = None) -> list[Hit]:
        image = self.decode_upload(data)
        return self.search(image, k, filter)

    def search(self, query: Image.Image | Any, k: object = 10, filter: Any = None) -> list[Hit]:
        """Search by a decoded image or a vector (use :meth:`search_upload` for bytes)."""
        n = self.check_k(k)
        flt = self.check_filter(filter)
        with self._lock:
            return self.index.search(query, n, filter=flt)

    def search_similar(self, id: str, k: object = 10, filter: Any = None) -> list[Hit]:
        """The images most like the stored record ``id`` (by its stored vector)."""
        with self._lock:
            record = self.index.get(id)
        return self.search(record.vector, k, filter)

    def stored_image(self, id: str, max_side: int = 512) -> Image.Image | None:
        """The stored image of record ``id``, shrunk to ``max_side``; None if its file is unreadable.

        Raises:
            NotFoundError: no record has this id.
        """
        with self._lock:
            record = self.index.get(id)
        if not record.path:
            return None
        try:
            image = load_image(record.path, max_pixels=DEFAULT_MAX_PIXELS, min_size=max_side)
        except ImageLoadError:
            return None
        image.thumbnail((max_side, max_side))
        return image


def _split_pair(pair: str) -> tuple[str, str]:
    key, sep, value = str(pair).partition("=")
    if not sep or not key:
        raise Rejected(400, f"filter takes KEY=VALUE[,VALUE], got {pair!r}")
    return key, value


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"


def hit_dict(hit: Hit) -> dict[str, Any]:
    """A hit as the JSON API returns it."""
    return {"id": hit.id, "score": round(hit.score, 6), "path": hit.path, "metadata": dict(hit.metadata)}


# -- the JSON API -------------------------------------------------------------------------------
def _add_api_routes(app: FastAPI, service: SearchService) -> None:
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def guarded(work: Callable[[], Any]) -> Response:
        try:
            result = await run_in_threadpool(work)
        except Rejected as exc:
            return error(exc.status, str(exc))
        except NotFoundError as exc:
            return error(404, str(exc))
        except (ConfigurationError, ImageLoadError) as exc:
            return error(400, str(exc))
        except StoreError as exc:
            return error(503, f"the index store failed: {exc}")
        except Exception:  # never a traceback to the client; keep it in the server log
            traceback.print_exc(file=sys.stderr)
            return error(500, "internal error; the server log has the details")
        return result if isinstance(result, Response) else JSONResponse(result)

    async def api_info(request: Request) -> Response:
        return await guarded(service.info)

    async def api_search(request: Request) -> Response:
        try:
            data, fields = await _read_search_request(request, service.limits.max_upload_bytes)
        except Rejected as exc:
            return error(exc.status, str(exc))
        k = fields.get("k", [request.query_params.get("k", "10")])[0]
        flt = fields.get("filter", []) + request.query_params.getlist("filter")

        def work() -> dict[str, Any]:
            return {"hits": [hit_dict(h) for h in service.search_upload(data, k, flt)]}

        return await guarded(work)

    async def api_image(request: Request) -> Response:
        id = str(request.path_params["id"])
        size = request.query_params.get("size", "512")

        def work() -> Response:
            if not size.isdigit() or not 16 <= int(size) <= 2048:
                raise Rejected(400, f"size must be between 16 and 2048, got {size!r}")
            image = service.stored_image(id, int(size))
            if image is None:
                raise Rejected(404, "the image file of this record is not available on the server")
            return Response(_encode_jpeg(image), media_type="image/jpeg")

        return await guarded(work)

    async def _read_search_request(request: Request, limit: int) -> tuple[bytes, dict[str, list[Any]]]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
            raise Rejected(415, _NOT_A_PATH)
        is_form = ctype == "multipart/form-data"
        body = await _read_capped(request, limit + (_FORM_OVERHEAD if is_form else 0))
        if not is_form:
            return body, {}

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=20)
        try:
            if any(name in form for name in ("path", "url", "glob")):
                raise Rejected(400, _NOT_A_PATH)
            upload = form.get("image")
            if upload is None:
                raise Rejected(400, "no image: send it as the multipart field 'image'")
            if not isinstance(upload, UploadFile):
                raise Rejected(400, _NOT_A_PATH)
            data = await upload.read()
            fields = {key: [str(v) for v in form.getlist(key)] for key in form if key != "image"}
        finally:
            await form.close()
        return data, fields

    async def _read_capped(request: Request, limit: int) -> bytes:
        declared = request.headers.get("content-length", "")
        too_big = Rejected(413, f"the upload is larger than the limit of {_size(service.limits.max_upload_bytes)}")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise too_big
            chunks.append(chunk)
        if not total:
            raise Rejected(400, "no image: the request body is empty")
        return b"".join(chunks)

    app.add_route("/api/info", api_info, methods=["GET"])
    app.add_route("/api/search", api_search, methods=["POST"])
    app.add_route("/api/image/{id}", api_image, methods=["GET"])


def _encode_jpeg(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


# -- basic auth ---------------------------------------------------------------------------------
def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` → a pair; None or "" → None."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigurationError("--auth / $LOOKALIKE_SERVE_AUTH takes USER:PASSWORD (both non-empty)")
    return user, password


class BasicAuthMiddleware:
    """HTTP basic auth in front of everything (page, Gradio's API, the JSON API)."""

    def __init__(self, app: ASGIApp, credentials: tuple[str, str], realm: str = "lookalike") -> None:
        self.app = app
        token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        self._expected = f"Basic {token}".encode()
        self._realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if secrets.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        from starlette.responses import JSONResponse

        response = JSONResponse(
            {"error": "authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": f'Basic realm="{self._realm}", charset="UTF-8"'},
        )
        await response(scope, receive, send)


def bind_warning(host: str, auth: tuple[str, str] | None) -> str | None:
    """The warning to print when ``host`` is reachable from other machines and no auth is set."""
    if host in _LOOPBACK or host.startswith("127.") or auth is not None:
        return None
    return (
        f"serving on {host} without authentication: anyone who can reach this port can search "
        f"the index and see its images. Set ${AUTH_ENV}=USER:PASSWORD (or --auth), or bind to 127.0.0.1."
    )


# -- the page -----------------------------------------------------------------------------------
def _import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "gradio":
            raise MissingDependencyError("gradio", "ui", "lookalike serve") from exc
        raise
    return gradio


def _caption(hit: Hit) -> str:
    name = Path(hit.path).name if hit.path else hit.id[:12]
    label = hit.metadata.get("label")
    return f"{hit.score:.3f} · {label} · {name}" if label not in (None, "") else f"{hit.score:.3f} · {name}"


def _placeholder(size: int = 256) -> Image.Image:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (229, 231, 235))
    ImageDraw.Draw(image).text((size // 2 - 40, size // 2 - 6), "file not available", fill=(75, 85, 99))
    return image


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _md_escape(text: object) -> str:
    out = str(text)
    for ch in "\\`*_{}[]<>()#+-!|":
        out = out.replace(ch, "\\" + ch)
    return out


# Captions carry score, label and file name: let them wrap instead of being cut off.
_CSS = "#gallery .caption-label { white-space: normal; overflow-wrap: anywhere; text-overflow: clip; }"


def _build_blocks(gr: Any, service: SearchService, default_k: int) -> Any:
    any_label = "(any label)"
    labels = service.labels()
    has_labels = service.label_field in service.filter_fields()
    upload_root = Path(gr.utils.get_upload_folder()).resolve()

    def header() -> str:
        info = service.info()
        model = info["embedder"] or "none yet"
        return (
            f"## lookalike: search by image\n"
            f"**{info['count']:,}** images in the index · model `{model}` · store {info['store']}"
        )

    def label_filter(label: str | None) -> dict[str, Any] | None:
        if not label or label == any_label:
            return None
        return {service.label_field: label}

    def read_upload(payload: Any) -> bytes:
        """The bytes of an image the browser uploaded (never a path it names)."""
        if not isinstance(payload, Mapping):
            raise gr.Error("Upload an image first: drop, paste or choose one, or use the webcam.")
        url = payload.get("url") or ""
        if payload.get("path") is None and isinstance(url, str) and url.startswith("data:"):
            if len(url) > service.limits.max_upload_bytes * 4 // 3 + 1024:
                raise gr.Error(f"The image is larger than the limit of {_size(service.limits.max_upload_bytes)}.")
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError):
                raise gr.Error("Could not read the uploaded image: bad data URL.") from None
        path = Path(str(payload.get("path"))).resolve()
        if not path.is_relative_to(upload_root) or not path.is_file():  # defence in depth: Gradio checks too
            raise gr.Error(_sentence(_NOT_A_PATH))
        if path.stat().st_size > service.limits.max_upload_bytes:
            raise gr.Error(f"The image is larger than the limit of {_size(service.limits.max_upload_bytes)}.")
        return path.read_bytes()

    def show(hits: list[Hit], seconds: float, what: str) -> tuple[Any, str, list[dict[str, Any]]]:
        items = []
        for hit in hits:
            thumb = None
            try:
                thumb = service.stored_image(hit.id, 256)
            except NotFoundError:
                pass
            items.append((thumb or _placeholder(), _caption(hit)))
        status = f"{len(hits)} results for {what} in {seconds:.2f} s" if hits else f"No results for {what}."
        return items, status, [hit_dict(h) for h in hits]

    def run_guarded(work: Callable[[], list[Hit]], what: str) -> tuple[Any, str, list[dict[str, Any]]]:
        start = time.perf_counter()
        try:
            hits = work()
        except NotFoundError:
            message = "That image is no longer in the index."
        except ImageSearchError as exc:  # Rejected (bad upload, bad k or filter), store errors
            message = _sentence(str(exc))
        else:
            return show(hits, time.perf_counter() - start, what)
        gr.Warning(message)
        return [], f"**{_md_escape(message)}**", []

    def search_upload(payload: Any, k: Any, label: Any) -> tuple[Any, ...]:
        data = read_upload(payload)
        gallery, status, hits = run_guarded(
            lambda: service.search_upload(data, k, label_filter(label)), "the uploaded image"
        )
        return gallery, status, hits, None, gr.update(visible=False)

    def search_current(payload: Any, k: Any, label: Any, query_id: Any) -> tuple[Any, ...]:
        if query_id:
            gallery, status, hits = run_guarded(
                lambda: service.search_similar(str(query_id), k, label_filter(label)), "the chosen result"
            )
            return gallery, status, hits, query_id, gr.skip()
        if payload is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return search_upload(payload, k, label)

    def select(hits: list[dict[str, Any]], evt: Any) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not hits or not 0 <= index < len(hits):
            return gr.skip(), gr.skip(), None, gr.update(visible=False)
        hit = hits[index]
        try:
            image = service.stored_image(hit["id"], 1024)
        except NotFoundError:
            raise gr.Error("That image is no longer in the index.") from None
        meta = {k: v for k, v in hit["metadata"].items() if k != HASH_FIELD}
        lines = [
            f"### {_md_escape(Path(hit['path']).name if hit['path'] else hit['id'])}",
            f"score **{hit['score']:.4f}**",
            *(f"{_md_escape(key)}: **{_md_escape(value)}**" for key, value in meta.items()),
            f"id `{hit['id']}`",
        ]
        return image or _placeholder(512), "  \n".join(lines), hit["id"], gr.update(visible=True)

    # Gradio finds the event-data parameter by its (evaluated) annotation.
    select.__annotations__ = {"hits": list, "evt": gr.SelectData, "return": tuple}

    def search_by(selected: Any, k: Any, label: Any) -> tuple[Any, ...]:
        if not selected:
            raise gr.Error("Click a result first.")
        gallery, status, hits = run_guarded(
            lambda: service.search_similar(str(selected), k, label_filter(label)), "the chosen result"
        )
        try:
            query_image = service.stored_image(str(selected), 1024)
        except NotFoundError:
            query_image = None
        return gallery, status, hits, selected, query_image or gr.skip()

    def clear() -> tuple[Any, ...]:
        return [], "", [], None, gr.update(visible=False)

    with gr.Blocks(title="lookalike", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        info_md = gr.Markdown(elem_id="info")
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                query = gr.Image(
                    label="Query image: drop, paste or upload (or use the webcam)",
                    sources=["upload", "clipboard", "webcam"],
                    type="filepath",
                    height=320,
                    elem_id="query",
                )
                k = gr.Slider(1, min(50, service.limits.max_k), value=default_k, step=1, label="Results (k)",
                              elem_id="k")
                label = gr.Dropdown(
                    [any_label, *labels], value=any_label, label="Label filter", allow_custom_value=True,
                    visible=has_labels, elem_id="label",
                )
                run = gr.Button("Search", variant="primary", elem_id="run")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="Most similar (click one to see it large)", columns=4, height="auto",
                    object_fit="contain", allow_preview=False, interactive=False, elem_id="gallery",
                )
                with gr.Row(visible=False, elem_id="detail") as detail:
                    big = gr.Image(label="Selected result", type="pil", interactive=False, height=360,
                                   elem_id="selected")
                    with gr.Column():
                        details = gr.Markdown(elem_id="details")
                        again = gr.Button("Search by this image", elem_id="search-by")
        hits_state = gr.State([])
        query_id = gr.State(None)
        selected_id = gr.State(None)

        outputs = [gallery, status, hits_state, query_id]
        demo.load(header, None, info_md, api_name=False)
        query.upload(search_upload, [query, k, label], [*outputs, detail], preprocess=False,
                     api_name="search")
        run.click(search_current, [query, k, label, query_id], [*outputs, detail], preprocess=False,
                  api_name=False)
        k.release(search_current, [query, k, label, query_id], [*outputs, detail], preprocess=False,
                  api_name=False)
        label.input(search_current, [query, k, label, query_id], [*outputs, detail], preprocess=False,
                    api_name=False)
        query.clear(clear, None, [*outputs, detail], api_name=False)
        gallery.select(select, [hits_state], [big, details, selected_id, detail], api_name=False)
        again.click(search_by, [selected_id, k, label], [*outputs, query], api_name=False)
        add_duplicates_panel(gr, service)
    return demo


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
    if auth is not None:
        mounted.add_middleware(BasicAuthMiddleware, credentials=auth)
    return mounted


def run(app: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


# -- the command ----------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .cli import open_index

    auth = parse_auth(args.auth if args.auth is not None else os.environ.get(AUTH_ENV))
    if not 1 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be between 1 and 65535, got {args.port}")
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels, max_k=100
    )
    warning = bind_warning(args.host, auth)
    _import_gradio()  # fail early, before a model is loaded
    with open_index(args) as index:
        app = build_app(index, limits=limits, auth=auth, default_k=args.k)
        _warm_up(index)  # load the model now: the first visitor should not wait, nor see a load error
        if warning:
            print(f"lookalike: warning: {warning}", file=sys.stderr)
        host = f"[{args.host}]" if ":" in args.host else args.host
        info = SearchService(index).info()
        print(
            f"lookalike: serving {info['count']} images (model {info['embedder']}) at "
            f"http://{host}:{args.port}/ (JSON API at /api/search); Ctrl+C stops",
            flush=True,
        )
        run(app, args.host, args.port)
    return 0


def _warm_up(index: ImageSearchIndex) -> None:
    from PIL import Image

    index.embed_queries([Image.new("RGB", (64, 64), (128, 128, 128))])


def add_command(subparsers: Any) -> None:
    """Register ``lookalike serve`` (called by :mod:`lookalike.cli`)."""
    from .cli import add_index_options

    p = subparsers.add_parser(
        "serve", help="a web page (and JSON API) to search the index by image",
        description="Serve a search page over the index (needs the [ui] extra: pip install 'lookalike[ui]'). "
        f"Binds to 127.0.0.1 unless --host says otherwise; set ${AUTH_ENV}=USER:PASSWORD "
        "(or --auth) before binding to other machines.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("-k", type=int, default=10, help="results shown at first (default 10)")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD",
                   help=f"require HTTP basic auth (default: ${AUTH_ENV}; the variable keeps it out of ps)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest image in pixels (default 50,000,000)")
    add_index_options(p)
    p.set_defaults(func=cmd_serve)
