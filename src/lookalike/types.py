"""Value types shared by the facade, the embedders and the stores."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "AddReport",
    "Failure",
    "Filter",
    "Hit",
    "ImageInput",
    "MetadataValue",
    "QueryInput",
    "Record",
    "Schema",
    "Text",
    "Vector",
]

Vector = NDArray[np.float32]
MetadataValue = str | int | float | bool
ImageInput = Union[str, "os.PathLike[str]", bytes, "Image.Image"]  # noqa: UP007
QueryInput = Union[ImageInput, NDArray[Any], "Hit", "Record", "Text"]  # noqa: UP007
Filter = Mapping[str, Any]
"""``{"label": "cat"}`` (equality) or ``{"label": ["cat", "dog"]}`` (in); keys are ANDed."""


@dataclass(frozen=True)
class Text:
    """A text query, ``index.search(Text("a red bicycle"))``: searching by words needs an
    embedder with a text tower (a :class:`~lookalike.protocols.TextEmbedder`).

    A bare ``str`` given to ``search`` is always a path to an image file, never text.
    """

    text: str

    def __post_init__(self) -> None:
        from .errors import ConfigurationError

        if not isinstance(self.text, str) or not self.text.strip():
            raise ConfigurationError(f"Text takes a non-empty string, got {self.text!r}")


#: Metadata keys the facade fills in itself.
PATH_FIELD = "path"
HASH_FIELD = "sha256"


@dataclass(frozen=True)
class Schema:
    """What a store holds: vector size, the embedder that made them, metric and filter fields.

    ``identity`` is the embedder's identity string; a store refuses vectors from an
    embedder with another identity. ``fields`` are the metadata fields that filters may
    use (``path`` is always one).
    """

    dim: int
    identity: str
    metric: str = "cosine"
    fields: tuple[str, ...] = ("path", "label")

    def __post_init__(self) -> None:
        from .errors import ConfigurationError

        if not isinstance(self.dim, int) or self.dim <= 0:
            raise ConfigurationError(f"Schema dim must be a positive int, got {self.dim!r}")
        if not self.identity or not isinstance(self.identity, str):
            raise ConfigurationError("Schema identity must be a non-empty string")
        if self.metric != "cosine":
            raise ConfigurationError(f"only metric='cosine' is supported, got {self.metric!r}")
        fields = tuple(dict.fromkeys((PATH_FIELD, *self.fields)))
        for name in fields:
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigurationError(f"field names must be identifiers, got {name!r}")
            if name in ("id", "vector", "score"):
                raise ConfigurationError(f"field name {name!r} is reserved")
        object.__setattr__(self, "fields", fields)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "identity": self.identity,
            "metric": self.metric,
            "fields": list(self.fields),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        return cls(
            dim=int(data["dim"]),
            identity=str(data["identity"]),
            metric=str(data.get("metric", "cosine")),
            fields=tuple(data.get("fields", ())),
        )


@dataclass(frozen=True)
class Record:
    """One stored item: an id, its L2-normalised vector and its metadata.

    ``metadata`` holds the facade's ``path`` and ``sha256`` (content hash) when known,
    plus whatever the user attached.
    """

    id: str
    vector: Vector
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)

    @property
    def path(self) -> str | None:
        value = self.metadata.get(PATH_FIELD)
        return None if value is None else str(value)

    def __repr__(self) -> str:
        return f"Record(id={self.id!r}, dim={len(self.vector)}, metadata={dict(self.metadata)!r})"


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is cosine similarity: higher is more similar, 1.0 is identical.

    ``metadata`` holds the user's fields only: the file's ``path`` and the ``content_hash``
    (sha256 of the file's bytes, or of the pixels of an in-memory image) are attributes.
    """

    id: str
    score: float
    path: str | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    content_hash: str | None = None

    @classmethod
    def from_metadata(cls, id: str, score: float, metadata: Mapping[str, Any]) -> Hit:
        """Build a hit from a store's metadata, moving ``path`` and the content hash into
        their own attributes."""
        rest = {k: v for k, v in metadata.items() if k not in (PATH_FIELD, HASH_FIELD)}
        path = metadata.get(PATH_FIELD)
        digest = metadata.get(HASH_FIELD)
        return cls(
            id=id,
            score=float(score),
            path=None if path is None else str(path),
            metadata=rest,
            content_hash=digest if isinstance(digest, str) else None,
        )

    def __repr__(self) -> str:
        where = f" path={self.path!r}" if self.path else ""
        return f"<Hit {self.id!r} score={self.score:.4f}{where}>"

    def _repr_html_(self) -> str:
        from .display import hits_html

        return hits_html([self], ranked=False)


@dataclass(frozen=True)
class Failure:
    """An image that ``add_many`` could not store, with the reason."""

    source: str
    reason: str
    id: str | None = None


@dataclass(repr=False)
class AddReport:
    """What ``add_many`` did: ids added, updated and skipped as unchanged, and failures.

    ``embedded`` counts the images that went through the model (an update of metadata
    alone keeps its vector and is not embedded); ``None`` means not counted (a report
    built by hand), read as ``stored``. ``rate`` is embedded images per second, the
    figure the progress bar shows.
    """

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    embedded: int | None = None

    @property
    def stored(self) -> int:
        """Number of records written (added + updated)."""
        return len(self.added) + len(self.updated)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def rate(self) -> float | None:
        """Images embedded per second, or ``None`` when none were (or no time passed)."""
        embedded = self.stored if self.embedded is None else self.embedded
        if embedded <= 0 or self.seconds <= 0:
            return None
        return embedded / self.seconds

    def __str__(self) -> str:
        text = (
            f"added {len(self.added)}, updated {len(self.updated)}, "
            f"unchanged {len(self.unchanged)}, failed {len(self.failed)} "
            f"in {self.seconds:.1f}s"
        )
        embedded = self.stored if self.embedded is None else self.embedded
        rate = self.rate
        if rate is not None and embedded == self.stored:
            text += f", {format_rate(rate)}"
        elif rate is not None:
            text += f", {embedded} embedded at {format_rate(rate)}"
        elif self.stored and embedded == 0:
            text += ", metadata only (nothing embedded)"
        return text

    def __repr__(self) -> str:
        from .display import report_text

        return report_text(self)

    def _repr_html_(self) -> str:
        from .display import report_html

        return report_html(self)


def format_rate(images_per_second: float) -> str:
    """``12.3 img/s``: how the report and the progress bar both write a rate."""
    return f"{images_per_second:.1f} img/s"
