"""Copy an index between stores without re-embedding."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigurationError
from ..protocols import VectorStore
from ..types import Record

__all__ = ["copy_store"]


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
    """
    if not isinstance(replace_metadata, bool):
        raise ConfigurationError(f"replace_metadata must be True or False, got {replace_metadata!r}")
    schema = source.describe()
    if schema is None:
        raise ConfigurationError(f"{source!r} has no schema: nothing to copy")
    target.create_schema(schema)
    from tqdm.auto import tqdm

    copied = 0
    with tqdm(total=source.count(), unit="rec", desc="copying", disable=not progress) as bar:
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
