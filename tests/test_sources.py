"""sources.from_dir / from_glob / from_csv: lazy, sorted, re-iterable, with lengths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lookalike import ConfigurationError, sources
from lookalike.sources import Item

from .conftest import make_image


def _names(paths: object, root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]  # type: ignore[attr-defined]


def test_from_dir_lists_images_sorted_and_recursive(image_dir: Path) -> None:
    src = sources.from_dir(image_dir)
    names = _names(src, image_dir)
    assert names == sorted(names)
    assert len(names) == 12
    assert "notes.txt" not in " ".join(names)
    assert names[0] == "a/img00.jpg" and names[-1] == "b/img11.png"
    assert len(src) == 12
    assert _names(src, image_dir) == names  # re-iterable, same order


def test_from_dir_not_recursive(image_dir: Path) -> None:
    make_image(40).save(image_dir / "top.png")
    assert _names(sources.from_dir(image_dir, recursive=False), image_dir) == ["top.png"]


def test_from_dir_extensions_are_case_insensitive(tmp_path: Path) -> None:
    make_image(1).save(tmp_path / "UPPER.JPG", format="JPEG")
    make_image(2).save(tmp_path / "Mixed.Png", format="PNG")
    (tmp_path / "data.csv").write_text("a,b\n")
    assert _names(sources.from_dir(tmp_path), tmp_path) == ["Mixed.Png", "UPPER.JPG"]
    only_png = sources.from_dir(tmp_path, extensions=["png"])
    assert _names(only_png, tmp_path) == ["Mixed.Png"]


def test_from_dir_skips_hidden_unless_asked(tmp_path: Path) -> None:
    (tmp_path / ".cache").mkdir()
    make_image(1).save(tmp_path / ".cache" / "thumb.png")
    make_image(2).save(tmp_path / ".hidden.png")
    make_image(3).save(tmp_path / "shown.png")
    assert _names(sources.from_dir(tmp_path), tmp_path) == ["shown.png"]
    with_hidden = _names(sources.from_dir(tmp_path, include_hidden=True), tmp_path)
    assert with_hidden == [".hidden.png", "shown.png", ".cache/thumb.png"]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_from_dir_follows_symlinked_folders_but_not_loops(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "other").mkdir()
    root.mkdir()
    make_image(1).save(root / "a.png")
    make_image(2).save(tmp_path / "other" / "b.png")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "more").symlink_to(tmp_path / "other", target_is_directory=True)
    assert _names(sources.from_dir(root), root) == ["a.png", "more/b.png"]


def test_sources_say_what_an_empty_result_means(tmp_path: Path) -> None:
    assert sources.from_dir(tmp_path, extensions=["png", "JPG"]).empty_message == (
        f"no images found in {tmp_path} (looked for .jpg, .png)")
    assert sources.from_glob("x/*.gif", extensions=["gif"]).empty_message == (
        "no images match x/*.gif (looked for .gif)")
    csv_path = _write_csv(tmp_path, "path\n")
    assert sources.from_csv(csv_path).empty_message == f"no images listed in {csv_path}"


def test_from_dir_is_lazy(tmp_path: Path) -> None:
    src = sources.from_dir(tmp_path)
    make_image(1).save(tmp_path / "late.png")  # added after the source was made
    assert _names(src, tmp_path) == ["late.png"]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_from_dir_of_a_non_folder_raises(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "x.png"
    if kind == "file":
        make_image(1).save(target)
    with pytest.raises(ConfigurationError, match="does not exist" if kind == "missing" else "not a folder"):
        sources.from_dir(target)


def test_from_glob(image_dir: Path) -> None:
    pngs = sources.from_glob(str(image_dir / "**" / "*.png"))
    names = _names(pngs, image_dir)
    assert names == sorted(names) and len(names) == 6
    assert all(n.endswith(".png") for n in names)
    assert len(pngs) == 6
    everything = _names(sources.from_glob(str(image_dir / "*"), extensions=None), image_dir)
    assert everything == ["notes.txt"]  # folders are not files
    assert list(sources.from_glob(str(image_dir / "nothing-*.jpg"))) == []


@pytest.mark.parametrize("extensions", [["png"], [".PNG"], ("Png",)])
def test_from_glob_extensions_like_from_dir(image_dir: Path, extensions: list[str]) -> None:
    pattern = str(image_dir / "**" / "*")
    assert _names(sources.from_glob(pattern, extensions=extensions), image_dir) == _names(
        sources.from_dir(image_dir, extensions=extensions), image_dir)
    assert len(sources.from_glob(pattern, extensions=extensions)) == 6


def _write_csv(folder: Path, text: str, name: str = "list.csv") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_from_csv_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "train" / "cat").mkdir(parents=True)
    make_image(1).save(tmp_path / "train" / "cat" / "1.jpg")
    csv_path = _write_csv(tmp_path, "id,path,label\n0,./train/cat/1.jpg,cat\n1,train/cat/2.jpg,dog\n")
    items = list(sources.from_csv(csv_path))
    assert len(items) == 2
    assert all(isinstance(i, Item) for i in items)
    first = items[0]
    assert Path(first.image).resolve() == (tmp_path / "train" / "cat" / "1.jpg").resolve()  # type: ignore[arg-type]
    assert first.id is None  # ids stay path-derived
    assert dict(first.metadata) == {"csv_id": "0", "label": "cat"}
    assert dict(items[1].metadata) == {"csv_id": "1", "label": "dog"}


def test_from_csv_with_id_column_and_absolute_paths(tmp_path: Path) -> None:
    absolute = tmp_path / "abs.png"
    csv_path = _write_csv(tmp_path, f"key,path,label,source\nk1,{absolute},fish,cam\nk2,,x,y\n")
    items = list(sources.from_csv(csv_path, id_column="key"))
    assert len(items) == 1  # rows without a path are skipped
    assert items[0].id == "k1"
    assert Path(items[0].image) == absolute  # type: ignore[arg-type]
    assert dict(items[0].metadata) == {"label": "fish", "source": "cam"}


def test_from_csv_other_path_column_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefffile,label\na.png,x\n".encode())
    items = list(sources.from_csv(path, path_column="file"))
    assert [dict(i.metadata) for i in items] == [{"label": "x"}]
    assert len(sources.from_csv(path, path_column="file")) == 1


def test_from_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        sources.from_csv(tmp_path / "missing.csv")
    csv_path = _write_csv(tmp_path, "id,file,label\n0,a.png,x\n")
    with pytest.raises(ConfigurationError, match="no 'path' column"):
        sources.from_csv(csv_path)
    with pytest.raises(ConfigurationError, match="no 'key' column"):
        sources.from_csv(csv_path, path_column="file", id_column="key")


def test_source_repr_names_where_it_reads(tmp_path: Path) -> None:
    assert str(tmp_path) in repr(sources.from_dir(tmp_path))
