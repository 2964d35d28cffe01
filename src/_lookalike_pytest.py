"""The lookalike pytest plugin: fixtures for testing code that uses lookalike.

Registered through the ``pytest11`` entry point, so it is loaded by every pytest run in an
environment where lookalike is installed. That is why it is a top-level module outside the
``lookalike`` package: loading it imports nothing but pytest (not lookalike, numpy, Pillow
or torch) until a test asks for one of its fixtures. Its public name is
``lookalike.testing.plugin`` (``pytest -p lookalike.testing.plugin`` where the entry point
is not installed).

- ``image_files``: a folder (under ``tmp_path``) of 8 distinct generated JPEG images;
  ``sorted(image_files.iterdir())`` lists them.
- ``lookalike_index``: an empty :class:`~lookalike.ImageSearchIndex` with
  ``FakeEmbedder()`` and ``InMemoryStore()``, closed after the test.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lookalike import ImageSearchIndex

__all__ = ["IMAGE_FILES", "image_files", "lookalike_index"]

IMAGE_FILES = 8  #: how many images the ``image_files`` folder holds

# The contract suites' asserts get pytest's detailed failure reports (what differed), on
# top of their own messages. Registering a module imported already would only warn.
for _module in ("lookalike.testing.contract", "lookalike.testing.embedder_contract"):
    if _module not in sys.modules:
        pytest.register_assert_rewrite(_module)


@pytest.fixture
def image_files(tmp_path: Path) -> Path:
    """A folder of ``IMAGE_FILES`` distinct JPEG images, ``img000.jpg`` ... (fresh per test)."""
    from lookalike.testing import make_images

    folder = tmp_path / "lookalike-images"
    make_images(folder, IMAGE_FILES)
    return folder


@pytest.fixture
def lookalike_index() -> Iterator[ImageSearchIndex]:
    """An empty ``ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore())``."""
    from lookalike import ImageSearchIndex
    from lookalike.testing import FakeEmbedder, InMemoryStore

    index = ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore())
    with index:
        yield index
