"""The exception hierarchy of lookalike.

Every error the library raises on purpose derives from :class:`ImageSearchError`;
backend errors (SQLite, tcvectordb, requests, torch hub) are translated into it at
one boundary per backend, with the original kept as ``__cause__``::

    ImageSearchError
    ├── ConfigurationError        bad argument or setting               (also ValueError)
    ├── MissingDependencyError    an optional extra is not installed    (also ImportError)
    ├── ImageLoadError            one image could not be read           (.source, .reason)
    ├── ModelLoadError            model weights could not be obtained or loaded
    ├── SchemaMismatchError       store built by another embedder, dim or metric
    ├── NotFoundError             no record with that id                (also KeyError)
    └── StoreError                the vector store failed               (.backend)
        ├── StoreConnectionError  could not reach the store
        ├── StoreTimeoutError     the store did not answer in time
        └── StoreCorruptError     the store's files are damaged or not ours

    DamagedRecordWarning          a stored record cannot be read; it is skipped (a warning)

Messages name the thing involved and, where there is one, the fix. They never
contain credentials.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigurationError",
    "DamagedRecordWarning",
    "ImageLoadError",
    "ImageSearchError",
    "MissingDependencyError",
    "ModelLoadError",
    "NotFoundError",
    "SchemaMismatchError",
    "StoreConnectionError",
    "StoreCorruptError",
    "StoreError",
    "StoreTimeoutError",
]


def quote_name(name: str) -> str:
    """``name`` as one printable token for a one-line message.

    A printable name is shown as it is; one with a newline, another control character or
    an undecodable byte is shown repr-style (``'a\\nb.jpg'``), so it cannot split or
    garble the line.
    """
    return name if name and name.isprintable() else repr(name)


class ImageSearchError(Exception):
    """Base class of every error lookalike raises."""


class ConfigurationError(ImageSearchError, ValueError):
    """An argument, setting or credential is invalid or missing."""


class MissingDependencyError(ImageSearchError, ImportError):
    """An optional dependency is not installed; the message names the extra to install.

    ``extras`` lists every extra the feature needs (``extra`` first), so that one
    ``pip install 'lookalike[onnx,offline]'`` installs all of them at once.
    """

    def __init__(self, package: str, extra: str, feature: str, also: Sequence[str] = ()) -> None:
        self.package = package
        self.extra = extra
        self.feature = feature
        self.extras = _needed_extras([extra, *also])
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed. "
            f"Install it with: pip install 'lookalike[{','.join(self.extras)}]'"
        )

    def __reduce__(self) -> tuple[type, tuple[str, str, str, tuple[str, ...]]]:
        return (type(self), (self.package, self.extra, self.feature, self.extras))


#: Extras that install everything another extra does (``[onnx]``, ``[offline]`` and ``[clip]`` bring torch).
_EXTRA_INCLUDES = {"onnx": frozenset({"torch"}), "offline": frozenset({"torch"}), "clip": frozenset({"torch"}),
                   "all": frozenset({"torch", "offline", "onnx", "clip", "tencent", "ui", "ann", "ray"})}


def _needed_extras(extras: Sequence[str]) -> tuple[str, ...]:
    """``extras`` in order, without repeats or extras another one already installs."""
    unique = list(dict.fromkeys(e for e in extras if e))
    return tuple(e for e in unique if not any(e in _EXTRA_INCLUDES.get(o, ()) for o in unique if o != e))


class ImageLoadError(ImageSearchError):
    """An image could not be opened or decoded.

    Attributes:
        source: a printable name of the image (its path, or ``<bytes>`` / ``<PIL image>``).
        reason: why it failed, in a few words.
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"cannot load image {quote_name(source)}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.source, self.reason))


class ModelLoadError(ImageSearchError):
    """Model weights could not be downloaded, found or loaded.

    Attributes:
        cli_message: the same message with its advice spelled for the ``lookalike``
            command (``--embedder resnet50:FILE``) instead of in Python
            (``weights='/path'``); the command line prints this one.
    """

    def __init__(self, message: str, *, cli_message: str | None = None) -> None:
        self.cli_message = cli_message or message
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_model_load_error, (type(self), str(self), self.cli_message))


def _rebuild_model_load_error(cls: type[ModelLoadError], message: str, cli_message: str) -> ModelLoadError:
    return cls(message, cli_message=cli_message)


class SchemaMismatchError(ImageSearchError):
    """The store was created for another embedder, dimension, metric or field set."""


class NotFoundError(ImageSearchError, KeyError):
    """No record has the requested id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreError(ImageSearchError):
    """The vector store failed. ``backend`` names the store class."""

    def __init__(self, message: str, *, backend: str = "", code: int | None = None) -> None:
        self.backend = backend
        self.code = code
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_store_error, (type(self), str(self), self.backend, self.code))


def _rebuild_store_error(
    cls: type[StoreError], message: str, backend: str, code: int | None
) -> StoreError:
    return cls(message, backend=backend, code=code)


class StoreConnectionError(StoreError):
    """The store could not be reached."""


class StoreTimeoutError(StoreError):
    """The store did not answer in time."""


class StoreCorruptError(StoreError):
    """The store's files are damaged, or are not a lookalike store."""


class DamagedRecordWarning(UserWarning):
    """A stored record cannot be read (damaged metadata or vector) and was skipped.

    Searches and scans go on without it; ``lookalike check`` lists such records and
    ``lookalike check --fix`` drops them (re-indexing the file also replaces its record).
    """
