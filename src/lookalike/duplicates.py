"""Near-duplicate groups across a whole index, from the pairs the store finds.

>>> groups = index.find_duplicates()            # doctest: +SKIP
>>> groups[0].representative, groups[0].duplicates  # doctest: +SKIP

How it works (``find_duplicates``): the pairs of images at or above the threshold come
from the store. A store that joins itself (:class:`~lookalike.protocols.PairSearchStore`:
``LocalStore``, ``InMemoryStore``) hands them over in batches from ``similar_pairs``
(a ``LocalStore`` exactly below its ``ann_threshold``, above it by a join over its
approximate index's lists, re-scored exactly). Any other store is read with ``scan``
one batch at a time (:data:`BATCH_SIZE` images) and each batch's vectors go to its
``search`` in one call, asking for :data:`FIRST_K` neighbours (more when the previous
batch's images had many duplicates); only a row whose last neighbour still scores at or
above the threshold is searched again, with :data:`GROWTH` times ``k``, until its last
neighbour falls below the threshold, so no pair above the threshold is cut off by ``k``.
Pairs at or above the threshold join their images in one group: **groups are the
connected components** of that graph (union-find in numpy), so an image is never in two
groups. Memory is one batch of vectors and results plus the pairs found; no n x n matrix
is ever formed.

Each group's **representative** is its medoid, the member with the highest summed
cosine similarity to the others (computed as ``v_i . sum(v)``); the other members follow
with their similarity to it, best first. Groups come largest first.

The default threshold is calibrated per model (:data:`CALIBRATED`, keyed by the
embedder identity a store records); a model with no calibration gets
:data:`FALLBACK_THRESHOLD` and an :class:`UncalibratedThresholdWarning`. See
``docs/quality.md`` (Duplicates) for the measurements and how to redo them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._checks import positive_int
from .errors import ConfigurationError
from .filters import matches, normalize_filter
from .protocols import PairSearchStore
from .stores._common import SCORE_ROUNDING, check_threshold
from .types import Filter, Hit, QueryInput, Record

if TYPE_CHECKING:
    from .index import ImageSearchIndex
    from .protocols import VectorStore

__all__ = [
    "CALIBRATED",
    "FALLBACK_THRESHOLD",
    "Calibration",
    "DuplicateGroup",
    "DuplicateGroups",
    "UncalibratedThresholdWarning",
    "default_threshold",
    "duplicates_of",
    "find_duplicates",
]


@dataclass(frozen=True)
class Calibration:
    """A model's default duplicate threshold and the measurement behind it."""

    threshold: float
    measured: str


#: Default cosine thresholds by embedder identity (the string a store records), measured
#: with ``benchmarks/duplicates.py`` on generated edits of the shared reverse_image_search
#: photos with same-class photos as hard negatives (docs/quality.md, Duplicates).
CALIBRATED: dict[str, Calibration] = {
    "efficientnet-lite0:57934424:resize256-crop224-bicubic-mean0.5-std0.5:avgpool-l2": Calibration(
        0.645,
        "benchmarks/duplicates.py quality, 2026-12-01: 2,400 images (100 photos x 21 edited copies + "
        "200 same-class photos); best pair F1 (0.987) on 50 classes; on the other 50 classes: pairs "
        "P 0.993 R 0.984 F1 0.988, find_duplicates groups P 0.990 R 0.998 F1 0.994",
    ),
}

#: Threshold for a model with no calibration (ResNet50 included: its weights could not be
#: downloaded where the calibration ran). Chosen high, so that what it reports is likely a
#: duplicate, at the cost of missing heavier edits; calibrate and pass ``threshold=``.
FALLBACK_THRESHOLD = 0.90

#: Neighbours asked for per image on the first search (the image itself among them).
#: Small on purpose: most images have no duplicate, and every hit costs the store a
#: record read; an image whose last hit still qualifies is searched again.
FIRST_K = 4
#: How much ``k`` grows on each further search of the images that need it.
GROWTH = 8
#: The most a batch starts with when the previous batch's images had many duplicates.
MAX_FIRST_K = 64
#: Images per batch: their vectors go to the store's ``search`` together, so an exact
#: store multiplies big matrices and an ANN one searches many queries at once.
BATCH_SIZE = 1024


class UncalibratedThresholdWarning(UserWarning):
    """``threshold=None`` on a model with no calibrated duplicate threshold."""


def default_threshold(identity: str) -> float:
    """The calibrated threshold for an embedder identity, else the fallback with a warning."""
    found = CALIBRATED.get(identity)
    if found is not None:
        return found.threshold
    warnings.warn(
        f"no calibrated duplicate threshold for embedder {identity!r}; using {FALLBACK_THRESHOLD} "
        "(pass threshold= to choose one; docs/quality.md shows how to calibrate)",
        UncalibratedThresholdWarning,
        stacklevel=3,
    )
    return FALLBACK_THRESHOLD


def resolve_threshold(threshold: float | None, store: VectorStore) -> float:
    """``threshold`` checked, or the default for the model that built ``store``."""
    if threshold is not None:
        return check_threshold(threshold)
    schema = store.describe()
    if schema is None:
        return FALLBACK_THRESHOLD
    return default_threshold(schema.identity)


# -- result types ----------------------------------------------------------------------------
class DuplicateGroup(list[Hit]):
    """One group of near-duplicates: the representative first (score 1.0), then the
    others with their cosine similarity to it, best first."""

    @property
    def representative(self) -> Hit:
        return self[0]

    @property
    def duplicates(self) -> list[Hit]:
        """Every member but the representative."""
        return list(self[1:])

    def __repr__(self) -> str:
        rep = self[0].path or self[0].id if self else "-"
        return f"<DuplicateGroup of {len(self)}: {rep!r} + {len(self) - 1}>"


class DuplicateGroups(list[DuplicateGroup]):
    """What :meth:`~lookalike.ImageSearchIndex.find_duplicates` returns: a list of
    :class:`DuplicateGroup`, largest first, with the threshold used."""

    def __init__(self, groups: Iterable[DuplicateGroup] = (), *, threshold: float = FALLBACK_THRESHOLD) -> None:
        super().__init__(groups)
        self.threshold = threshold

    @property
    def images(self) -> int:
        """Images in all groups together."""
        return sum(len(g) for g in self)

    def __repr__(self) -> str:
        return (f"<DuplicateGroups: {len(self)} groups, {self.images} images, "
                f"threshold {self.threshold:.3f}>")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form: the threshold and, per group, its members (representative first)."""
        return {
            "threshold": self.threshold,
            "groups": [
                [{"id": h.id, "score": round(h.score, 6), "path": h.path, "metadata": dict(h.metadata)}
                 for h in group]
                for group in self
            ],
        }

    def _repr_html_(self) -> str:
        from .eval.duplicates_report import render_groups

        return render_groups(self, limit=20, thumb_size=72)


# -- the engine ------------------------------------------------------------------------------
def _components(left: NDArray[np.intp], right: NDArray[np.intp], n: int) -> NDArray[np.intp]:
    """Connected components of the graph on ``0..n-1`` with edges ``left[i]-right[i]``:
    each node's label is the smallest node of its component.

    Union-find in numpy (hook and jump): every round hooks the root of each edge's larger
    end to the smaller root, then jumps every pointer to its root, until no edge joins two
    roots. Pointers only ever go to smaller nodes, so there are no cycles.
    """
    labels = np.arange(n, dtype=np.intp)
    while True:
        a, b = labels[left], labels[right]
        apart = a != b
        if not apart.any():
            return labels
        a, b = a[apart], b[apart]
        low = np.minimum(a, b)
        np.minimum.at(labels, np.maximum(a, b), low)
        while True:  # pointer jumping: every node straight to its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped


def _neighbours(
    store: VectorStore, vectors: NDArray[np.float32], threshold: float, filter: Filter | None, limit: int,
    first_k: int = FIRST_K,
) -> list[list[Hit]]:
    """Every stored hit at or above ``threshold`` for each row.

    The first search asks for ``first_k`` hits; only the rows whose last hit still
    qualifies are searched again, with :data:`GROWTH` times as many, until it does not.
    """
    k = min(first_k, limit)
    threshold -= SCORE_ROUNDING  # an exact copy scores 0.9999995 in float32
    results = store.search(vectors, k, filter)
    todo = [j for j, hits in enumerate(results) if len(hits) >= k and hits[-1].score >= threshold]
    while todo and k < limit:
        k = min(k * GROWTH, limit)
        again = store.search(vectors[todo], k, filter)
        for j, hits in zip(todo, again):
            results[j] = hits
        todo = [j for j in todo if len(results[j]) >= k and results[j][-1].score >= threshold]
    return [[h for h in hits if h.score >= threshold] for hits in results]


def _next_first_k(qualifying: list[int]) -> int:
    """The ``k`` the next batch starts with: :data:`FIRST_K`, or, in a collection where
    images have many duplicates, the power of two above what 90 % of this batch's images
    needed (at most :data:`MAX_FIRST_K`), so most rows need no second search: a few more
    hits cost less than searching a row again."""
    need = int(np.quantile(qualifying, 0.9)) if qualifying else 0
    k = FIRST_K
    while k <= need and k < MAX_FIRST_K:
        k *= 2
    return k


def find_duplicates(
    store: VectorStore,
    threshold: float | None = None,
    *,
    filter: Filter | None = None,
    progress: bool = False,
    batch_size: int = BATCH_SIZE,
) -> DuplicateGroups:
    """Groups of near-duplicates among the records of ``store`` (see the module docstring).

    ``filter`` limits both sides: only records that match it are grouped.
    """
    threshold = resolve_threshold(threshold, store)
    batch_size = positive_int(batch_size, "batch_size")
    schema = store.describe()
    if schema is None:
        return DuplicateGroups(threshold=threshold)
    flt = normalize_filter(filter, schema.fields)
    total = store.count()
    from tqdm.auto import tqdm

    codes: dict[str, int] = {}  # the images that have a duplicate, numbered as met
    left: list[int] = []  # one edge per pair above the threshold, as found
    right: list[int] = []
    joined = isinstance(store, PairSearchStore)
    counted = None if joined and flt is not None else total  # a join counts matches only
    with tqdm(total=counted, unit="img", desc="duplicates", disable=not progress, dynamic_ncols=True) as bar:
        if isinstance(store, PairSearchStore):
            for pairs in store.similar_pairs(threshold, filter):
                bar.update(pairs.scanned)
                for a, b in zip(pairs.left, pairs.right):
                    left.append(codes.setdefault(a, len(codes)))
                    right.append(codes.setdefault(b, len(codes)))
        else:
            _pairs_by_search(store, threshold, filter, flt, total, batch_size, bar, codes, left, right)
    if not left:
        return DuplicateGroups(threshold=threshold)
    labels = _components(np.array(left, dtype=np.intp), np.array(right, dtype=np.intp), len(codes))
    del left, right
    names = np.array(list(codes), dtype=object)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    groups = [sorted(names[part].tolist()) for part in np.split(order, cuts)]
    kept = [g for g in _ordered(store, groups, batch_size) if len(g) > 1]
    kept.sort(key=lambda g: (-len(g), g[0].id))
    return DuplicateGroups(kept, threshold=threshold)


def _pairs_by_search(
    store: VectorStore, threshold: float, filter: Filter | None, flt: Any, total: int, batch_size: int,
    bar: Any, codes: dict[str, int], left: list[int], right: list[int],
) -> None:
    """The pairs of a store without ``similar_pairs``: a k-NN search for every record."""
    first_k = FIRST_K
    for batch in store.scan(batch_size):
        bar.update(len(batch))
        records = batch if flt is None else [r for r in batch if matches(r.metadata, flt)]
        if not records:
            continue
        vectors = np.stack([r.vector for r in records]).astype(np.float32, copy=False)
        found = _neighbours(store, vectors, threshold, filter, max(1, total), first_k)
        first_k = _next_first_k([len(hits) for hits in found])
        for record, hits in zip(records, found):
            for hit in hits:
                if hit.id != record.id:
                    left.append(codes.setdefault(record.id, len(codes)))
                    right.append(codes.setdefault(hit.id, len(codes)))


def _ordered(store: VectorStore, groups: list[list[str]], batch_size: int) -> Iterator[DuplicateGroup]:
    """Each group with its medoid first and the others by similarity to it.

    Small groups are read together, a batch of vectors per ``get``; a group larger than
    a batch is read in three passes of a batch each, so memory stays bounded.
    """
    pending: list[list[str]] = []
    size = 0
    for ids in groups:
        if len(ids) > batch_size:
            yield _order_large(store, ids, batch_size)
            continue
        pending.append(ids)
        size += len(ids)
        if size >= batch_size:
            yield from _order_small(store, pending)
            pending, size = [], 0
    yield from _order_small(store, pending)


def _order_small(store: VectorStore, groups: list[list[str]]) -> Iterator[DuplicateGroup]:
    if not groups:
        return
    found = {r.id: r for r in store.get([i for ids in groups for i in ids])}
    for ids in groups:
        records = [found[i] for i in ids if i in found]  # one may be deleted meanwhile
        if len(records) < 2:
            continue
        matrix = np.stack([r.vector for r in records]).astype(np.float32, copy=False)
        rep = int(np.argmax(matrix @ matrix.sum(axis=0)))
        scores = matrix @ matrix[rep]
        yield _group(records[rep], [(r, float(s)) for i, (r, s) in enumerate(zip(records, scores)) if i != rep])


def _order_large(store: VectorStore, ids: Sequence[str], batch_size: int) -> DuplicateGroup:
    total: NDArray[np.float32] | None = None
    for chunk in _chunks(store, ids, batch_size):
        part = np.stack([r.vector for r in chunk]).sum(axis=0)
        total = part if total is None else total + part
    if total is None:  # every member deleted meanwhile
        return DuplicateGroup()
    best: tuple[float, Record] | None = None
    for chunk in _chunks(store, ids, batch_size):
        sums = np.stack([r.vector for r in chunk]) @ total
        i = int(np.argmax(sums))
        if best is None or float(sums[i]) > best[0]:
            best = (float(sums[i]), chunk[i])
    if best is None:
        return DuplicateGroup()
    rep = best[1]
    others: list[tuple[Record, float]] = []
    for chunk in _chunks(store, ids, batch_size):
        scores = np.stack([r.vector for r in chunk]) @ rep.vector
        others += [(r, float(s)) for r, s in zip(chunk, scores) if r.id != rep.id]
    return _group(rep, others)


def _chunks(store: VectorStore, ids: Sequence[str], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(ids), size):
        found = store.get(list(ids[start : start + size]))
        if found:
            yield found


def _group(rep: Record, others: list[tuple[Record, float]]) -> DuplicateGroup:
    others.sort(key=lambda rs: (-rs[1], rs[0].id))
    group = DuplicateGroup([Hit.from_metadata(rep.id, 1.0, rep.metadata)])
    group += [Hit.from_metadata(r.id, float(np.clip(s, -1.0, 1.0)), r.metadata) for r, s in others]
    return group


def duplicates_of(
    index: ImageSearchIndex, image: QueryInput, threshold: float | None = None, *, filter: Filter | None = None,
) -> list[Hit]:
    """The stored images at or above ``threshold`` to ``image``, best first.

    ``image`` need not be stored ("do I already have this?"). When it is a path that is
    stored, its own record is left out.
    """
    if isinstance(image, (list, tuple)):
        raise ConfigurationError("duplicates_of takes one image")
    schema = index._existing_schema()
    threshold = resolve_threshold(threshold, index.store)
    vector = index.embed_queries([image])
    if schema is None:
        return []
    own = None
    if isinstance(image, (str, os.PathLike)):
        from .index import path_id

        own = path_id(image)
    hits = _neighbours(index.store, vector, threshold, filter, max(1, index.store.count()))[0]
    return [h for h in hits if h.id != own]
