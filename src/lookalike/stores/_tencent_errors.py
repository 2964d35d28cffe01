"""How SDK (``tcvectordb``) and ``requests`` exceptions become :mod:`lookalike.errors`.

One ordered table, :func:`error_table`, says which exception classes (and, for some, which
codes or words) map to which lookalike error and message; the first matching row wins.
:class:`~lookalike.stores.TencentVectorStore` applies it in one context manager
(``_translate``), after scrubbing the API key from the message.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import (
    ConfigurationError,
    ImageSearchError,
    StoreConnectionError,
    StoreError,
    StoreTimeoutError,
)

__all__ = ["Failure", "NOT_EXIST", "describe", "error_table", "is_transient", "leaks", "scrub", "translate"]

BACKEND = "TencentVectorStore"
KEY_ENV = "TENCENT_VECTORDB_KEY"
NOT_EXIST = {15301: "database", 15302: "collection"}  #: service codes of a missing database/collection
_RETRY_STATUS = {429, 500, 502, 503, 504}
_CREDENTIAL_RE = re.compile(r"(api_key=|password=|Bearer\s+)[^\s&'\",;}]+", re.IGNORECASE)


@dataclass(frozen=True)
class Failure:
    """What went wrong, as the messages need it (``detail`` already scrubbed)."""

    where: str
    action: str
    detail: str
    tries: str  # " after N attempts", or ""
    code: int | None
    timeout: float
    username: str


class _Row(NamedTuple):
    classes: tuple[type[BaseException], ...]
    when: Callable[[Failure], bool] | None  # an extra condition on the failure, if any
    error: Callable[[Failure], ImageSearchError]


def _timed_out(f: Failure) -> ImageSearchError:
    return StoreTimeoutError(
        f"{f.where}: {f.action} timed out{f.tries} (timeout={f.timeout:g}s): {f.detail}. "
        "Raise timeout= or check the network.",
        backend=BACKEND,
    )


def _unreachable(f: Failure) -> ImageSearchError:
    return StoreConnectionError(
        f"{f.where}: cannot reach the service during {f.action}{f.tries}: {f.detail}. Check the "
        "URL, that the instance is running and that its allow-list admits this machine.",
        backend=BACKEND,
    )


def _refused_credentials(f: Failure) -> ImageSearchError:
    return ConfigurationError(
        f"{f.where}: the service refused the credentials of user {f.username!r} "
        f"during {f.action}: {f.detail}. Check the username and {KEY_ENV}."
    )


def _missing(f: Failure) -> ImageSearchError:
    assert f.code is not None
    return StoreError(
        f"{f.where}: the {NOT_EXIST[f.code]} does not exist ({f.action}): {f.detail}. "
        "Call create_schema() (or ImageSearchIndex.create_schema()) first.",
        backend=BACKEND,
        code=f.code,
    )


def _unavailable(f: Failure) -> ImageSearchError:
    return StoreConnectionError(
        f"{f.where}: the service is unavailable (HTTP {f.code}) during {f.action}{f.tries}: "
        f"{f.detail}",
        backend=BACKEND,
        code=f.code,
    )


def _is_auth(f: Failure) -> bool:
    lowered = f.detail.lower()
    return f.code in (401, 403) or any(w in lowered for w in ("unauthori", "auth fail", "forbidden"))


def _timeouts(sdk: Any) -> tuple[type[BaseException], ...]:
    import requests

    return (requests.exceptions.Timeout, TimeoutError)


def _connection_errors(sdk: Any) -> tuple[type[BaseException], ...]:
    import requests

    errors = sdk.exceptions
    return (
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        errors.ConnectError,
        errors.NoConnectError,
        ConnectionError,
    )


@functools.cache
def error_table(sdk: Any) -> tuple[_Row, ...]:
    """The mapping for the SDK module ``sdk``, in order; the first matching row wins."""
    import requests

    rex = requests.exceptions
    vdb = sdk.exceptions.VectorDBException
    return (
        _Row(_timeouts(sdk), None, _timed_out),
        _Row((sdk.exceptions.ConnectError,), lambda f: "timed out" in f.detail.lower(), _timed_out),
        _Row(_connection_errors(sdk), None, _unreachable),
        _Row(
            (rex.InvalidURL, rex.MissingSchema, rex.InvalidSchema, rex.URLRequired, rex.InvalidHeader,
             rex.InvalidProxyURL),
            None,
            lambda f: ConfigurationError(f"{f.where}: invalid URL or header for {f.action}: {f.detail}"),
        ),
        _Row(
            (rex.InvalidJSONError,),
            None,
            lambda f: ConfigurationError(f"{f.where}: {f.action}: a value cannot be sent as JSON: {f.detail}"),
        ),
        _Row((vdb,), _is_auth, _refused_credentials),
        _Row((vdb,), lambda f: f.code in NOT_EXIST, _missing),
        _Row(
            (sdk.exceptions.ParamError,),
            None,
            lambda f: ConfigurationError(f"{f.where}: {f.action}: invalid parameter: {f.detail}"),
        ),
        _Row((vdb,), lambda f: f.code in (502, 503, 504), _unavailable),
        _Row(
            (vdb,),
            None,
            lambda f: StoreError(f"{f.where}: {f.action} failed{f.tries}: {f.detail}", backend=BACKEND, code=f.code),
        ),
    )


def translate(sdk: Any, exc: BaseException, failure: Failure) -> ImageSearchError:
    """The lookalike error for ``exc``: the first row of the table it matches, else a
    :class:`StoreError` naming the exception's type."""
    for row in error_table(sdk):
        if isinstance(exc, row.classes) and (row.when is None or row.when(failure)):
            return row.error(failure)
    f = failure
    return StoreError(
        f"{f.where}: {f.action} failed{f.tries}: {type(exc).__name__}: {f.detail}",
        backend=BACKEND,
        code=f.code,
    )


def is_transient(sdk: Any, exc: BaseException) -> bool:
    """Whether retrying may help: a timeout, a lost connection, a retryable HTTP status."""
    if isinstance(exc, _timeouts(sdk) + _connection_errors(sdk)):
        return True
    return isinstance(exc, sdk.exceptions.ServerInternalError) and exc.code in _RETRY_STATUS


def describe(exc: BaseException) -> str:
    """``exc``'s message on one line (its type's name when it has none or cannot print)."""
    message = getattr(exc, "message", None)
    try:
        text = message if isinstance(message, str) and message else str(exc)
    except Exception:  # some exceptions cannot even print themselves
        text = ""
    return " ".join(text.split()) or type(exc).__name__


def scrub(text: str, key: str) -> str:
    """``text`` without the ``key``, credentials in URLs/headers, or the SDK's boilerplate."""
    if key:
        text = text.replace(key, "***")
    text = _CREDENTIAL_RE.sub(r"\1***", text)
    return text.split("Possible Reasons:", 1)[0].strip()


def leaks(exc: BaseException, key: str) -> bool:
    """True when ``exc``'s chain would show the ``key`` (then it is not kept as cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            text = f"{current!s} {current!r} {current.args!r}"
        except Exception:
            return True
        if key in text:
            return True
        current = current.__cause__ or current.__context__
    return False
