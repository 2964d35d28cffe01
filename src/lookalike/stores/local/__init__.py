"""LocalStore, the embedded default store: one SQLite file plus derived, memory-mapped
search files beside it (``<store>.vec``, ``<store>.ann``).

The package is split by concern; :mod:`.store` holds the :class:`LocalStore` object and
calls into the others:

- ``_open``: opening a file, refusing what is not a store, read-only fallbacks;
- ``_format``: the file format, its recognition, creation and migration;
- ``_sqlite``: SQLite error translation, write transactions, the chunked ``IN (...)`` helper;
- ``_rows``: stored rows read back, damaged ones skipped with a warning;
- ``_vecfile``: the derived vector file ``<store>.vec`` and the SQLite rows describing it;
- ``_mirror``: the positions a process searches and how it catches up with other writers;
- ``_tombstones``: the deletion log readers catch up from, and its compaction;
- ``_columns``: filter fields, dictionary-encoded in memory;
- ``_annfile`` and ``_ivf``: the derived ``<store>.ann`` file and the faiss index in it;
- ``_search``: exact and approximate search;
- ``_check``: the integrity check behind ``lookalike check``.
"""

from __future__ import annotations

from .store import DEFAULT_ANN_THRESHOLD, LocalStore

__all__ = ["DEFAULT_ANN_THRESHOLD", "LocalStore"]
