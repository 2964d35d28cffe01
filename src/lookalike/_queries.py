"""What search does with its queries before the store: vectors for every kind of query,
and the checks of ``min_score`` and ``exclude``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._embedding import check_vectors
from .errors import ConfigurationError
from .images import load_image
from .protocols import Embedder, TextEmbedder
from .stores._common import as_float32
from .types import Hit, Mix, QueryInput, Record, Text

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["check_min_score", "excluded_ids", "query_parts", "query_vectors", "text_embedder"]


def query_vectors(
    queries: Sequence[QueryInput], embedder: Embedder, *, image_size: int | None,
    stored: Mapping[str, Record], batch_size: int,
) -> NDArray[np.float32]:
    """One unit row per query: images loaded (never decoded below ``image_size``) and
    embedded ``batch_size`` at a time, texts embedded by the text tower, vectors checked,
    hits replaced by their ``stored`` records; a :class:`~lookalike.types.Mix` is the
    normalised weighted sum of its parts' rows."""
    if any(isinstance(q, Mix) for q in queries):
        return _mixed_vectors(queries, embedder, image_size=image_size, stored=stored, batch_size=batch_size)
    dim = embedder.dim
    out = np.zeros((len(queries), dim), dtype=np.float32)
    to_embed: list[int] = []
    images: list[Image.Image] = []
    text_rows = [i for i, q in enumerate(queries) if isinstance(q, Text)]
    if text_rows:
        texts = [q.text for q in queries if isinstance(q, Text)]
        out[text_rows] = check_vectors(text_embedder(embedder).embed_text(texts), len(texts), embedder)
    for i, q in enumerate(queries):
        if isinstance(q, Hit):
            q = stored[q.id]
        if isinstance(q, Record):
            q = np.asarray(q.vector)
        if isinstance(q, (Text, Mix)):  # texts: above; a Mix never comes here (_mixed_vectors)
            continue
        if isinstance(q, np.ndarray):
            vec = as_float32(q, "query vector").reshape(-1)
            if vec.shape[0] != dim:
                raise ConfigurationError(f"query vector has {vec.shape[0]} values, the index expects {dim}")
            norm = float(np.linalg.norm(vec))
            if not np.isfinite(vec).all() or norm == 0.0:
                raise ConfigurationError("query vector must be finite and non-zero")
            out[i] = vec / norm
        else:
            images.append(load_image(q, min_size=image_size))
            to_embed.append(i)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        vecs = check_vectors(embedder.embed(batch), len(batch), embedder)
        out[to_embed[start : start + len(batch)]] = vecs
    return out


def _mixed_vectors(
    queries: Sequence[QueryInput], embedder: Embedder, *, image_size: int | None,
    stored: Mapping[str, Record], batch_size: int,
) -> NDArray[np.float32]:
    """The rows of queries some of which are :class:`Mix`: every part embedded in one pass."""
    flat: list[QueryInput] = []
    spans: list[tuple[int, list[float]]] = []
    for q in queries:
        parts = q.parts if isinstance(q, Mix) else ((q, 1.0),)
        spans.append((len(flat), [w for _, w in parts]))
        flat.extend(p for p, _ in parts)
    rows = query_vectors(flat, embedder, image_size=image_size, stored=stored, batch_size=batch_size)
    out = np.zeros((len(queries), embedder.dim), dtype=np.float32)
    for i, (start, weights) in enumerate(spans):
        mixed = np.asarray(weights, dtype=np.float64) @ rows[start : start + len(weights)].astype(np.float64)
        norm = float(np.linalg.norm(mixed))
        if not np.isfinite(norm) or norm < 1e-6:
            raise ConfigurationError(f"{queries[i]!r}: its weighted parts cancel out (a zero vector); "
                                     "change the weights")
        out[i] = mixed / norm
    return out


def query_parts(queries: Sequence[Any]) -> list[Any]:
    """The queries with every :class:`Mix` replaced by its parts (what has to be embedded)."""
    return [p for q in queries for p in ([p for p, _ in q.parts] if isinstance(q, Mix) else [q])]


def text_embedder(embedder: Embedder) -> TextEmbedder:
    """``embedder`` when it has a text tower, else a ConfigurationError naming it."""
    if not isinstance(embedder, TextEmbedder):
        raise ConfigurationError(
            f"cannot search by Text with {embedder!r}: text search needs a model with a text tower, "
            "and so an index built with one: lookalike.embedders.ClipEmbedder (--embedder clip or "
            "clip:MODEL[:WEIGHTS]; pip install 'lookalike[clip]'), or any embedder with embed_text; "
            "search this index by an image or a vector instead"
        )
    return embedder


def check_min_score(min_score: Any) -> float | None:
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.integer, np.floating)) \
            or not np.isfinite(min_score):
        raise ConfigurationError(f"min_score must be a finite number or None, got {min_score!r}")
    return float(min_score)


def excluded_ids(exclude: Any) -> set[str]:
    """The ids in ``exclude``: one id, a hit or a record, or an iterable of those."""
    if exclude is None:
        return set()
    items = [exclude] if isinstance(exclude, (str, Hit, Record)) else exclude
    if isinstance(items, (bytes, bytearray, Mapping)) or not isinstance(items, Iterable):
        raise ConfigurationError(f"exclude takes an id or an iterable of ids, got {type(exclude).__name__}")
    ids = set()
    for item in items:
        if isinstance(item, (Hit, Record)):
            ids.add(item.id)
        elif isinstance(item, str):
            ids.add(item)
        else:
            raise ConfigurationError(f"exclude takes ids (strings), hits or records, got {item!r}")
    return ids
