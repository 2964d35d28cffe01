"""Where images come from: folders, glob patterns and the tutorial's CSV.

Each function returns a lazy iterable that streams paths (or :class:`Item` objects
with ids and metadata) in a stable, sorted order without holding the whole listing,
and knows its length (counted on demand) for progress bars.

>>> index.add_many(sources.from_dir("photos/"))            # doctest: +SKIP
>>> index.add_many(sources.from_csv("reverse_image_search.csv"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigurationError
from .images import IMAGE_EXTENSIONS
from .types import ImageInput, MetadataValue

__all__ = ["Item", "Source", "from_csv", "from_dir", "from_glob"]

T = TypeVar("T")


@dataclass(frozen=True)
class Item:
    """An image with an explicit id and/or metadata, for ``add_many``."""

    image: ImageInput
    id: str | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


class Source(Generic[T]):
    """A re-iterable, lazily listed collection of images with a countable length."""

    def __init__(self, description: str, factory: Callable[[], Iterator[T]]) -> None:
        self.description = description
        self._factory = factory
        self._length: int | None = None

    def __iter__(self) -> Iterator[T]:
        return self._factory()

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(1 for _ in self._factory())
        return self._length

    def __repr__(self) -> str:
        return f"<Source {self.description}>"


def _is_image(name: str, extensions: frozenset[str]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def from_dir(
    path: str | os.PathLike[str],
    *,
    recursive: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    include_hidden: bool = False,
) -> Source[Path]:
    """Image files under a folder, sorted, by extension (``.jpg``, ``.png``, ``.webp``...).

    Hidden files and folders (names starting with ``.``) are skipped unless
    ``include_hidden``. Symlinked folders are not followed (no loops).

    Raises:
        ConfigurationError: the folder does not exist or is not a folder.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        reason = "does not exist" if not root.exists() else "is not a folder"
        raise ConfigurationError(f"image folder {str(root)!r} {reason}")
    exts = frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)

    def walk(folder: Path) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        subdirs = []
        for entry in entries:
            if not include_hidden and entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry)
            elif _is_image(entry.name, exts) and entry.is_file():
                yield Path(entry.path)
        if recursive:
            for sub in subdirs:
                yield from walk(Path(sub.path))

    return Source(f"from_dir({str(root)!r})", lambda: walk(root))


def from_glob(pattern: str, *, extensions: Iterable[str] | None = IMAGE_EXTENSIONS) -> Source[Path]:
    """Files matching a glob pattern (``**`` recurses), sorted; by default image files only."""
    exts = None if extensions is None else frozenset(
        e.lower() if e.startswith(".") else "." + e.lower() for e in extensions
    )
    expanded = os.path.expanduser(pattern)

    def matches() -> Iterator[Path]:
        for name in sorted(glob.iglob(expanded, recursive=True)):
            if (exts is None or _is_image(name, exts)) and os.path.isfile(name):
                yield Path(name)

    return Source(f"from_glob({pattern!r})", matches)


def from_csv(
    path: str | os.PathLike[str],
    *,
    path_column: str = "path",
    id_column: str | None = None,
) -> Source[Item]:
    """Rows of a CSV such as the tutorial's ``id,path,label``.

    Paths are relative to the CSV's folder. Every other column becomes metadata (so
    ``label`` is filterable); the ``id`` column is kept as metadata ``csv_id``. A column
    named ``path`` (other than ``path_column``) or ``sha256`` is refused: the index sets
    those fields itself. Ids stay
    path-derived unless ``id_column`` names a column to use as the record id.

    Raises:
        ConfigurationError: the file is missing, has no ``path_column``, or has a
            ``path`` or ``sha256`` column beside it.
    """
    csv_path = Path(path).expanduser()
    if not csv_path.is_file():
        raise ConfigurationError(f"CSV file {str(csv_path)!r} does not exist")
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), [])
    if path_column not in header:
        raise ConfigurationError(
            f"{str(csv_path)!r} has no {path_column!r} column (columns: {', '.join(header) or 'none'})"
        )
    if id_column is not None and id_column not in header:
        raise ConfigurationError(f"{str(csv_path)!r} has no {id_column!r} column")
    for reserved, what in (("path", "each file's resolved path"), ("sha256", "the content hash")):
        if reserved in header and reserved != path_column:
            raise ConfigurationError(
                f"{str(csv_path)!r} has a column {reserved!r}: that metadata field is reserved "
                f"(the index stores {what} there); rename the column"
            )

    def rows() -> Iterator[Item]:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                raw = (row.get(path_column) or "").strip()
                if not raw:
                    continue
                image = Path(raw) if os.path.isabs(raw) else base / raw
                meta: dict[str, Any] = {}
                for key, value in row.items():
                    if key is None or key == path_column or value is None:
                        continue
                    name = "csv_id" if key == "id" and id_column != "id" else key
                    if key == id_column or not name.isidentifier():
                        continue
                    meta[name] = value
                yield Item(image=image, id=row[id_column] if id_column else None, metadata=meta)

    return Source(f"from_csv({str(csv_path)!r})", rows)
