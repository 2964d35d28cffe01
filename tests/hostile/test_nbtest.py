"""Hostile input for the test kit (make_image/make_images) and the doc-block runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike import ConfigurationError
from lookalike.testing import make_image, make_images

from ..test_doc_blocks import python_blocks


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"size": (100_000, 100_000)}, "pixels"),
        ({"size": (96.5, 80)}, "two ints"),
        ({"size": 96}, "(width, height)"),
        ({"size": (96, 80, 3)}, "(width, height)"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_make_image_refuses_hostile_arguments_with_a_clear_error(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        make_image(**kwargs)  # type: ignore[arg-type]


def test_make_images_into_a_file_names_it(tmp_path: Path) -> None:
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    with pytest.raises(ConfigurationError, match="not-a-folder.*not a folder"):
        make_images(target, 2)
    assert target.read_text() == "x"


@pytest.mark.parametrize("n", [True, 2.0, "3"])
def test_make_images_refuses_a_non_int_count(tmp_path: Path, n: object) -> None:
    with pytest.raises(ConfigurationError, match="n must be"):
        make_images(tmp_path, n)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_doc_parser_reads_an_unclosed_fence_to_the_end(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("<!-- skip:   -->\n```python\nx = 1\n\n# no closing fence")
    (block,) = python_blocks(page)
    assert block.source == "x = 1\n\n# no closing fence"
    assert (block.directive, block.reason) == ("skip", "")  # the runner then fails: no reason
