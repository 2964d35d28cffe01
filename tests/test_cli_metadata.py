"""Metadata rules in the CLI: ``index --meta/--csv/--replace-meta`` and ``copy --replace-meta``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lookalike import path_id
from lookalike.cli import main
from lookalike.stores import LocalStore

from .conftest import make_image


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else out, err


def images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        make_image(i, size=(40, 32)).save(folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def fields(store: str, path: Path) -> dict[str, Any]:
    with LocalStore(store) as s:
        return {k: v for k, v in s.get([path_id(path)])[0].metadata.items() if k not in ("path", "sha256")}


def test_index_again_without_meta_keeps_labels(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    paths = images(tmp_path / "photos", 3)
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"photos/{p.name},cat\n" for p in paths))
    store = str(tmp_path / "i.lookalike")
    code, summary, err = run(capsys, "index", "--csv", str(tmp_path / "labels.csv"), "--store", store,
                             "--embedder", "fake")
    assert code == 0 and summary["added"] == 3, err
    code, summary, err = run(capsys, "index", str(tmp_path / "photos"), "--store", store)
    assert code == 0 and summary["unchanged"] == 3 and summary["updated"] == 0, err
    code, hits, _ = run(capsys, "search", str(paths[0]), "--store", store, "--filter", "label=cat")
    assert code == 0 and len(hits["hits"]) == 3
    # --meta adds a field and keeps the label; the same again is unchanged
    code, summary, _ = run(capsys, "index", str(tmp_path / "photos"), "--store", store, "--meta", "trip=rome")
    assert summary["updated"] == 3 and fields(store, paths[1]) == {"label": "cat", "trip": "rome"}
    code, summary, _ = run(capsys, "index", str(tmp_path / "photos"), "--store", store, "--meta", "trip=rome")
    assert summary["unchanged"] == 3
    # --replace-meta: exactly what this run gives
    code, summary, _ = run(capsys, "index", str(tmp_path / "photos"), "--store", store, "--replace-meta",
                           "--meta", "trip=oslo")
    assert summary["updated"] == 3 and fields(store, paths[2]) == {"trip": "oslo"}
    # one run with the CSV and the folder: the folder's mention keeps the CSV's labels
    code, summary, _ = run(capsys, "index", "--csv", str(tmp_path / "labels.csv"), str(tmp_path / "photos"),
                           "--store", store, "--batch-size", "1")
    assert code == 0 and fields(store, paths[0]) == {"label": "cat", "trip": "oslo"}


@pytest.mark.parametrize("pair", ["path=/etc/passwd", "sha256=abc"])
def test_index_meta_with_a_reserved_field_exits_1_before_writing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pair: str
) -> None:
    images(tmp_path / "photos", 2)
    store = tmp_path / "i.lookalike"
    code, _, err = run(capsys, "index", str(tmp_path / "photos"), "--store", str(store), "--embedder", "fake",
                       "--meta", pair)
    assert code == 1
    assert err.count("\n") == 1 and f"{pair.split('=')[0]!r}" in err and "reserved" in err
    if store.exists():
        with LocalStore(store) as s:
            assert s.describe() is None or s.count() == 0


def test_index_csv_with_a_path_column_beside_the_file_column_exits_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from lookalike import sources

    images(tmp_path / "photos", 1)
    table = tmp_path / "t.csv"
    table.write_text("path,label\nphotos/img0.png,cat\n")
    assert len(list(sources.from_csv(table))) == 1  # the file column itself is fine
    table.write_text("path,label,sha256\nphotos/img0.png,cat,x\n")
    code, _, err = run(capsys, "index", "--csv", str(table), "--store", str(tmp_path / "i.lookalike"),
                       "--embedder", "fake")
    assert code == 1 and "'sha256'" in err and "t.csv" in err


def test_copy_merges_unless_replace_meta(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    paths = images(tmp_path / "photos", 2)
    source, target = str(tmp_path / "src.lookalike"), str(tmp_path / "dst.lookalike")
    assert run(capsys, "index", str(tmp_path / "photos"), "--store", source, "--embedder", "fake",
               "--meta", "label=src")[0] == 0
    assert run(capsys, "index", str(tmp_path / "photos"), "--store", target, "--embedder", "fake",
               "--meta", "label=dst", "--meta", "note=target")[0] == 0
    code, summary, _ = run(capsys, "copy", "--from", source, "--to", target)
    assert code == 0 and summary["copied"] == 2
    assert fields(target, paths[0]) == {"label": "src", "note": "target"}
    code, summary, _ = run(capsys, "copy", "--from", source, "--to", target, "--replace-meta")
    assert code == 0 and fields(target, paths[0]) == {"label": "src"}
