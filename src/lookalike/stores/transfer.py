"""Copy an index between stores without re-embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigurationError
from ..protocols import VectorStore
from ..types import Record
from ._common import check_batch_size

__all__ = ["copy_store", "same_store"]


def same_store(a: VectorStore, b: VectorStore) -> str | None:
    """Why ``a`` and ``b`` are one and the same store, or None when they are not.

    Two :class:`~lookalike.stores.LocalStore` handles are the same store when they opened
    one file, by any path or link (see :meth:`LocalStore.shares_file_with`, which also
    tells a plain copy of the file from the file itself). Two Tencent stores are the
    same when the URL, database and collection match. Any store is the same as itself.
    """
    if a is b:
        return f"{a!r} is both the source and the target"
    from .local import LocalStore

    if isinstance(a, LocalStore) and isinstance(b, LocalStore):
        if a.shares_file_with(b):
            return f"{a.path} and {b.path} are the same store file"
        return None
    ta, tb = _tencent_key(a), _tencent_key(b)
    if ta is not None and ta == tb:
        return f"both are collection {ta[2]!r} of database {ta[1]!r} at {ta[0]}"
    return None


def _tencent_key(store: Any) -> tuple[str, str, str] | None:
    if type(store).__name__ != "TencentVectorStore":  # no import: tcvectordb is an extra
        return None
    return (str(store.url).rstrip("/").lower(), str(store.database), str(store.collection))


def copy_store(
    source: VectorStore,
    target: VectorStore,
    *,
    batch_size: int = 1000,
    progress: bool = False,
    replace_metadata: bool = False,
) -> int:
    """Copy every record (vectors and metadata) from ``source`` to ``target``; return the count.

    The target gets the source's schema (created if missing; a different existing
    schema raises :class:`~lookalike.errors.SchemaMismatchError`). Records are upserted by
    id, so copying again, or after an interruption, never duplicates.

    A record the target already holds gets the source's vector, and its metadata merges
    as in :meth:`~lookalike.ImageSearchIndex.add_many`: the source's fields replace the
    target's, fields only the target has are kept. With ``replace_metadata`` the target's
    record becomes the source's exactly.

    A source and target that are the same store (see :func:`same_store`) raise
    :class:`~lookalike.errors.ConfigurationError`; so does a ``batch_size`` below 1.
    """
    if not isinstance(replace_metadata, bool):
        raise ConfigurationError(f"replace_metadata must be True or False, got {replace_metadata!r}")
    check_batch_size(batch_size)
    why = same_store(source, target)
    if why is not None:
        raise ConfigurationError(
            f"cannot copy a store onto itself: {why}. Choose another target."
        )
    schema = source.describe()
    if schema is None:
        raise ConfigurationError(f"{source!r} has no schema: nothing to copy")
    target.create_schema(schema)
    from ..display import tqdm_bar

    copied = 0
    with tqdm_bar(total=source.count(), unit="rec", desc="copying", disable=not progress) as bar:
        for batch in source.scan(batch_size):
            target.upsert(batch if replace_metadata else _merged_onto(target, batch))
            copied += len(batch)
            bar.update(len(batch))
    return copied


def _merged_onto(target: VectorStore, batch: Sequence[Record]) -> list[Record]:
    """The batch with each record's metadata merged over what the target holds for its id."""
    held = {r.id: r.metadata for r in target.get([r.id for r in batch])}
    out = []
    for record in batch:
        kept = held.get(record.id)
        if kept is None or all(k in record.metadata for k in kept):
            out.append(record)
        else:
            out.append(Record(record.id, record.vector, {**kept, **record.metadata}))
    return out
