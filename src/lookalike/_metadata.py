"""Ids and metadata of what add_many stores: default ids, reserved fields, merging."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError
from .filters import value_problem
from .images import resolved_path
from .types import HASH_FIELD, PATH_FIELD

__all__ = ["LIBRARY_FIELDS", "RESERVED_WHY", "check_user_metadata", "merged_metadata", "path_id"]


def path_id(path: str | os.PathLike[str]) -> str:
    """The default id of an image file: derived from its absolute, resolved path."""
    return id_of_resolved(resolved_path(path))


def id_of_resolved(resolved: str) -> str:
    return hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:32]


#: Metadata fields the index sets itself; a user value for them is refused.
LIBRARY_FIELDS = (PATH_FIELD, HASH_FIELD)
RESERVED_WHY = {
    PATH_FIELD: "the index stores each file's resolved path there",
    HASH_FIELD: "the index stores the content hash there",
}


def check_user_metadata(metadata: Any, where: str) -> None:
    """Refuse reserved fields and values no store can keep, naming the field and the file."""
    if not isinstance(metadata, Mapping):
        raise ConfigurationError(f"metadata{where} must be a mapping, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if key in LIBRARY_FIELDS:
            raise ConfigurationError(
                f"metadata field {key!r}{where} is reserved: {RESERVED_WHY[key]}; "
                "give your value another name"
            )
        problem = value_problem(value)
        if problem is not None:
            raise ConfigurationError(f"metadata field {key!r}{where} {problem}")


def merged_metadata(stored: Mapping[str, Any] | None, given: dict[str, Any], replace: bool) -> dict[str, Any]:
    """A record's new metadata: the stored fields (unless ``replace``) updated by the given
    ones; ``path`` and ``sha256`` always describe the input being added."""
    if stored is None or replace:
        return given
    merged = {k: v for k, v in stored.items() if k not in LIBRARY_FIELDS}
    merged.update(given)
    return merged
