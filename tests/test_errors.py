"""The exception hierarchy: one root, the documented bases, and every error pickles."""

from __future__ import annotations

import pickle

import pytest

import lookalike
from lookalike import errors
from lookalike.errors import (
    ConfigurationError,
    DamagedRecordWarning,
    ImageLoadError,
    ImageSearchError,
    MissingDependencyError,
    ModelLoadError,
    NotFoundError,
    SchemaMismatchError,
    StoreConnectionError,
    StoreCorruptError,
    StoreError,
    StoreTimeoutError,
    quote_name,
)

PARENTS: dict[type[Exception], tuple[type[BaseException], ...]] = {
    ConfigurationError: (ImageSearchError, ValueError),
    MissingDependencyError: (ImageSearchError, ImportError),
    ImageLoadError: (ImageSearchError,),
    ModelLoadError: (ImageSearchError,),
    SchemaMismatchError: (ImageSearchError,),
    NotFoundError: (ImageSearchError, KeyError),
    StoreError: (ImageSearchError,),
    StoreConnectionError: (StoreError,),
    StoreTimeoutError: (StoreError,),
    StoreCorruptError: (StoreError,),
    DamagedRecordWarning: (UserWarning,),  # a warning, not an error: not an ImageSearchError
}

EXAMPLES: list[Exception] = [
    ImageSearchError("generic"),
    ConfigurationError("k must be a positive integer"),
    MissingDependencyError("tcvectordb", "tencent", "TencentVectorStore"),
    ImageLoadError("/photos/a.jpg", "truncated file"),
    ModelLoadError("cannot download weights"),
    SchemaMismatchError("built by fake:v1, not resnet50"),
    NotFoundError("no record with id 'x'"),
    StoreError("failed", backend="LocalStore", code=7),
    StoreConnectionError("cannot reach", backend="TencentVectorStore"),
    StoreTimeoutError("timed out", backend="LocalStore"),
    StoreCorruptError("damaged", backend="LocalStore", code=None),
    DamagedRecordWarning("store.lookalike: record 'a' is damaged"),
]


def test_every_error_is_listed_and_has_parents() -> None:
    public = {name for name in errors.__all__}
    assert public == {cls.__name__ for cls in PARENTS} | {"ImageSearchError"}
    for cls, parents in PARENTS.items():
        for parent in parents:
            assert issubclass(cls, parent), (cls, parent)
        assert cls.__doc__
        assert getattr(lookalike, cls.__name__) is cls  # re-exported at the top


def test_examples_cover_every_class() -> None:
    assert {type(e) for e in EXAMPLES} == {ImageSearchError, *PARENTS}


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_pickle_round_trip(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    for attr in ("source", "reason", "backend", "code", "package", "extra", "feature"):
        if hasattr(error, attr):
            assert getattr(copy, attr) == getattr(error, attr)


def test_image_load_error_names_source_and_reason() -> None:
    error = ImageLoadError("/photos/a.jpg", "truncated file")
    assert error.source == "/photos/a.jpg" and error.reason == "truncated file"
    assert str(error) == "cannot load image /photos/a.jpg: truncated file"


@pytest.mark.parametrize("name", ["bad\nname.jpg", "tab\there.png", "esc\x1b[31m.png", "\udcff.jpg", ""])
def test_odd_file_names_are_quoted_on_one_line(name: str) -> None:
    message = str(ImageLoadError(name, "empty file"))
    assert message == f"cannot load image {name!r}: empty file"
    assert message.isprintable()
    assert quote_name("plain name.jpg") == "plain name.jpg"


def test_missing_dependency_error_says_what_to_install() -> None:
    error = MissingDependencyError("tcvectordb", "tencent", "TencentVectorStore")
    assert "pip install 'lookalike[tencent]'" in str(error)
    assert "tcvectordb" in str(error) and "TencentVectorStore" in str(error)


def test_not_found_error_message_is_not_quoted_like_a_key_error() -> None:
    error = NotFoundError("no record with id 'x'")
    assert str(error) == "no record with id 'x'"
    assert str(NotFoundError()) == ""
    with pytest.raises(KeyError):
        raise error


def test_store_error_keeps_backend_and_code() -> None:
    error = StoreTimeoutError("timed out", backend="LocalStore", code=5)
    assert error.backend == "LocalStore" and error.code == 5
    assert StoreError("x").backend == "" and StoreError("x").code is None


def test_one_except_clause_catches_everything() -> None:
    for error in EXAMPLES:
        if isinstance(error, Warning):  # warned, never raised
            continue
        with pytest.raises(ImageSearchError):
            raise error
