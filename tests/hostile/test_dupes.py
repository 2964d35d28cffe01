"""Hostile input for find_duplicates / duplicates_of / lookalike dupes (issue #19)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike import ConfigurationError, ImageSearchIndex, Record, Schema
from lookalike.cli import main
from lookalike.duplicates import find_duplicates
from lookalike.embedders import FakeEmbedder
from lookalike.stores import InMemoryStore, LocalStore

from ..conftest import make_image


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def two_copies(tmp_path: Path, name: str = "a.png") -> tuple[str, Path]:
    """A store holding a picture and a re-saved copy of it; returns (store, folder)."""
    root = tmp_path / "photos"
    root.mkdir(exist_ok=True)
    make_image(1, size=(120, 90)).save(root / name)
    make_image(1, size=(120, 90)).save(root / "copy.jpg", quality=60)
    make_image(2, size=(120, 90)).save(root / "other.png")
    store = tmp_path / "s.lookalike"
    with ImageSearchIndex(FakeEmbedder(), LocalStore(store)) as index:
        assert index.add_many(sorted(root.iterdir())).ok
    return str(store), root


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.5, -1.0, True, "0.9", None])
def test_thresholds_that_are_not_cosines_are_refused(bad: object) -> None:
    store = InMemoryStore()
    store.create_schema(Schema(4, "test:v1"))
    store.upsert([Record("a", np.array([1, 0, 0, 0], dtype=np.float32))])
    if bad is None:  # None means "the default": fine, with the fallback's warning
        with pytest.warns(UserWarning):
            find_duplicates(store, bad)
        return
    with pytest.raises(ConfigurationError, match="threshold must be a cosine similarity"):
        find_duplicates(store, bad)  # type: ignore[arg-type]


def test_bad_batch_size_and_filter_field_are_refused() -> None:
    store = InMemoryStore()
    store.create_schema(Schema(4, "test:v1"))
    with pytest.raises(ConfigurationError, match="batch_size"):
        find_duplicates(store, 0.9, batch_size=0)
    with pytest.raises(ConfigurationError, match="not a declared field"):
        find_duplicates(store, 0.9, filter={"colour": "red"})


def test_duplicates_of_takes_one_image(tmp_path: Path) -> None:
    index = ImageSearchIndex(FakeEmbedder(), InMemoryStore())
    with pytest.raises(ConfigurationError, match="one image"):
        index.duplicates_of([make_image(1), make_image(2)], 0.9)  # type: ignore[arg-type]
    assert index.duplicates_of(make_image(1), 0.9) == []  # nothing stored yet


def test_cli_threshold_nan_missing_store_and_apply_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, _ = two_copies(tmp_path)
    code, out, err = run(capsys, "dupes", "--store", store, "--threshold", "nan")
    assert code == 1 and out == "" and err.count("\n") == 1 and "threshold must be" in err
    code, _, err = run(capsys, "dupes", "--store", str(tmp_path / "none.lookalike"))
    assert code == 1 and "no index at" in err and not (tmp_path / "none.lookalike").exists()
    code, _, err = run(capsys, "dupes", "--store", store, "--apply")
    assert code == 1 and "--apply needs --move-to" in err
    (tmp_path / "afile").write_text("x")
    code, _, err = run(capsys, "dupes", "--store", store, "--move-to", str(tmp_path / "afile"), "--apply")
    assert code == 1 and "is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "x"


def test_cli_move_that_fails_keeps_file_and_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    store, root = two_copies(tmp_path, name="new\nline.png")

    def refuse(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(shutil, "move", refuse)
    code, out, err = run(capsys, "dupes", "--store", store, "--threshold", "0.95", "--move-to",
                         str(tmp_path / "trash"), "--apply", "-q")
    assert code == 1
    assert err.startswith("lookalike: error: cannot move ") and "Input/output error" in err
    assert err.count("\n") == 1  # one line, the odd name quoted
    assert "moved 0 files" in out
    assert sorted(p.name for p in root.iterdir()) == sorted(["new\nline.png", "copy.jpg", "other.png"])
    with LocalStore(store) as s:
        assert s.count() == 3


def test_cli_never_moves_the_kept_file_under_another_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two records of one file (ids chosen by the user): the kept file stays where it is."""
    root = tmp_path / "photos"
    root.mkdir()
    make_image(3).save(root / "one.png")
    store = tmp_path / "s.lookalike"
    from lookalike import Item

    with ImageSearchIndex(FakeEmbedder(), LocalStore(store)) as index:
        assert index.add_many([Item(root / "one.png", id="x"), Item(root / "one.png", id="y")]).ok
    code, out, err = run(capsys, "dupes", "--store", str(store), "--threshold", "0.95",
                         "--move-to", str(tmp_path / "trash"), "--apply", "-q")
    assert code == 0, err
    assert "# group 1: 2 images" in out and (root / "one.png").is_file()
    assert not (tmp_path / "trash").exists() or not any((tmp_path / "trash").iterdir())
