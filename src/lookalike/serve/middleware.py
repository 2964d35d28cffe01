"""ASGI middleware in front of the app: request-body caps and the bytes in flight, checks on browser uploads (and their removal), HTTP basic auth."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._checks import positive_int
from ..errors import ConfigurationError
from .limits import _FORM_OVERHEAD, _LOOPBACK, AUTH_ENV, Limits
from .service import _size

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send


# -- request bodies ----------------------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class ByteBudget:
    """Request-body bytes held at once by all requests (those being received and those being served).

    Taken by :class:`BodyLimitMiddleware` before a body is read, so a client waiting for its turn
    leaves its bytes in the network, not in the server's memory. Polled (the middleware may run on
    more than one event loop): :meth:`take` tries every 20 ms until ``timeout``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = positive_int(capacity, "the byte budget")
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_take(self, size: int) -> bool:
        """Take ``size`` bytes now if they are free (one body larger than the budget takes all of it)."""
        size = min(size, self.capacity)
        with self._lock:
            if self.in_flight + size > self.capacity:
                return False
            self.in_flight += size
            self.peak = max(self.peak, self.in_flight)
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.in_flight -= min(size, self.capacity)

    async def take(self, size: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``size`` bytes; False if they never came free."""
        import asyncio

        deadline = time.monotonic() + timeout
        while not self.try_take(size):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


class BodyLimitMiddleware:
    """Refuses request bodies over a limit with 413, before the app parses any of it.

    A declared ``Content-Length`` over the limit is refused without reading the body; a body sent
    without one (chunked) is counted as it streams, and refused as soon as it passes the limit.
    ``limit_for(path)`` gives the limit of each request path. With a ``budget``, a request with a
    body first takes its size (its limit, when chunked) from it, waiting up to ``max_wait_s``,
    then 503; it gives the bytes back when its answer is sent.
    """

    def __init__(
        self, app: ASGIApp, limit_for: Callable[[str], int], budget: ByteBudget | None = None,
        max_wait_s: float = 30.0,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.budget = budget
        self.max_wait_s = max_wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope.get("path", "")))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, 413, f"the request body is larger than the limit of {_size(limit)}", send)
            return
        size = int(declared) if declared.isdigit() else (limit if b"transfer-encoding" in headers else 0)
        if self.budget is None or size == 0:
            await self._limited(scope, receive, send, limit)
            return
        if not await self.budget.take(size, self.max_wait_s):
            await self._refuse(scope, 503, "the server is busy receiving other large requests; try again in a moment",
                               send)
            return
        try:
            await self._limited(scope, receive, send, limit)
        finally:
            self.budget.give_back(size)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        overflow = False
        started = False

        async def counted_receive() -> Any:
            nonlocal received, overflow
            if overflow:  # the app asks again after the refusal: the client is gone, as far as it knows
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if overflow and not started:
                return  # the app's answer to a body it never fully got: the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            await self._refuse(scope, 413, f"the request body is larger than the limit of {_size(limit)}", send)

    @staticmethod
    async def _refuse(scope: Scope, status: int, message: str, send: Send) -> None:
        from starlette.responses import JSONResponse

        headers = {"Connection": "close"}  # the unread body is not ours to drain
        if status == 503:
            headers["Retry-After"] = "5"
        await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, _no_body, send)


async def _no_body() -> Any:
    return {"type": "http.disconnect"}


def body_limits(limits: Limits) -> Callable[[str], int]:
    """The body limit of each path: an image as a multipart form, or base64 in Gradio's JSON."""
    form = limits.max_upload_bytes + _FORM_OVERHEAD

    def limit_for(path: str) -> int:
        if path == "/api/search" or path.rstrip("/").endswith("/upload"):
            return form
        return limits.max_body_bytes

    return limit_for


# -- uploads ---------------------------------------------------------------------------------------
#: Seconds an upload stays on disk after the search that read it (the page still shows it as the
#: query's preview); re-searches with another k or label use the query's vector, not the file.
UPLOAD_GRACE_S = 15.0


def remove_upload(path: Path, root: Path) -> None:
    """Delete an uploaded file under ``root``, and its folder once empty; anything else is left alone."""
    path = path.resolve()
    if not path.is_relative_to(root) or path == root:
        return
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
    folder = path.parent
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
        folder = folder.parent


class UploadJanitor:
    """Deletes uploaded files once a search has read them, ``grace_s`` seconds later.

    One timer thread at most: it deletes the files whose time has come and re-arms itself while
    files are pending. Gradio's own ``delete_cache`` sweep catches uploads that were never searched.
    """

    def __init__(self, root: Path, grace_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.grace_s = UPLOAD_GRACE_S if grace_s is None else grace_s
        self.clock = clock
        self._due: collections.deque[tuple[float, Path]] = collections.deque()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def consumed(self, path: Path) -> None:
        """``path`` has been read: delete it once the grace period is over (now, if there is none)."""
        if self.grace_s <= 0:
            remove_upload(path, self.root)
            return
        with self._lock:
            self._due.append((self.clock() + self.grace_s, path))
            if self._timer is None:
                self._arm(self.grace_s)

    def sweep(self) -> None:
        """Delete the files whose grace period is over; re-arm for the rest."""
        now = self.clock()
        with self._lock:
            due = []
            while self._due and self._due[0][0] <= now:
                due.append(self._due.popleft()[1])
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()  # swept by hand: the pending timer is replaced below
            self._timer = None
            if self._due:
                self._arm(max(self._due[0][0] - now, 0.05))
        for path in due:
            remove_upload(path, self.root)

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self.sweep)
        self._timer.daemon = True
        self._timer.start()


def looks_like_image(path: Path) -> bool:
    """Whether a file starts like an image format Pillow reads (its first 16 bytes; nothing decoded)."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            prefix = fh.read(16)
    except OSError:
        return False
    Image.init()
    # Formats with no signature (accept is None: TGA and a few rare ones) would take any file.
    return any(accept is not None and accept(prefix) for _, accept in Image.OPEN.values())


class UploadCheckMiddleware:
    """Refuses (415) and deletes files uploaded through Gradio's upload route that are not images.

    Gradio stores whatever ``POST .../gradio_api/upload`` sends; this looks at the first bytes of
    each stored file as soon as the upload ends, before any search could read it.
    """

    def __init__(self, app: ASGIApp, root: Path) -> None:
        self.app = app
        self.root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.endswith("/gradio_api/upload"):
            await self.app(scope, receive, send)
            return
        messages: list[Any] = []

        async def keep(message: Any) -> None:
            messages.append(message)

        await self.app(scope, receive, keep)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        stored = None
        if start is not None and start["status"] == 200:
            try:
                stored = json.loads(b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"))
            except ValueError:
                stored = None
        if isinstance(stored, list) and all(isinstance(p, str) for p in stored):
            refused = [p for p in stored if not looks_like_image(Path(p))]
            if refused:
                for p in stored:
                    remove_upload(Path(p), self.root)
                from starlette.responses import PlainTextResponse

                names = ", ".join(repr(Path(p).name) for p in refused)
                response = PlainTextResponse(
                    f"not an image: {names} (send JPEG, PNG, WebP, GIF, BMP, TIFF or another image format)",
                    status_code=415,
                )
                await response(scope, receive, send)
                return
        for message in messages:
            await send(message)


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
        self._expected = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode())
        self._realm = realm

    def _accepts(self, header: bytes) -> bool:
        # RFC 7617 (via RFC 7235): the scheme name is case-insensitive; one or more spaces follow it.
        scheme, _, token = header.strip().partition(b" ")
        return scheme.lower() == b"basic" and secrets.compare_digest(token.strip(), self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if self._accepts(given):
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
