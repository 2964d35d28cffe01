"""What add_many is given: each input with its explicit id and metadata (:class:`Pending`),
the default ids, the reserved fields and how metadata merges with what is stored."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, quote_name
from .filters import value_problem
from .images import ImageBytes, describe_source, resolved_path
from .sources import Item, Source
from .types import HASH_FIELD, PATH_FIELD, Failure, ImageInput, MetadataValue, Record

if TYPE_CHECKING:
    from PIL import Image

Metadata = Mapping[str, MetadataValue] | Sequence[Mapping[str, MetadataValue]] | None

__all__ = [
    "LIBRARY_FIELDS",
    "RESERVED_WHY",
    "Pending",
    "check_lengths",
    "check_user_metadata",
    "is_pil",
    "length",
    "merged_metadata",
    "missing_file",
    "path_id",
    "pending_items",
]


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


@dataclass
class Pending:
    """One input on its way through add_many."""

    position: int
    source: str
    id: str | None
    metadata: dict[str, Any]
    input: Any = None  #: the path, bytes or image given (a path until it is read)
    encoded: ImageBytes | None = None
    image: Image.Image | None = None
    sha256: str | None = None
    existing: Record | None = None
    error: str | None = None
    pixels: Any = None  #: what the embedder's ``pixels`` made of the image
    existed: bool = False


def pending_items(
    images: Iterable[ImageInput | Item], ids: Sequence[str] | None, metadata: Metadata, listed: list[int],
) -> Iterator[Pending]:
    """The inputs, each with its metadata and explicit id (checked as they come)."""
    if isinstance(images, (str, os.PathLike)):
        where = os.fspath(images)
        if os.path.isdir(where):
            raise ConfigurationError(
                f"add_many takes an iterable of images, not a folder path; for the images in "
                f"{quote_name(where)} use add_many(sources.from_dir({where!r}))"
            )
        raise ConfigurationError(
            "add_many takes an iterable of images, not one path; use add() for one image, "
            "sources.from_dir(folder) for a folder or sources.from_glob(pattern) for a pattern"
        )
    if isinstance(images, bytes) or is_pil(images):
        raise ConfigurationError("add_many takes an iterable of images; use add() for one image")
    shared_meta: Mapping[str, MetadataValue] | None = None
    per_meta: list[Mapping[str, MetadataValue]] | None = None
    if isinstance(metadata, Mapping):
        shared_meta = metadata
    elif metadata is not None:
        per_meta = list(metadata)
    id_list = None if ids is None else list(ids)
    count = 0
    position = -1
    entries: Iterable[Any] = images.entries() if isinstance(images, Source) else images
    for entry in entries:
        if isinstance(entry, Failure):  # what the source found but cannot use: no image, no position
            yield Pending(position, entry.source, entry.id, {}, error=entry.reason)
            continue
        position += 1
        count += 1
        listed[0] = count
        item = entry if isinstance(entry, Item) else Item(entry)
        meta: dict[str, Any] = dict(item.metadata)
        if shared_meta is not None:
            meta.update(shared_meta)
        if per_meta is not None:
            if position >= len(per_meta):
                raise ConfigurationError(f"metadata has {len(per_meta)} entries but there are more images")
            meta.update(per_meta[position])
        explicit_id = item.id
        if id_list is not None:
            if position >= len(id_list):
                raise ConfigurationError(f"ids has {len(id_list)} entries but there are more images")
            explicit_id = id_list[position]
        if explicit_id is not None and (not isinstance(explicit_id, str) or not explicit_id):
            raise ConfigurationError(f"ids must be non-empty strings, got {explicit_id!r}")
        source = describe_source(item.image)
        if item.metadata:
            check_user_metadata(item.metadata, f" of {quote_name(source)}")
        yield Pending(position, source, explicit_id, meta, input=item.image)
    if id_list is not None and count != len(id_list):
        raise ConfigurationError(f"ids has {len(id_list)} entries but there were {count} images")


def check_lengths(total: int | None, ids: Any, metadata: Any) -> None:
    if total is None:
        return
    if ids is not None and not isinstance(ids, str) and len(ids) != total:
        raise ConfigurationError(f"ids has {len(ids)} entries but there are {total} images")
    if metadata is not None and not isinstance(metadata, Mapping) and len(metadata) != total:
        raise ConfigurationError(f"metadata has {len(metadata)} entries but there are {total} images")


def length(images: Iterable[Any]) -> int | None:
    try:
        return len(images)  # type: ignore[arg-type]
    except TypeError:
        return None


def is_pil(obj: object) -> bool:
    module = type(obj).__module__
    return module.startswith("PIL.") and hasattr(obj, "getpixel")


def missing_file(path: str) -> str | None:
    """``None``: the file is there; ``""``: it is really gone; else why it cannot be checked."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # ENOENT, ENOTDIR: nothing can be at that path
        return ""
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    except ValueError as exc:  # e.g. a NUL character: not a path this system can hold
        return str(exc)
    return None
