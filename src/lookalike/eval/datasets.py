"""Evaluation data sets on disk: the Towhee layout and plain folder-per-class layouts.

- **Towhee layout** (``train/``, ``test/``, optionally ``reverse_image_search.csv``): the
  gallery is ``train/`` (labels from the CSV's ``label`` column when the CSV exists, else the
  class folder names), the queries are ``test/<label>/*``.
- **Folder per class** (``ROOT/<label>/*.jpg``): from each class folder's sorted file
  list, ``queries_per_class`` files are drawn with ``random.Random(f"{seed}:{label}")`` and
  held out of the gallery as queries. Classes with no more images than that stay in the
  gallery and give no query. Seeding per class keeps a class's queries stable when other
  classes are added or removed.
"""

from __future__ import annotations

import csv
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError
from ..sources import from_dir

__all__ = ["EvalDataset", "LabelledImage", "load_dataset"]

TOWHEE_CSV = "reverse_image_search.csv"


@dataclass(frozen=True)
class LabelledImage:
    """An image file and its class label."""

    path: Path
    label: str


@dataclass(frozen=True)
class EvalDataset:
    """A gallery and queries with labels; relevant = gallery images with the query's label."""

    root: Path
    layout: str  #: ``"towhee"`` or ``"folders"``
    gallery: tuple[LabelledImage, ...]
    queries: tuple[LabelledImage, ...]
    rule: str  #: how the queries were chosen, in words

    def __str__(self) -> str:
        return (
            f"{self.root} ({self.layout} layout): {len(self.gallery)} gallery images, "
            f"{len(self.queries)} queries; {self.rule}"
        )


def _labelled_folder(folder: Path) -> list[LabelledImage]:
    return [LabelledImage(p, p.parent.relative_to(folder).as_posix()) for p in from_dir(folder)
            if p.parent != folder]


def load_dataset(root: str | os.PathLike[str], *, queries_per_class: int = 1, seed: int = 0) -> EvalDataset:
    """Read a data set folder in either layout (see the module docstring).

    Raises:
        ConfigurationError: the folder is missing, or holds no labelled images or no queries.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ConfigurationError(f"data set folder {str(base)!r} does not exist")
    if (base / "train").is_dir() and (base / "test").is_dir():
        data = _towhee(base)
    else:
        if not isinstance(queries_per_class, int) or queries_per_class < 1:
            raise ConfigurationError(f"queries_per_class must be a positive int, got {queries_per_class!r}")
        data = _folders(base, queries_per_class, seed)
    if not data.gallery or not data.queries:
        raise ConfigurationError(
            f"{str(base)!r} gives {len(data.gallery)} gallery images and {len(data.queries)} queries; "
            "expected train/ and test/ folders, or one folder per class with at least two images each"
        )
    return data


def _towhee(base: Path) -> EvalDataset:
    csv_path = base / TOWHEE_CSV
    if csv_path.is_file():
        gallery = []
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            for row in csv.DictReader(fh):
                raw, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not raw or not label:
                    raise ConfigurationError(f"{str(csv_path)!r} needs non-empty path and label columns")
                gallery.append(LabelledImage(Path(raw) if os.path.isabs(raw) else base / raw, label))
        source = f"gallery from {TOWHEE_CSV}"
    else:
        gallery = _labelled_folder(base / "train")
        source = "gallery = train/<label>/*"
    queries = _labelled_folder(base / "test")
    rule = f"{source}, queries = test/<label>/*"
    return EvalDataset(base, "towhee", tuple(gallery), tuple(queries), rule)


def _folders(base: Path, per_class: int, seed: int) -> EvalDataset:
    by_label: dict[str, list[LabelledImage]] = {}
    for item in _labelled_folder(base):
        by_label.setdefault(item.label, []).append(item)
    gallery: list[LabelledImage] = []
    queries: list[LabelledImage] = []
    for label in sorted(by_label):
        items = sorted(by_label[label], key=lambda i: i.path.name)
        if len(items) <= per_class:
            gallery.extend(items)
            continue
        chosen = set(random.Random(f"{seed}:{label}").sample(range(len(items)), per_class))
        for i, item in enumerate(items):
            (queries if i in chosen else gallery).append(item)
    rule = (
        f"{per_class} quer{'y' if per_class == 1 else 'ies'} per class held out of the gallery, "
        f"drawn with random.Random('{seed}:<label>') from the sorted file names"
    )
    return EvalDataset(base, "folders", tuple(gallery), tuple(queries), rule)
