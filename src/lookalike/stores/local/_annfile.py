"""The derived ANN file ``<store>.ann``: when a store wants one, mapping it, building it
from the vectors (in the background for large stores), saving it atomically.

The index holds the live rows up to its ``last_rowid``; rows written after it are
searched exactly, rows deleted since are masked out. It is rebuilt once the rows it
lacks or holds dead are a tenth of the store (:func:`stale`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from . import _vecfile
from ._ivf import AnnFileError, IvfIndex, ann_available, choose_nlist
from ._mirror import Mirror

__all__ = ["Snapshot", "build", "load", "remove_stale_temporaries", "save", "stale", "wants_ann"]

_STALE_MIN = 2_000  # rows outside the index before a rebuild is worth it


def wants_ann(threshold: int | None, n: int) -> bool:
    """Whether a store of ``n`` records searches approximately (faiss installed)."""
    if threshold is None or n < threshold:
        return False
    return ann_available()


def stale(mirror: Mirror) -> bool:
    """Whether the mirror's index misses (or holds dead) enough rows to be rebuilt."""
    ann = mirror.ann
    if ann is None:
        return True
    split = int(np.searchsorted(mirror.rowids[: mirror.size], ann.last_rowid, side="right"))
    outside = int(mirror.alive[split : mirror.size].sum())
    dead_inside = split - int(mirror.alive[:split].sum())
    return outside + dead_inside > max(_STALE_MIN, mirror.live // 10)


def save(ann_path: Path, store_uuid: str, ann: IvfIndex, dim: int) -> bool:
    """Write ``ann`` to ``ann_path``; False when it cannot (read-only folder, full disk)."""
    remove_stale_temporaries(ann_path)
    try:
        ann.save(ann_path, {"store": store_uuid, "dim": dim})
    except OSError:
        return False  # the index still works from memory
    return True


def remove_stale_temporaries(ann_path: Path) -> None:
    """Delete ``<path>.<pid>.tmp`` files left by processes killed while saving."""
    for tmp in ann_path.parent.glob(ann_path.name + ".*.tmp"):
        pid = tmp.name[len(ann_path.name) + 1 : -len(".tmp")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except OSError:
            pass  # alive, owned by someone else


def load(mirror: Mirror, ann_path: Path, store_uuid: str, nprobe: int | None) -> IvfIndex | None:
    """Map ``ann_path`` if it is an index of this store's state; None when unusable."""
    if not ann_path.exists():
        return None
    try:
        ann, _ = IvfIndex.load(ann_path, {"store": store_uuid, "dim": mirror.dim})
    except (AnnFileError, OSError):
        return None
    rowids = mirror.rowids[: mirror.size]
    split = int(np.searchsorted(rowids, ann.last_rowid, side="right"))
    if ann.last_rowid > mirror.last_rowid or ann.ntotal < int(mirror.alive[:split].sum()):
        return None  # from another state of the store (rows it must hold are missing)
    if nprobe:
        ann.nprobe = nprobe
    return ann


class Snapshot:
    """The live rows of a mirror at one moment, readable from another thread: the mapped
    file and RAM tail are only ever appended to, and the positions are copied."""

    def __init__(self, mirror: Mirror) -> None:
        live = np.flatnonzero(mirror.alive[: mirror.size])
        self.positions = live
        self.rowids = mirror.rowids[live].copy()
        vf = mirror.vec  # a descriptor of its own: the store may close its own meanwhile
        self.vec = (
            None
            if vf is None
            else _vecfile.VecFile(vf.path, os.dup(vf.fd), vf.dim, vf.token, False)
        )
        self.tail = mirror.tail
        self.base = mirror.base
        self.dim = mirror.dim
        self.last_rowid = mirror.last_rowid

    def rows(self, pos: NDArray[np.intp]) -> NDArray[np.float32]:
        out = np.empty((len(pos), self.dim), dtype=np.float32)
        low = pos < self.base
        if self.vec is not None:  # read, not mapped: the build's RSS stays its own
            out[low] = _vecfile.gather(self.vec, pos[low])
        out[~low] = self.tail[pos[~low] - self.base]
        return out


def build(snap: Snapshot, nprobe: int | None, chunk: int = 20_000) -> IvfIndex:
    """Train an index on a sample of the snapshot's rows, then add them all."""
    n = len(snap.positions)
    rng = np.random.default_rng(0)
    take = min(n, max(10_000, min(32 * choose_nlist(n), 50_000)))
    picked = np.sort(rng.choice(n, size=take, replace=False))
    ann = IvfIndex.train(snap.dim, snap.rows(snap.positions[picked]), n, nprobe)
    for start in range(0, n, chunk):
        pos = snap.positions[start : start + chunk]
        ann.add(snap.rowids[start : start + chunk], snap.rows(pos))
    ann.last_rowid = snap.last_rowid
    return ann
