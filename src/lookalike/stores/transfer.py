"""Copy an index between stores without re-embedding."""

from __future__ import annotations

from ..errors import ConfigurationError
from ..protocols import VectorStore

__all__ = ["copy_store"]


def copy_store(
    source: VectorStore, target: VectorStore, *, batch_size: int = 1000, progress: bool = False
) -> int:
    """Copy every record (vectors and metadata) from ``source`` to ``target``; return the count.

    The target gets the source's schema (created if missing; a different existing
    schema raises :class:`~lookalike.errors.SchemaMismatchError`). Records are upserted by
    id, so copying again, or after an interruption, never duplicates.
    """
    schema = source.describe()
    if schema is None:
        raise ConfigurationError(f"{source!r} has no schema: nothing to copy")
    target.create_schema(schema)
    from tqdm.auto import tqdm

    copied = 0
    with tqdm(total=source.count(), unit="rec", desc="copying", disable=not progress) as bar:
        for batch in source.scan(batch_size):
            target.upsert(batch)
            copied += len(batch)
            bar.update(len(batch))
    return copied
