"""The derived ANN file ``<store>.ann``: when a store wants one, loading and catching it
up, (re)building it from a sample, saving it (atomically, by the writer of the moment)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from . import _tombstones
from ._ivf import AnnFileError, IvfIndex, ann_available, choose_nlist
from ._mirror import Mirror, catch_up
from ._rows import decode_block, sound_vectors
from ._sqlite import execute_in

__all__ = ["build", "load", "save", "wants_ann"]


def wants_ann(threshold: int | None, n: int) -> bool:
    """Whether a store of ``n`` records searches approximately (faiss installed)."""
    if threshold is None or n < threshold:
        return False
    return ann_available()


def _header(store_uuid: str, mirror: Mirror) -> dict[str, Any]:
    return {
        "store": store_uuid,
        "dim": mirror.dim,
        "last_rowid": mirror.last_rowid,
        "last_tomb": mirror.last_tomb,
    }


def save(ann_path: Path, store_uuid: str, mirror: Mirror) -> None:
    """Write the mirror's index to ``ann_path``; a failure leaves it working from memory."""
    _remove_stale_temporaries(ann_path)
    try:
        mirror.ann.save(ann_path, dict(_header(store_uuid, mirror), ntotal=mirror.ann.ntotal))
        mirror.unsaved = 0
    except OSError:
        pass  # a read-only folder or a full disk: the index still works from memory


def _remove_stale_temporaries(ann_path: Path) -> None:
    """Delete ``<path>.ann.<pid>.tmp`` files left by processes killed while saving."""
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


def load(
    db: sqlite3.Connection,
    mirror: Mirror,
    ann_path: Path,
    store_uuid: str,
    nprobe: int | None,
    where: object,
) -> bool:
    """Load ``ann_path`` into ``mirror`` and catch it up; False when missing or unusable."""
    if not ann_path.exists():
        return False
    try:
        ann, meta = IvfIndex.load(ann_path, {"store": store_uuid, "dim": mirror.dim})
    except (AnnFileError, OSError):
        return False
    last_rowid, last_tomb = int(meta.get("last_rowid", -1)), int(meta.get("last_tomb", -1))
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='records'").fetchone()
    max_tomb = _tombstones.max_tomb(db)
    if (
        last_rowid > (row[0] if row else 0)
        or last_tomb > max_tomb
        or last_tomb < _tombstones.tomb_floor(db)
    ):
        return False
    gone = [
        r
        for (r,) in db.execute("SELECT row FROM tombstones WHERE seq > ?", (last_tomb,))
        if r <= last_rowid
    ]
    ann.remove(gone)
    rowids = np.array(
        [
            r
            for (r,) in db.execute(
                "SELECT rowid FROM records WHERE rowid <= ? AND length(vector) = ? ORDER BY rowid",
                (last_rowid, mirror.dim * 4),
            )
        ],
        dtype=np.int64,
    )
    if ann.ntotal != len(rowids):
        return False
    if nprobe:
        ann.nprobe = nprobe
    mirror.ann = ann
    mirror.append(rowids, None, {})
    mirror.last_rowid = last_rowid
    mirror.last_tomb = max_tomb
    mirror.unsaved = len(gone)
    catch_up(db, mirror, where)
    return True


def build(db: sqlite3.Connection, mirror: Mirror, nprobe: int | None, where: object) -> None:
    """Train a new index on a sample of the stored vectors, then add them all."""
    rowids = np.array(
        [r for (r,) in db.execute("SELECT rowid FROM records ORDER BY rowid")], dtype=np.int64
    )
    rng = np.random.default_rng(0)
    take = min(len(rowids), max(10_000, 40 * choose_nlist(len(rowids))))
    picked = np.sort(rng.choice(rowids, size=take, replace=False))
    sample = np.empty((take, mirror.dim), dtype=np.float32)
    filled = 0
    sql = "SELECT rowid, id, vector FROM records WHERE rowid IN ({marks}) ORDER BY rowid"
    for cursor in execute_in(db, sql, picked.tolist()):
        rows = sound_vectors(where, cursor.fetchall(), mirror.dim)
        sample[filled : filled + len(rows)] = decode_block(rows, mirror.dim)
        filled += len(rows)
    mirror.ann = IvfIndex.train(mirror.dim, sample[:filled], len(rowids), nprobe)
    del sample
    mirror.last_tomb = _tombstones.max_tomb(db)
    catch_up(db, mirror, where)
