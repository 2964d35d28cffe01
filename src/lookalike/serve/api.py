"""The JSON API: ``POST /api/search`` (an image, or ``{"text": ...}`` as JSON), ``GET /api/info``,
``GET /api/image/{id}``."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, ImageLoadError, NotFoundError, StoreError
from .limits import _FORM_OVERHEAD, _NOT_A_PATH, Rejected
from .service import SearchService, _size, hit_dict

if TYPE_CHECKING:
    from fastapi import FastAPI
    from PIL import Image
    from starlette.requests import Request
    from starlette.responses import Response


# -- the JSON API -------------------------------------------------------------------------------
def _add_api_routes(app: FastAPI, service: SearchService) -> None:
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    def error(status: int, message: str) -> JSONResponse:
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

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
        except MemoryError:
            return error(503, "the server ran out of memory; try again later")
        except Exception:  # never a traceback to the client; keep it in the server log
            traceback.print_exc(file=sys.stderr)
            return error(500, "internal error; the server log has the details")
        return result if isinstance(result, Response) else JSONResponse(result)

    async def api_info(request: Request) -> Response:
        return await guarded(service.info)

    async def api_search(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            return await api_search_text(request)
        try:
            data, fields = await _read_search_request(request, service.limits.max_upload_bytes)
        except Rejected as exc:
            return error(exc.status, str(exc))
        k = fields.get("k", [request.query_params.get("k", "10")])[0]
        flt = fields.get("filter", []) + request.query_params.getlist("filter")

        def work() -> dict[str, Any]:
            return {"hits": [hit_dict(h) for h in service.search_upload(data, k, flt)]}

        return await guarded(work)

    async def api_search_text(request: Request) -> Response:
        """``{"text": "a red car", "k": 10, "filter": {"label": "cars"}}``: search by words."""
        try:
            body = await _read_capped(request, _TEXT_BODY_LIMIT)
            query = _text_query(body)
        except Rejected as exc:
            return error(exc.status, str(exc))
        k = query.get("k", request.query_params.get("k", "10"))
        flt = query.get("filter", request.query_params.getlist("filter"))

        def work() -> dict[str, Any]:
            return {"hits": [hit_dict(h) for h in service.search_text(query["text"], k, flt)]}

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
        too_big = Rejected(413, f"the upload is larger than the limit of {_size(min(limit, service.limits.max_upload_bytes))}")
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


#: The largest JSON body of a text search (the text itself is capped by the service).
_TEXT_BODY_LIMIT = 64 * 1024


def _text_query(body: bytes) -> dict[str, Any]:
    """A text search's JSON body: an object with ``text`` (and optionally ``k``, ``filter``);
    one naming a path, glob, URL or image is refused like any path."""
    import json

    try:
        query = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, 'the JSON body is not valid JSON; send {"text": "a red car", "k": 10}') from None
    if not isinstance(query, dict) or "text" not in query or any(
            key in query for key in ("path", "url", "glob", "image")):
        raise Rejected(415, f'{_NOT_A_PATH}; to search by words send {{"text": "a red car"}}')
    unknown = sorted(set(query) - {"text", "k", "filter"})
    if unknown:
        raise Rejected(400, f"unknown field(s) {', '.join(map(repr, unknown))}; a text search takes text, k and filter")
    if not isinstance(query["text"], str):
        raise Rejected(400, f"text must be a string, got {type(query['text']).__name__}")
    return query


def _encode_jpeg(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=88)
    return buf.getvalue()
