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
    "Mix",
    "QueryInput",
    "Record",
    "Schema",
    "SimilarPairs",
    "Text",
    "Vector",
]

Vector = NDArray[np.float32]
MetadataValue = str | int | float | bool
ImageInput = Union[str, "os.PathLike[str]", bytes, "Image.Image"]  # noqa: UP007
QueryInput = Union[ImageInput, NDArray[Any], "Hit", "Record", "Text", "Mix"]  # noqa: UP007
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


class Mix:
    """A weighted query: the normalised sum of its parts' vectors, e.g. an image nudged by
    words, rclip's ``query + 0.3 * "text"``::

        index.search(Mix(("beach.jpg", 1.0), (Text("at night"), 0.3)))
        index.search(Mix((Text("a dog"), 1.0), (Text("grass"), -0.5)))   # minus: away from it

    A part is any query but a ``Mix`` (an image, a vector, a stored ``Hit`` or ``Record``, a
    ``Text``); its weight a finite number, negative to subtract. Parts that cancel out
    (a zero sum) are a :class:`~lookalike.errors.ConfigurationError` when searched.
    """

    __slots__ = ("parts",)
    parts: tuple[tuple[Any, float], ...]

    def __init__(self, *parts: tuple[Any, float]) -> None:
        from .errors import ConfigurationError

        if not parts:
            raise ConfigurationError("Mix takes one or more (query, weight) pairs")
        checked = []
        for part in parts:
            if not isinstance(part, tuple) or len(part) != 2:
                raise ConfigurationError(f"Mix takes (query, weight) pairs, got {part!r}")
            query, weight = part
            if isinstance(query, Mix):
                raise ConfigurationError("a Mix cannot hold another Mix; list its parts instead")
            if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)) \
                    or not np.isfinite(weight):
                raise ConfigurationError(f"a Mix weight must be a finite number, got {weight!r}")
            checked.append((query, float(weight)))
        object.__setattr__(self, "parts", tuple(checked))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Mix is immutable")

    def __repr__(self) -> str:
        return "Mix(" + ", ".join(f"({q!r}, {w:g})" for q, w in self.parts) + ")"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mix) and len(self.parts) == len(other.parts) and all(
            w1 == w2 and (q1 is q2 or _same_query(q1, q2)) for (q1, w1), (q2, w2) in zip(self.parts, other.parts))

    __hash__ = None  # type: ignore[assignment]


def _same_query(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return bool(a == b)


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
class SimilarPairs:
    """One batch from a store's ``similar_pairs``: records ``left[i]`` and ``right[i]``
    (ids) have cosine similarity ``scores[i]``. ``scanned`` is how many records this
    batch covered, for progress: over all batches it adds up to the records compared."""

    left: list[str]
    right: list[str]
    scores: NDArray[np.float32]
    scanned: int


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
