"""The approximate index behind a large :class:`~lookalike.stores.LocalStore`.

An inverted-file index with 8-bit scalar quantisation (faiss ``IndexIVFScalarQuantizer``):
``dim`` bytes per vector instead of ``4 * dim``. The codes are faiss's per-dimension
8-bit codes (``QT_8bit``: ``x ~ vmin + (c + 0.5) / 255 * vdiff``), but the index reads
them as ``QT_8bit_direct_signed`` (the integer ``c - 128``) and scans them with an
integer dot product against the query scaled by ``vdiff / 255`` and rounded to 8 bits:
the inner products then differ from the 8-bit ones by a constant factor and offset per
query (plus the query's rounding), for about a quarter of the CPU of decoding every code.
The coarse lists are chosen with the unscaled query (``search_preassigned``). Its lists come from spherical
k-means on the sample *centred* on its mean and normalised, and a vector goes to the list
whose centroid is nearest to its centred, normalised self. Image embeddings share a strong
mean direction (pooled CNN features are all positive); clustered as they are, by
Euclidean or spherical k-means, a few central lists become hubs that hold most of the
vectors (on the duplicates benchmark's data at 1M: the largest list 73,001 vectors against
a median of 110, so a query scanned 564k codes, half the store). Centred, every centroid
has the same norm and no list is central: at 100k of the same data the largest list held
242 vectors against 5,508 (docs/performance.md). It is a *derived* file next to the store (``<store>.ann``):
SQLite stays the source of truth, and the file is rebuilt whenever it is missing, stale
beyond repair or damaged. faiss is imported only here, and only when a store is big
enough to need it (extra ``[ann]``).

File layout: faiss's own serialisation, then the codec (``vmin`` and ``vdiff`` of the
8-bit codes and the centre the lists were clustered around, ``3 * dim`` float32), then a 4096-byte trailer (a magic line, then JSON padded with
spaces) naming the store (its uuid), the last rowid the index holds, the payload size,
where the codec starts, and CRC-32 checksums of the codec, of the payload's head and of
all of it. The file is memory-mapped (faiss ``IO_FLAG_MMAP``), so opening it reads only
the trailer, the codec and the centroids, whatever its size; :meth:`IvfIndex.verify`
reads it all. A filtered search reads the codes of its matches straight from that map
(:meth:`IvfIndex.best_of`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..._checks import optional_import
from ...errors import MissingDependencyError

__all__ = ["AnnFileError", "IvfIndex", "ann_available", "choose_nlist"]

_MAGIC = b"LOOKALIKE-ANN 4\n"  # 4: centred lists (3: direct-scanned codes; 2: QT_8bit)
_TRAILER_BYTES = 4096
_HEAD_BYTES = 1 << 22  # checksummed on every open: the centroids and the first lists
_CHUNK = 1 << 22
_SCORE_ROWS = 4096  # codes scored at a time by :meth:`IvfIndex.best_of`


class AnnFileError(Exception):
    """The derived index file is missing, damaged or belongs to another store state."""


def _faiss() -> Any:
    return optional_import(
        "faiss", extra="ann", feature="Approximate search in LocalStore", package="faiss-cpu"
    )


def ann_available() -> bool:
    """True when faiss can be imported and has the signed 8-bit direct codec the index
    scans with (faiss 1.9 and later); with an older faiss, search stays exact."""
    try:
        faiss = _faiss()
    except MissingDependencyError:
        return False
    return hasattr(faiss.ScalarQuantizer, "QT_8bit_direct_signed")


def _centred(vectors: NDArray[np.float32], centre: NDArray[np.float32]) -> NDArray[np.float32]:
    """``vectors - centre``, each scaled to unit length (a zero row stays zero): what the
    lists are clustered and chosen on."""
    moved = np.asarray(vectors, dtype=np.float32) - centre
    norms = np.linalg.norm(moved, axis=1, keepdims=True)
    out: NDArray[np.float32] = np.ascontiguousarray(
        moved / np.where(norms > 0, norms, 1), dtype=np.float32
    )
    return out


def choose_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: about ``2 sqrt(n)`` (lists of ~``sqrt(n)/2``), at least 16."""
    return max(16, int(2 * math.sqrt(max(n, 1))))


def _direct(faiss: Any) -> int:
    """The codec the index scans with (see the module's docstring)."""
    return int(faiss.ScalarQuantizer.QT_8bit_direct_signed)


def default_nprobe(nlist: int) -> int:
    """Lists probed per query, chosen by measured recall@10 (docs/performance.md):
    small indexes (under 512 lists, cheap to scan) probe 1/8 of them, at least 16;
    up to 1,024 lists (stores of up to ~260k) 1/128 of them, at least 5 (recall 0.999
    at 100k, where 4 gave 0.9945); larger ones 1/64, at least 8 (0.9995 at 1M)."""
    if nlist < 512:
        return min(nlist, max(16, nlist // 8))
    if nlist < 1024:
        return max(5, nlist // 128)
    return max(8, nlist // 64)


class IvfIndex:
    """faiss IVF-SQ8 over inner product; ids are SQLite rowids. Not thread-safe.

    ``last_rowid``: the index holds every live row up to it (when it was built) and
    none above; rows above it are searched exactly.
    """

    def __init__(
        self, index: Any, codec: NDArray[np.float32], nprobe: int | None = None, last_rowid: int = 0
    ) -> None:
        self._faiss = _faiss()
        self.index = index
        self.nlist = int(index.nlist)
        self.nprobe = nprobe or default_nprobe(self.nlist)
        self.last_rowid = last_rowid
        self._ntotal: int | None = None
        self._codes: _Codes | None | bool = None  # False: not mapped, no codes by rowid
        dim = int(index.d)
        if int(index.sq.qtype) != _direct(self._faiss) or codec.shape != (3 * dim,):
            raise AnnFileError("not an index of direct-scanned 8-bit codes in centred lists")
        self.codec = np.ascontiguousarray(codec, dtype=np.float32)  # vmin, vdiff, centre
        self._vmin = self.codec[:dim]
        vdiff = self.codec[dim : 2 * dim]
        self._centre = self.codec[2 * dim :]
        self._step = np.where(vdiff > 0, vdiff, np.float32(1)).astype(np.float32)
        self._query_scale = (vdiff / np.float32(255)).astype(np.float32)

    @classmethod
    def train(
        cls, dim: int, sample: NDArray[np.float32], n_expected: int, nprobe: int | None = None
    ) -> IvfIndex:
        faiss = _faiss()
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        nlist = min(choose_nlist(n_expected), max(1, sample.shape[0] // 8))
        centre = sample.mean(axis=0).astype(np.float32)
        kmeans = faiss.Kmeans(
            dim,
            nlist,
            niter=10,
            seed=1234,
            spherical=True,
            max_points_per_centroid=64,
            min_points_per_centroid=4,
        )
        kmeans.train(_centred(sample, centre))
        quantizer = faiss.IndexFlatIP(dim)
        quantizer.add(kmeans.centroids)
        # Not by residual: the scanner would take the coarse L2 distance for an inner product.
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT, False
        )
        index.train(sample)  # the quantizer is trained already: this trains the 8-bit codec
        index.set_direct_map_type(faiss.DirectMap.NoMap)
        # Scanned as direct codes from now on; vmin and vdiff are saved after faiss's part.
        codec = np.concatenate([faiss.vector_to_array(index.sq.trained).astype(np.float32), centre])
        index.sq.qtype = _direct(faiss)
        index.sq.trained.clear()
        index.sq.set_derived_sizes()
        return cls(index, codec, nprobe)

    def _encode(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        """faiss's QT_8bit codes ``c`` of ``vectors``, as the floats ``c - 128`` that the
        signed direct codec stores as the very same bytes."""
        unit = np.clip((vectors - self._vmin) / self._step, 0.0, 1.0).astype(np.float32)
        codes: NDArray[np.float32] = (np.floor(unit * np.float32(255)) - 128).astype(np.float32)
        return codes

    def _scaled(self, queries: NDArray[np.float32]) -> NDArray[np.float32]:
        """Queries whose integer dot product with the codes orders them as the 8-bit
        inner product does: scaled by ``vdiff / 255``, then each to +-127, rounded."""
        return self._scaled_by(queries)[0]

    def _scaled_by(
        self, queries: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """:meth:`_scaled` and each query's factor ``f``: with ``q' = q * vdiff / 255``,
        the scaled query is ``rint(f q')``."""
        scaled = queries * self._query_scale
        top = np.abs(scaled).max(axis=1)
        factor = (np.float32(127) / np.where(top > 0, top, np.float32(1))).astype(np.float32)
        scaled *= factor[:, None]
        return np.ascontiguousarray(np.rint(scaled), dtype=np.float32), factor

    def candidates_above(
        self, queries: NDArray[np.float32], floor: float, nprobe: int | None = None
    ) -> tuple[NDArray[np.intp], NDArray[np.int64]]:
        """(query index, rowid) of every vector in each query's probed lists whose 8-bit
        inner product with the query is at least ``floor``: a range search by lists.

        Each probed list is read once for all the queries that probe it and scored with
        one matrix product, not scanned once per query. The 8-bit inner product is
        ``s.(c - 128) / f + q.vmin + 128.5 sum(q')`` for the stored bytes ``c`` and the
        scaled query ``s`` (:meth:`_scaled_by`); it is within ~1e-3 of the cosine (the
        codes' rounding), so ask for a floor below the score wanted and re-score.
        """
        nprobe = max(1, min(int(nprobe or self.nprobe), self.nlist))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, probes = self._nearest_lists(queries, nprobe)
        scaled, factor = self._scaled_by(queries)
        offset = queries @ self._vmin + np.float32(128.5) * (queries @ self._query_scale)
        # scored against the bytes c themselves: s.c >= f (floor - offset) + 128 sum(s)
        bar = factor * (np.float32(floor) - offset) + np.float32(128) * scaled.sum(axis=1)
        flat = probes.reshape(-1)
        asking = np.repeat(np.arange(len(queries)), probes.shape[1])
        order = np.argsort(flat, kind="stable")
        flat, asking = flat[order], asking[order]
        cuts = np.flatnonzero(np.diff(flat)) + 1
        found_q: list[NDArray[np.intp]] = []
        found_ids: list[NDArray[np.int64]] = []
        for part in np.split(np.arange(len(flat)), cuts):
            if not len(part) or flat[part[0]] < 0:
                continue
            who = asking[part]
            codes, ids = self._list_contents(int(flat[part[0]]))
            for at in range(0, len(ids), _SCORE_ROWS):  # a huge list in bounded pieces
                block = codes[at : at + _SCORE_ROWS].astype(np.float32) @ scaled[who].T
                rows, cols = np.nonzero(block >= bar[who])
                found_q.append(who[cols])
                found_ids.append(ids[at + rows])
        if not found_q:
            return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
        return np.concatenate(found_q), np.concatenate(found_ids)

    def _list_contents(self, i: int) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        """List ``i``'s stored bytes (``(n, dim)``, read as ``c - 128``) and rowids, as
        views of faiss's memory (the mapped file for a mapped index)."""
        faiss = self._faiss
        lists = self.index.invlists
        n = int(lists.list_size(i))
        size = int(lists.code_size)
        if not n:
            return np.zeros((0, size), dtype=np.uint8), np.zeros(0, dtype=np.int64)
        codes = faiss.rev_swig_ptr(lists.get_codes(i), n * size).reshape(n, size)
        ids = faiss.rev_swig_ptr(lists.get_ids(i), n)
        return codes, ids

    @property
    def ntotal(self) -> int:
        if self._ntotal is None:  # asked on every search: read once through SWIG
            self._ntotal = int(self.index.ntotal)
        return self._ntotal

    def list_sizes(self) -> NDArray[np.int64]:
        """How many vectors each inverted list holds."""
        lists = self.index.invlists
        return np.array([lists.list_size(i) for i in range(self.nlist)], dtype=np.int64)

    def codes_scanned(
        self, queries: NDArray[np.float32], nprobe: int | None = None
    ) -> NDArray[np.int64]:
        """How many codes each query's probed lists hold."""
        sizes = self.list_sizes()
        _, lists = self._nearest_lists(queries, max(1, min(nprobe or self.nprobe, self.nlist)))
        scanned: NDArray[np.int64] = sizes[lists].sum(axis=1)
        return scanned

    def _nearest_lists(
        self, vectors: NDArray[np.float32], count: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The ``count`` lists whose centroids are nearest to each vector's centred,
        normalised direction (how every vector is filed and every query probes)."""
        found: tuple[NDArray[np.float32], NDArray[np.int64]] = self.index.quantizer.search(
            _centred(vectors, self._centre), count
        )
        return found

    def add(self, rowids: NDArray[np.int64], vectors: NDArray[np.float32]) -> None:
        self._ntotal = None
        self._codes = None
        if not len(rowids):
            return
        faiss = self._faiss
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(rowids, dtype=np.int64)
        _, lists = self._nearest_lists(vectors, 1)
        lists = np.ascontiguousarray(lists.reshape(-1), dtype=np.int64)
        codes = self._encode(vectors)
        self.index.add_core(
            len(ids), faiss.swig_ptr(codes), faiss.swig_ptr(ids), faiss.swig_ptr(lists)
        )

    def remove(self, rowids: Iterable[int]) -> int:
        ids = np.fromiter(rowids, dtype=np.int64)
        if not len(ids):
            return 0
        self._ntotal = None
        self._codes = None
        return int(self.index.remove_ids(self._faiss.IDSelectorBatch(ids)))

    def search(
        self,
        queries: NDArray[np.float32],
        k: int,
        nprobe: int,
        allowed: Any = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top ``k`` (quantised inner product) per query; ``-1`` ids pad short results.

        ``allowed``: a :class:`Bitmap` of the rowids that may be returned.
        """
        faiss = self._faiss
        nprobe = max(1, min(int(nprobe), self.nlist))
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        if allowed is not None:
            params.sel = allowed.selector
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        n = len(queries)
        scores = np.empty((n, k), dtype=np.float32)
        ids = np.empty((n, k), dtype=np.int64)
        with self._threads(n):
            coarse, lists = self._nearest_lists(queries, nprobe)
            lists = np.ascontiguousarray(lists, dtype=np.int64)
            coarse = np.ascontiguousarray(coarse, dtype=np.float32)
            scaled = self._scaled(queries)
            self.index.search_preassigned_c(
                n,
                faiss.swig_ptr(scaled),
                k,
                faiss.swig_ptr(lists),
                faiss.swig_ptr(coarse),
                faiss.swig_ptr(scores),
                faiss.swig_ptr(ids),
                False,
                params,
                None,
            )
        return scores, ids

    @contextlib.contextmanager
    def _threads(self, nq: int) -> Iterator[None]:
        """One OpenMP thread for a single query (the setting is per calling thread).

        A single query has nothing to split between threads, and on a busy machine
        waking a team of them costs more than the scan itself."""
        if nq > 1:
            yield
            return
        faiss = self._faiss
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    def has_codes(self) -> bool:
        """Whether :meth:`best_of` can read codes by rowid (the index is mapped from its file)."""
        return self._codes_by_rowid() is not None

    def _codes_by_rowid(self) -> _Codes | None:
        if self._codes is None:
            self._codes = _Codes.of(self) or False
        return self._codes if isinstance(self._codes, _Codes) else None

    def best_of(
        self, queries: NDArray[np.float32], rowids: NDArray[np.int64], k: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The ``k`` best of ``rowids`` per query by their 8-bit codes (no list scanned).

        Reads the codes of just those rows from the mapped file and scores them with
        faiss's 8-bit kernel. Returns (ids, missing): ``ids`` is (nq, k) with ``-1``
        padding, ``missing`` the rowids the index does not hold (score them exactly).
        Only for a mapped index (:meth:`has_codes`).
        """
        codes = self._codes_by_rowid()
        assert codes is not None
        found, addresses = codes.find(rowids)
        missing = rowids[~found]
        rowids = rowids[found]
        nq = len(queries)
        if not len(rowids):
            return np.full((nq, 0), -1, dtype=np.int64), missing
        k = max(1, min(k, len(rowids)))
        queries = self._scaled(queries)
        flat = codes.scratch
        scores, found_ids = [], []
        for start in range(0, len(rowids), _SCORE_ROWS):
            flat.reset()
            flat.add_sa_codes(codes.rows[addresses[start : start + _SCORE_ROWS]])
            with self._threads(nq):
                s, i = flat.search(queries, min(k, flat.ntotal))
            ok = i >= 0
            scores.append(np.where(ok, s, -np.inf))
            block_ids = rowids[start : start + _SCORE_ROWS]
            found_ids.append(np.where(ok, block_ids[np.maximum(i, 0)], -1))
        if len(scores) == 1:
            flat.reset()
            return found_ids[0], missing
        all_s, all_i = np.concatenate(scores, axis=1), np.concatenate(found_ids, axis=1)
        keep = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_i = np.take_along_axis(all_i, keep, 1)
        flat.reset()
        return best_i, missing

    # -- the derived file ----------------------------------------------------------
    def save(self, path: Path, header: dict[str, Any]) -> None:
        """Write atomically (temporary file, fsync, rename)."""
        faiss = self._faiss
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        crc = head_crc = 0
        size = 0
        try:
            with open(tmp, "wb") as fh:

                def write(data: bytes) -> int:
                    nonlocal crc, head_crc, size
                    crc = zlib.crc32(data, crc)
                    if size < _HEAD_BYTES:
                        head_crc = zlib.crc32(data[: _HEAD_BYTES - size], head_crc)
                    size += len(data)
                    fh.write(data)
                    return len(data)

                faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))
                faiss_bytes = size
                write(self.codec.tobytes())
                meta = dict(
                    header,
                    payload_bytes=size,
                    faiss_bytes=faiss_bytes,
                    codec_crc32=zlib.crc32(self.codec.tobytes()),
                    crc32=crc,
                    head_crc32=head_crc,
                    nprobe=self.nprobe,
                    last_rowid=self.last_rowid,
                    ntotal=self.ntotal,
                )
                blob = _MAGIC + json.dumps(meta).encode()
                if len(blob) > _TRAILER_BYTES:  # pragma: no cover - the header is small
                    raise AnnFileError("header too large")
                fh.write(blob.ljust(_TRAILER_BYTES, b" "))
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
                fh.seek(0, os.SEEK_END)
                if fh.tell() < _TRAILER_BYTES:
                    raise AnnFileError("not a lookalike ANN file")
                fh.seek(-_TRAILER_BYTES, os.SEEK_END)
                head = fh.read(_TRAILER_BYTES)
        except OSError as exc:
            raise AnnFileError(f"cannot read: {exc.strerror or exc}") from exc
        if not head.startswith(_MAGIC):
            raise AnnFileError("not a lookalike ANN file")
        try:
            meta: Any = json.loads(head[len(_MAGIC) :].decode().strip())
        except ValueError as exc:
            raise AnnFileError(f"unreadable header: {exc}") from exc
        if not isinstance(meta, dict):
            raise AnnFileError("unreadable header")
        return meta

    @staticmethod
    def _crc(path: Path, limit: int | None) -> int:
        crc = 0
        left = limit
        with open(path, "rb") as fh:
            while left is None or left > 0:
                chunk = fh.read(_CHUNK if left is None else min(_CHUNK, left))
                if not chunk:
                    break
                crc = zlib.crc32(chunk, crc)
                if left is not None:
                    left -= len(chunk)
        return crc

    @classmethod
    def load(cls, path: Path, expect: dict[str, Any]) -> tuple[IvfIndex, dict[str, Any]]:
        """Map the file after checking its trailer against ``expect``, its size and the
        checksum of its head (:meth:`verify` checks all of it)."""
        faiss = _faiss()
        meta = cls.read_header(path)
        for key, value in expect.items():
            if meta.get(key) != value:
                raise AnnFileError(f"{key} is {meta.get(key)!r}, expected {value!r}")
        size = int(meta.get("payload_bytes", -1))
        if path.stat().st_size != size + _TRAILER_BYTES:
            raise AnnFileError("truncated or extended")
        if cls._crc(path, min(size, _HEAD_BYTES)) != meta.get("head_crc32"):
            raise AnnFileError("checksum mismatch")
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as exc:
            raise AnnFileError(f"faiss cannot read it: {exc}") from exc
        if (
            int(index.d) != int(meta.get("dim", -1))
            or not hasattr(index, "nlist")
            or not hasattr(index, "sq")
            or int(index.ntotal) != int(meta.get("ntotal", -1))
        ):
            raise AnnFileError("unexpected index type, dimension or size")
        codec = cls._codec(path, meta, int(index.d))
        return cls(index, codec, None, int(meta.get("last_rowid", 0))), meta

    @staticmethod
    def _codec(path: Path, meta: dict[str, Any], dim: int) -> NDArray[np.float32]:
        """vmin and vdiff of the 8-bit codes and the lists' centre, saved right after
        faiss's serialisation."""
        at, want = int(meta.get("faiss_bytes", -1)), 12 * dim
        if at < 0 or at + want != int(meta.get("payload_bytes", -1)):
            raise AnnFileError("no 8-bit codec in the file")
        with open(path, "rb") as fh:
            fh.seek(at)
            blob = fh.read(want)
        if len(blob) != want:
            raise AnnFileError("truncated")
        if zlib.crc32(blob) != meta.get("codec_crc32"):  # checked on every open
            raise AnnFileError("checksum mismatch (8-bit codec)")
        codec = np.frombuffer(blob, dtype=np.float32).copy()
        if not np.isfinite(codec).all() or (codec[dim : 2 * dim] < 0).any():
            raise AnnFileError("damaged 8-bit codec")
        return codec

    @classmethod
    def verify(cls, path: Path) -> None:
        """Check the whole payload's checksum; AnnFileError when it differs."""
        meta = cls.read_header(path)
        if cls._crc(path, int(meta.get("payload_bytes", -1))) != meta.get("crc32"):
            raise AnnFileError("checksum mismatch")


class _Codes:
    """The 8-bit codes of a mapped index, found by rowid: a view of the mapped file
    (faiss's own map, so reading codes here adds no memory beyond the index's pages)
    and, sorted by rowid, where each row's code lies in it."""

    def __init__(
        self, ids: NDArray[np.int64], addresses: NDArray[np.int64], rows: Any, scratch: Any
    ) -> None:
        self.ids = ids
        self.addresses = addresses
        self.rows = rows  # (bytes, code_size) strided view: row a = the code at byte a
        self.scratch = scratch  # a flat 8-bit index with the same codec, for scoring

    @classmethod
    def of(cls, ann: IvfIndex) -> _Codes | None:
        faiss = ann._faiss
        lists = faiss.downcast_InvertedLists(ann.index.invlists)
        if not isinstance(lists, faiss.OnDiskInvertedLists) or not lists.totsize:
            return None  # built in memory (not mapped): lists are scattered allocations
        size = int(lists.code_size)
        whole = faiss.rev_swig_ptr(lists.ptr, int(lists.totsize))
        ids, addresses = [], []
        for i in range(ann.nlist):
            one = lists.lists.at(i)
            n, at = int(one.size), int(one.offset)
            if not n:
                continue
            end = at + int(one.capacity) * size + n * 8
            if at < 0 or end > len(whole):
                return None
            ids.append(np.frombuffer(whole, dtype=np.int64, count=n, offset=end - n * 8))
            addresses.append(at + np.arange(n, dtype=np.int64) * size)
        if not ids:
            return None
        all_ids = np.concatenate(ids)
        order = np.argsort(all_ids, kind="stable")
        rows = np.lib.stride_tricks.as_strided(
            whole, shape=(len(whole) - size + 1, size), strides=(1, 1), writeable=False
        )
        scratch = faiss.IndexScalarQuantizer(
            int(ann.index.d), _direct(faiss), faiss.METRIC_INNER_PRODUCT
        )
        return cls(all_ids[order], np.concatenate(addresses)[order], rows, scratch)

    def find(self, rowids: NDArray[np.int64]) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
        """Which ``rowids`` the index holds, and the addresses of those it holds."""
        at = np.minimum(np.searchsorted(self.ids, rowids), max(len(self.ids) - 1, 0))
        found = self.ids[at] == rowids
        return found, self.addresses[at[found]]


class Bitmap:
    """A faiss selector allowing the given rowids (keeps its buffer alive)."""

    def __init__(self, allowed: NDArray[np.int64]) -> None:
        faiss = _faiss()
        bits = np.zeros(int(allowed.max()) + 1 if len(allowed) else 1, dtype=bool)
        bits[allowed] = True
        self.packed = np.packbits(bits, bitorder="little")
        self.selector = faiss.IDSelectorBitmap(len(self.packed), faiss.swig_ptr(self.packed))
