"""Hostile file systems: symlink loops, FIFOs and other special files, unreadable folders.

The CI machine runs as root, for whom ``chmod 000`` changes nothing, so permission and
I/O errors are simulated by making ``os.scandir`` / ``os.stat`` fail for chosen paths.
A test that would hang on a regression (a FIFO opened for reading) carries a guard that
unblocks the reader, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lookalike import ImageLoadError, ImageSearchIndex, path_id, sources
from lookalike.cli import main
from lookalike.embedders import FakeEmbedder
from lookalike.images import load_image, read_image_bytes
from lookalike.stores import LocalStore
from lookalike.types import Failure

from ..conftest import make_image

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink") or not hasattr(os, "mkfifo"), reason="POSIX only")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _names(paths: Any, root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO named like an image, with a guard: should anyone open it for reading, the
    guard opens the writing end and closes it, so the reader sees end-of-file, not a hang."""
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    stop = threading.Event()
    opened = threading.Event()

    def guard() -> None:
        while not stop.wait(0.02):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
            except OSError:
                continue
            opened.set()
            os.close(fd)

    thread = threading.Thread(target=guard, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()
    assert not opened.is_set(), "the FIFO was opened for reading (it would block forever)"


def _fail_for(monkeypatch: pytest.MonkeyPatch, name: str, prefix: Path, error: int = errno.EACCES) -> None:
    """Make ``os.<name>`` raise ``error`` for ``prefix`` and everything below it."""
    real = getattr(os, name)

    def failing(path: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(str(prefix)):
            exc_type = PermissionError if error == errno.EACCES else OSError
            raise exc_type(error, os.strerror(error), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, failing)


# -- symlinked folders and loops ---------------------------------------------------------
def test_from_dir_follows_symlinked_folders_each_real_folder_once(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    make_image(1).save(elsewhere / "far.png")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    make_image(2).save(root / "a.png")
    make_image(3).save(root / "sub" / "b.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # followed
    (root / "loop").symlink_to(root, target_is_directory=True)  # back up: not followed again
    (root / "sub" / "up").symlink_to(root / "sub", target_is_directory=True)
    (root / "again").symlink_to(root / "sub", target_is_directory=True)  # sub is listed once
    src = sources.from_dir(root)
    names = _names(src, root)
    assert names == ["a.png", "again/b.png", "linked/far.png"]
    assert len(src) == 3 and src.failures == []


def test_from_dir_lists_a_symlinked_file_once(tmp_path: Path) -> None:
    make_image(1).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    assert _names(sources.from_dir(tmp_path), tmp_path) == ["a.png"]


def test_from_dir_reports_a_broken_link_and_a_link_loop(tmp_path: Path) -> None:
    make_image(1).save(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")
    src = sources.from_dir(tmp_path)
    assert _names(src, tmp_path) == ["a.png"]
    reasons = {Path(f.source).name: f.reason for f in src.failures}
    assert "broken symbolic link" in reasons["gone.png"]
    assert "loop" in reasons["self.jpg"]


@pytest.mark.parametrize("pattern", ["**/*.png", "*/**/*.png", "**"])
def test_glob_over_symlink_loops_visits_each_file_once_and_ends(tmp_path: Path, pattern: str) -> None:
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    make_image(1).save(root / "top.png")
    make_image(2).save(root / "sub" / "deep.png")
    (root / "a").symlink_to(root, target_is_directory=True)  # two loops: exponential for glob.glob
    (root / "sub" / "b").symlink_to(root, target_is_directory=True)
    found = list(sources.from_glob(str(root / pattern)))
    paths = {os.path.realpath(p) for p in found}
    assert len(found) == len(paths)  # every real file once
    # "*/**/*.png" reaches top.png through the link a/
    assert paths == {str((root / "sub" / "deep.png").resolve()), str((root / "top.png").resolve())}


def test_glob_with_one_loop_lists_the_image_once(tmp_path: Path) -> None:
    make_image(1).save(tmp_path / "one.png")
    (tmp_path / "a").symlink_to(tmp_path, target_is_directory=True)
    src = sources.from_glob(str(tmp_path / "**" / "*.png"))
    assert [str(p) for p in src] == [str(tmp_path / "one.png")]  # glob.glob: 41 paths of it
    assert len(src) == 1


def test_glob_matches_like_glob_on_a_plain_tree(image_dir: Path) -> None:
    import glob

    for pattern in ["**/*.png", "*/img0*.jpg", "a/../b/*.png", "**/a/*", "*.txt"]:
        full = str(image_dir / pattern)
        expected = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        assert [str(p) for p in sources.from_glob(full, extensions=None)] == expected, pattern


# -- special files -------------------------------------------------------------------
def test_reading_a_fifo_is_refused_without_opening_it(fifo: Path) -> None:
    with pytest.raises(ImageLoadError) as info:
        read_image_bytes(fifo)
    assert info.value.source == str(fifo)
    assert "FIFO" in info.value.reason and "not a regular file" in info.value.reason
    with pytest.raises(ImageLoadError, match="FIFO"):
        load_image(str(fifo))


def test_a_socket_and_a_device_are_refused(tmp_path: Path) -> None:
    sock_path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(ImageLoadError, match="is a socket, not a regular file"):
            read_image_bytes(sock_path)
    with pytest.raises(ImageLoadError, match="is a character device, not a regular file"):
        read_image_bytes(os.devnull)


def test_search_on_a_fifo_fails_with_one_line(capsys: pytest.CaptureFixture[str], fifo: Path,
                                             tmp_path: Path, image_dir: Path) -> None:
    store = str(tmp_path / "s.lookalike")
    assert run(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake", "-q")[0] == 0
    code, out, err = run(capsys, "search", str(fifo), "--store", store)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(fifo) in err and "FIFO" in err


def test_index_lists_special_files_as_failures(capsys: pytest.CaptureFixture[str], fifo: Path,
                                               tmp_path: Path) -> None:
    make_image(1).save(tmp_path / "ok.png")
    store = str(tmp_path / "s.lookalike")
    # in a folder, named on the command line, and in a CSV
    (tmp_path / "list.csv").write_text("path\npipe.jpg\nok.png\n")
    code, out, err = run(capsys, "index", str(tmp_path), str(fifo), "/dev/null", "--csv",
                         str(tmp_path / "list.csv"), "--store", store, "--embedder", "fake", "--json")
    assert code == 3
    summary = json.loads(out)
    assert summary["count"] == 1
    failed = [(f["source"], f["reason"]) for f in summary["failed"]]
    assert sum("FIFO" in reason for _, reason in failed) == 3
    assert ("/dev/null", "is a character device, not a regular file; only regular files are read as images") in failed
    assert err.count("lookalike: skipped") == 4


# -- unreadable folders and prune ------------------------------------------------------
def test_from_dir_reports_an_unreadable_folder(monkeypatch: pytest.MonkeyPatch, image_dir: Path) -> None:
    _fail_for(monkeypatch, "scandir", image_dir / "b")
    src = sources.from_dir(image_dir)
    assert _names(src, image_dir) == [f"a/img{i:02d}.{'jpg' if i % 2 == 0 else 'png'}" for i in range(6)]
    assert src.failures == [Failure(str(image_dir / "b"), "cannot list folder: permission denied")]


def test_from_dir_reports_a_link_it_cannot_follow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    make_image(1).save(tmp_path / "a.png")
    (tmp_path / "shared").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    real_scandir = os.scandir

    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.entry, self.name, self.path = entry, entry.name, entry.path

        def is_dir(self) -> bool:
            if self.name == "shared":  # e.g. a link into a folder this user may not enter
                raise PermissionError(errno.EACCES, "Permission denied", self.path)
            return self.entry.is_dir()

    class Listing:
        def __init__(self, path: Any) -> None:
            self.listing = real_scandir(path)

        def __enter__(self) -> Iterator[Entry]:
            return (Entry(e) for e in self.listing)

        def __exit__(self, *exc: object) -> None:
            self.listing.close()

    monkeypatch.setattr(os, "scandir", Listing)
    src = sources.from_dir(tmp_path)
    assert _names(src, tmp_path) == ["a.png"]
    assert src.failures == [Failure(str(tmp_path / "shared"), "cannot follow symbolic link: permission denied")]


def test_from_dir_reports_an_io_error_on_the_root(monkeypatch: pytest.MonkeyPatch, image_dir: Path) -> None:
    _fail_for(monkeypatch, "scandir", image_dir, errno.EIO)
    src = sources.from_dir(image_dir)
    assert list(src) == []
    assert [f.reason for f in src.failures] == [f"cannot list folder: {os.strerror(errno.EIO)}"]


def test_add_many_lists_unreadable_folders_in_the_report(monkeypatch: pytest.MonkeyPatch, image_dir: Path) -> None:
    _fail_for(monkeypatch, "scandir", image_dir / "a")
    with ImageSearchIndex(embedder=FakeEmbedder(), workers=2) as index:
        report = index.add_many(sources.from_dir(image_dir))
    assert len(report.added) == 6
    assert [(f.source, f.reason) for f in report.failed] == [
        (str(image_dir / "a"), "cannot list folder: permission denied")]


@pytest.mark.parametrize("error", [errno.EACCES, errno.EIO])
def test_prune_keeps_records_of_files_it_cannot_check(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      image_dir: Path, error: int) -> None:
    store = str(tmp_path / "s.lookalike")
    assert run(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake", "-q")[0] == 0
    (image_dir / "a" / "img00.jpg").unlink()  # really gone: pruned
    _fail_for(monkeypatch, "scandir", image_dir / "b", error)  # b/ cannot be listed...
    _fail_for(monkeypatch, "stat", image_dir / "b", error)  # ... nor its files examined
    code, out, err = run(capsys, "index", str(image_dir), "--store", store, "--prune", "--json")
    summary = json.loads(out)
    assert code == 3
    assert summary["removed"] == 1 and summary["count"] == 11  # b's six records are kept
    sources_failed = {f["source"] for f in summary["failed"]}
    assert str(image_dir / "b") in sources_failed  # the folder that could not be listed
    kept = {f["source"] for f in summary["failed"] if f["reason"].startswith("kept")}
    assert kept == {str((image_dir / "b" / f"img{i:02d}.{'jpg' if i % 2 == 0 else 'png'}").resolve())
                    for i in range(6, 12)}
    assert err.count("\n") == 7


def test_prune_removes_a_file_whose_folder_became_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    make_image(1).save(folder / "a.png")
    with ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(tmp_path / "s.lookalike")) as index:
        index.add(folder / "a.png")
        (folder / "a.png").unlink()
        folder.rmdir()
        folder.write_text("now a file")  # photos/a.png: ENOTDIR, nothing can be there
        assert index.remove_missing() == [path_id(tmp_path / "photos" / "a.png")]


def test_a_nul_character_in_a_path_is_an_image_load_error(tmp_path: Path) -> None:
    name = str(tmp_path / "a\0b.png")
    with pytest.raises(ImageLoadError, match="NUL character"):
        read_image_bytes(name)
    with ImageSearchIndex(embedder=FakeEmbedder(), workers=2) as index:
        report = index.add_many([name])
        assert [(f.source, f.id) for f in report.failed] == [(name, None)]
        assert "NUL character" in report.failed[0].reason
        with pytest.raises(ImageLoadError, match="NUL character"):
            index.search(name)


# -- names that would split a one-line message ---------------------------------------
def test_a_newline_in_a_file_name_stays_on_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    make_image(1).save(folder / "ok.png")
    (folder / "bad\nname.jpg").write_bytes(b"not a jpeg")
    store = str(tmp_path / "s.lookalike")
    code, out, err = run(capsys, "index", str(folder), "--store", store, "--embedder", "fake", "-q")
    assert code == 3
    assert err.count("\n") == 1 and "'" + str(folder) + "/bad\\nname.jpg'" in err
    code, out, err = run(capsys, "search", str(folder / "bad\nname.jpg"), "--store", store)
    assert code == 1 and err.count("\n") == 1 and "bad\\nname.jpg" in err
    (folder / "ok\nto.png").write_bytes((folder / "ok.png").read_bytes())
    assert run(capsys, "index", str(folder), "--store", store, "-q")[0] == 3
    code, out, err = run(capsys, "search", str(folder / "ok.png"), "--store", store, "-k", "5")
    assert code == 0 and len(out.splitlines()) == 2 and "ok\\nto.png" in out


def test_nothing_here_hangs_on_an_unlistable_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    _fail_for(monkeypatch, "scandir", folder)
    store = tmp_path / "s.lookalike"
    code, out, err = run(capsys, "index", str(folder), "--store", str(store), "--embedder", "fake")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"lookalike: skipped {folder}: cannot list folder: permission denied",
        f"lookalike: error: no images found in {folder} (looked for .bmp, .gif, .jfif, .jpeg, .jpg, "
        ".pgm, .png, .ppm, .tif, .tiff, .webp)",
    ]
    assert not store.exists()  # nothing was written
