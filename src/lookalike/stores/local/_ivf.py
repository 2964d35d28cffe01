"""The approximate index behind a large :class:`~lookalike.stores.LocalStore`.

An inverted-file index with 8-bit scalar quantisation (faiss ``IndexIVFScalarQuantizer``):
``dim`` bytes per vector in memory instead of ``4 * dim``. It is a *derived* file next to
the store (``<store>.ann``): SQLite stays the source of truth, and the file is rebuilt
whenever it is missing, stale beyond repair or damaged. faiss is imported only here, and
only when a store is big enough to need it (extra ``[ann]``).

File layout: a 4096-byte header (magic line, then JSON padded with spaces) followed by
faiss's own serialisation. The header names the store (its uuid), the last rowid and
tombstone the index reflects, and a CRC-32 of the payload, so a torn or foreign file is
detected before faiss parses it.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..._checks import optional_import
from ...errors import MissingDependencyError

__all__ = ["AnnFileError", "IvfIndex", "ann_available"]

_MAGIC = b"LOOKALIKE-ANN 1\n"
_HEADER_BYTES = 4096
_CHUNK = 1 << 22


class AnnFileError(Exception):
    """The derived index file is missing, damaged or belongs to another store state."""


def _faiss() -> Any:
    return optional_import(
        "faiss", extra="ann", feature="Approximate search in LocalStore", package="faiss-cpu"
    )


def ann_available() -> bool:
    """True when faiss can be imported (without importing it twice)."""
    try:
        _faiss()
    except MissingDependencyError:
        return False
    return True


def choose_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about ``sqrt(n)``, at least 16."""
    return max(16, int(math.sqrt(max(n, 1))))


class IvfIndex:
    """faiss IVF-SQ8 over inner product; ids are SQLite rowids. Not thread-safe."""

    def __init__(self, index: Any, nprobe: int | None = None) -> None:
        self._faiss = _faiss()
        self.index = index
        self.nlist = int(index.nlist)
        self.nprobe = nprobe or max(8, self.nlist // 64)

    @classmethod
    def train(
        cls, dim: int, sample: NDArray[np.float32], n_expected: int, nprobe: int | None = None
    ) -> IvfIndex:
        faiss = _faiss()
        nlist = min(choose_nlist(n_expected), max(1, sample.shape[0] // 8))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.niter = 10
        index.cp.max_points_per_centroid = 64
        index.cp.min_points_per_centroid = 8
        index.cp.seed = 1234
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.set_direct_map_type(faiss.DirectMap.NoMap)
        return cls(index, nprobe)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def add(self, rowids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        if len(rowids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32),
                np.ascontiguousarray(rowids, dtype=np.int64),
            )

    def remove(self, rowids: Iterable[int]) -> int:
        ids = np.fromiter(rowids, dtype=np.int64)
        if not len(ids):
            return 0
        return int(self.index.remove_ids(self._faiss.IDSelectorBatch(ids)))

    def search(
        self,
        queries: NDArray[np.float32],
        k: int,
        nprobe: int,
        allowed: NDArray[np.int64] | None = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top ``k`` (quantised inner product) per query; ``-1`` ids pad short results."""
        faiss = self._faiss
        params = faiss.SearchParametersIVF()
        params.nprobe = max(1, min(int(nprobe), self.nlist))
        keep: list[Any] = []
        if allowed is not None:
            bits = np.zeros(int(allowed.max()) + 1 if len(allowed) else 1, dtype=bool)
            bits[allowed] = True
            packed = np.packbits(bits, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
            params.sel = selector
            keep += [packed, selector]  # both must outlive the search call
        scores, ids = self.index.search(
            np.ascontiguousarray(queries, dtype=np.float32), k, params=params
        )
        del keep
        return scores, ids

    # -- the derived file ----------------------------------------------------------
    def save(self, path: Path, header: dict[str, Any]) -> None:
        """Write atomically (temporary file, fsync, rename)."""
        faiss = self._faiss
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        crc = 0
        size = 0
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"\0" * _HEADER_BYTES)

                def write(data: bytes) -> int:
                    nonlocal crc, size
                    crc = zlib.crc32(data, crc)
                    size += len(data)
                    fh.write(data)
                    return len(data)

                faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))
                meta = dict(header, payload_bytes=size, crc32=crc, nprobe=self.nprobe)
                blob = _MAGIC + json.dumps(meta).encode()
                if len(blob) > _HEADER_BYTES:  # pragma: no cover - the header is small
                    raise AnnFileError("header too large")
                fh.seek(0)
                fh.write(blob.ljust(_HEADER_BYTES, b" "))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @staticmethod
    def read_header(path: Path) -> dict[str, Any]:
        try:
            with open(path, "rb") as fh:
                head = fh.read(_HEADER_BYTES)
        except OSError as exc:
            raise AnnFileError(f"cannot read: {exc.strerror or exc}") from exc
        if len(head) < _HEADER_BYTES or not head.startswith(_MAGIC):
            raise AnnFileError("not a lookalike ANN file")
        try:
            meta: Any = json.loads(head[len(_MAGIC) :].decode().strip())
        except ValueError as exc:
            raise AnnFileError(f"unreadable header: {exc}") from exc
        if not isinstance(meta, dict):
            raise AnnFileError("unreadable header")
        return meta

    @classmethod
    def load(cls, path: Path, expect: dict[str, Any]) -> tuple[IvfIndex, dict[str, Any]]:
        """Read the file after checking its header against ``expect`` and its checksum."""
        faiss = _faiss()
        meta = cls.read_header(path)
        for key, value in expect.items():
            if meta.get(key) != value:
                raise AnnFileError(f"{key} is {meta.get(key)!r}, expected {value!r}")
        size = int(meta.get("payload_bytes", -1))
        if path.stat().st_size != _HEADER_BYTES + size:
            raise AnnFileError("truncated or extended")
        crc = 0
        with open(path, "rb") as fh:
            fh.seek(_HEADER_BYTES)
            while chunk := fh.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
        if crc != meta.get("crc32"):
            raise AnnFileError("checksum mismatch")
        with open(path, "rb") as fh:
            fh.seek(_HEADER_BYTES)
            try:
                index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
            except RuntimeError as exc:
                raise AnnFileError(f"faiss cannot read it: {exc}") from exc
        if int(index.d) != int(meta.get("dim", -1)) or not hasattr(index, "nlist"):
            raise AnnFileError("unexpected index type or dimension")
        return cls(index), meta
