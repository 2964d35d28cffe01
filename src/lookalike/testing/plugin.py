"""The lookalike pytest plugin, by its public name: ``pytest -p lookalike.testing.plugin``.

Installed lookalike registers it by itself (the ``pytest11`` entry point, pointing at the
light top-level module ``_lookalike_pytest``); name it only where that entry point is not
installed (e.g. a source checkout on ``PYTHONPATH``). Fixtures:

- ``image_files``: a folder of 8 distinct generated JPEG images (``img000.jpg`` ...).
- ``lookalike_index``: an empty ``ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore())``.
"""

from __future__ import annotations

from _lookalike_pytest import IMAGE_FILES, image_files, lookalike_index

__all__ = ["IMAGE_FILES", "image_files", "lookalike_index"]
