"""Where images come from: folders, glob patterns and the tutorial's CSV.

Each function returns a lazy iterable that streams paths (or :class:`Item` objects
with ids and metadata) in a stable, sorted order without holding the whole listing,
and knows its length (counted on demand) for progress bars.

>>> index.add_many(sources.from_dir("photos/"))            # doctest: +SKIP
>>> index.add_many(sources.from_csv("reverse_image_search.csv"))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigurationError, quote_name
from .images import IMAGE_EXTENSIONS, not_regular_reason
from .types import Failure, ImageInput, MetadataValue

__all__ = ["Item", "Source", "from_csv", "from_dir", "from_glob"]

T = TypeVar("T")

@dataclass(frozen=True)
class Item:
    """An image with an explicit id and/or metadata, for ``add_many``."""

    image: ImageInput
    id: str | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


class Source(Generic[T]):
    """A re-iterable, lazily listed collection of images with a countable length.

    Iterating yields the images. What the source found but could not use (a folder it
    cannot list, a file that is not a regular file) is not dropped silently: the last
    iteration's problems are in :attr:`failures`, and ``add_many`` lists them in
    ``AddReport.failed`` (it reads the source through :meth:`entries`).
    """

    def __init__(
        self,
        description: str,
        factory: Callable[[], Iterator[T | Failure]],
        *,
        empty_message: str | None = None,
    ) -> None:
        self.description = description
        self._factory = factory
        self._length: int | None = None
        #: Problems met by the last iteration, as :class:`~lookalike.types.Failure`.
        self.failures: list[Failure] = []
        #: What to tell a user when the source yields no image.
        self.empty_message = empty_message or f"{description} yields no images"

    def __iter__(self) -> Iterator[T]:
        failures: list[Failure] = []
        self.failures = failures
        for entry in self._factory():
            if isinstance(entry, Failure):
                failures.append(entry)
            else:
                yield entry

    def entries(self) -> Iterator[T | Failure]:
        """The images and, in their place, a :class:`~lookalike.types.Failure` for each problem."""
        return self._factory()

    def __len__(self) -> int:
        if self._length is None:
            self._length = sum(1 for entry in self._factory() if not isinstance(entry, Failure))
        return self._length

    def __repr__(self) -> str:
        return f"<Source {self.description}>"


def _is_image(name: str, extensions: frozenset[str]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _normalise_extensions(extensions: Iterable[str]) -> frozenset[str]:
    return frozenset(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def _looked_for(exts: frozenset[str]) -> str:
    return ", ".join(sorted(exts)) if exts else "no extensions"


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(exc, FileNotFoundError):
        return "broken symbolic link (its target does not exist)"
    return exc.strerror or str(exc) or type(exc).__name__


def _folder_failure(folder: str, exc: OSError) -> Failure:
    return Failure(folder, f"cannot list folder: {_os_reason(exc)}")


def _file_entry(path: str, st: os.stat_result | OSError, seen: set[tuple[int, int]]) -> Path | Failure | None:
    """A listed image-named file: its path, a Failure, or None when already yielded."""
    if isinstance(st, OSError):
        return Failure(path, f"cannot read file: {_os_reason(st)}")
    if not stat.S_ISREG(st.st_mode):
        return Failure(path, not_regular_reason(st.st_mode))
    key = (st.st_dev, st.st_ino)
    if key in seen:  # the same file again, through a symlink: one record is enough
        return None
    seen.add(key)
    return Path(path)


def _stat(path: str) -> os.stat_result | OSError:
    try:
        return os.stat(path)
    except OSError as exc:
        return exc


def from_dir(
    path: str | os.PathLike[str],
    *,
    recursive: bool = True,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    include_hidden: bool = False,
) -> Source[Path]:
    """Image files under a folder, sorted, by extension (``.jpg``, ``.png``, ``.webp``...).

    Hidden files and folders (names starting with ``.``) are skipped unless
    ``include_hidden``. Symlinked folders and files are followed; each real folder and
    file is visited once (by device and inode), so links back up the tree end instead of
    looping. A folder that cannot be listed (permission denied, I/O error) and an
    image-named file that is not a regular file (FIFO, socket, device) or cannot be
    examined are reported in :attr:`Source.failures` (``AddReport.failed`` in
    ``add_many``), never skipped silently.

    Raises:
        ConfigurationError: the folder does not exist or is not a folder.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        reason = "does not exist" if not root.exists() else "is not a folder"
        raise ConfigurationError(f"image folder {str(root)!r} {reason}")
    exts = _normalise_extensions(extensions)

    def walk() -> Iterator[Path | Failure]:
        seen_dirs: set[tuple[int, int]] = set()
        seen_files: set[tuple[int, int]] = set()
        try:
            st = os.stat(root)
        except OSError as exc:
            yield _folder_failure(str(root), exc)
            return
        seen_dirs.add((st.st_dev, st.st_ino))
        pending = [str(root)]  # a stack of folders: each one's files, then its subfolders in order
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                yield _folder_failure(folder, exc)
                continue
            subdirs = []
            for entry in entries:
                if not include_hidden and entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()  # follows symlinks
                except OSError as exc:  # a link whose target cannot be examined: maybe a folder
                    is_dir = False
                    if exc.errno != errno.ELOOP and not _is_image(entry.name, exts):
                        yield Failure(entry.path, f"cannot follow symbolic link: {_os_reason(exc)}")
                        continue
                if is_dir:
                    if recursive:
                        st_dir = _stat(entry.path)
                        if isinstance(st_dir, OSError):
                            yield _folder_failure(entry.path, st_dir)
                        elif (st_dir.st_dev, st_dir.st_ino) not in seen_dirs:  # else: a loop, or seen
                            seen_dirs.add((st_dir.st_dev, st_dir.st_ino))
                            subdirs.append(entry.path)
                elif _is_image(entry.name, exts):
                    found = _file_entry(entry.path, _stat(entry.path), seen_files)
                    if found is not None:
                        yield found
            pending.extend(reversed(subdirs))

    return Source(
        f"from_dir({str(root)!r})",
        walk,
        empty_message=f"no images found in {quote_name(str(root))} (looked for {_looked_for(exts)})",
    )


def _entry_is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError:
        return False


def _has_magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


def from_glob(pattern: str, *, extensions: Iterable[str] | None = IMAGE_EXTENSIONS) -> Source[Path]:
    """Files matching a glob pattern (``**`` recurses), sorted; by default image files only.

    The pattern means what :func:`glob.glob` with ``recursive=True`` means (``*`` and
    ``**`` skip names starting with ``.``), but each real folder is searched once per
    pattern position and each real file is listed once (by device and inode), so
    symlink loops such as ``a -> .`` neither repeat images nor run forever. Folders that
    cannot be listed and matching files that are not regular files are reported as in
    :func:`from_dir`.
    """
    exts = None if extensions is None else _normalise_extensions(extensions)
    expanded = os.path.expanduser(pattern)

    def matches() -> Iterator[Path | Failure]:
        found: list[tuple[str, os.stat_result | OSError]] = []
        failures: list[Failure] = []
        _glob(expanded, exts, found, failures)
        seen: set[tuple[int, int]] = set()
        for name, st in sorted(found, key=lambda pair: pair[0]):
            entry = _file_entry(name, st, seen)
            if entry is not None:
                yield entry
        yield from failures

    looked = "" if exts is None else f" (looked for {_looked_for(exts)})"
    return Source(
        f"from_glob({pattern!r})",
        matches,
        empty_message=f"no images match {quote_name(pattern)}{looked}",
    )


def _glob(
    pattern: str,
    exts: frozenset[str] | None,
    found: list[tuple[str, os.stat_result | OSError]],
    failures: list[Failure],
) -> None:
    """Collect the files that ``pattern`` matches, each folder searched once per position."""
    drive, rest = os.path.splitdrive(pattern)
    absolute = rest.startswith(os.sep) or (os.altsep is not None and rest.startswith(os.altsep))
    parts = [p for p in re.split(r"[\\/]" if os.altsep else re.escape(os.sep), rest) if p]
    if not parts:
        return
    lead = 0
    while lead < len(parts) and not _has_magic(parts[lead]):
        lead += 1
    if lead == len(parts):  # no wildcard: one file, if it exists
        if os.path.lexists(pattern) and not os.path.isdir(pattern) and (exts is None or _is_image(pattern, exts)):
            found.append((pattern, _stat(pattern)))
        return
    prefix = drive + (os.sep if absolute else "")
    base = prefix + os.sep.join(parts[:lead]) if lead else (prefix or "")
    tail = parts[lead:]
    compiled = [re.compile(fnmatch.translate(part)) if _has_magic(part) else None for part in tail]
    visited: set[tuple[int, int, int]] = set()

    def join(folder: str, name: str) -> str:
        return os.path.join(folder, name) if folder else name

    def visit(folder: str, position: int) -> None:
        while position < len(tail) and tail[position] != "**" and compiled[position] is None:
            folder = join(folder, tail[position])  # a literal part (a name, "." or ".."): no listing
            if position == len(tail) - 1:
                if os.path.lexists(folder) and not os.path.isdir(folder):
                    take(folder, tail[position])
                return
            position += 1
        st = _stat(folder or os.curdir)
        if isinstance(st, OSError):
            if not isinstance(st, (FileNotFoundError, NotADirectoryError)):
                failures.append(_folder_failure(folder or os.curdir, st))
            return
        key = (st.st_dev, st.st_ino, position)
        if key in visited:  # this folder was searched for this part of the pattern already
            return
        visited.add(key)
        try:
            with os.scandir(folder or os.curdir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except NotADirectoryError:
            return
        except OSError as exc:
            failures.append(_folder_failure(folder or os.curdir, exc))
            return
        part, last = tail[position], position == len(tail) - 1
        if part == "**":  # zero or more folders
            if last:  # a trailing "**" lists every file below
                for entry in entries:
                    if not entry.name.startswith(".") and not _entry_is_dir(entry):
                        take(join(folder, entry.name), entry.name)
            else:
                visit(folder, position + 1)
            for entry in entries:
                if not entry.name.startswith(".") and _entry_is_dir(entry):
                    visit(join(folder, entry.name), position)
            return
        regex = compiled[position]
        for entry in entries:
            if entry.name.startswith(".") and not part.startswith("."):
                continue  # as in glob: wildcards skip hidden names
            if regex is None or not regex.match(entry.name):
                continue
            path = join(folder, entry.name)
            if _entry_is_dir(entry):
                if not last:
                    visit(path, position + 1)
            elif last:
                take(path, entry.name)

    def take(path: str, name: str) -> None:
        if exts is None or _is_image(name, exts):
            found.append((path, _stat(path)))

    visit(base, 0)


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

    return Source(
        f"from_csv({str(csv_path)!r})", rows, empty_message=f"no images listed in {quote_name(str(csv_path))}"
    )
