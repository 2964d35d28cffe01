"""Hostile metadata: values no store can keep, forged reserved fields, via the CLI and the API."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike import ConfigurationError, ImageSearchIndex, path_id
from lookalike.cli import main
from lookalike.embedders import FakeEmbedder
from lookalike.sources import Item
from lookalike.stores import LocalStore

from ..conftest import make_image


def test_csv_cell_with_a_nul_exits_1_naming_field_and_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    make_image(0, size=(40, 32)).save(tmp_path / "a.png")
    table = tmp_path / "labels.csv"
    table.write_bytes(b"path,label\na.png,x\x00y\n")
    store = tmp_path / "i.lookalike"
    code = main(["index", "--csv", str(table), "--store", str(store), "--embedder", "fake", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "'label'" in err and "a.png" in err and "NUL" in err
    with LocalStore(store) as s:
        assert s.describe() is None or s.count() == 0


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"label": "lone \udc80"}, "surrogate"),
        ({"label": 2**64}, "64-bit"),
        ({"label": -(2**63) - 1}, "64-bit"),
        ({"ratio": float("nan")}, "NaN"),
        ({"path": "/etc/passwd"}, "reserved"),
        ({"sha256": "0" * 64}, "reserved"),
    ],
)
def test_item_with_hostile_metadata_is_refused_and_nothing_is_stored(
    tmp_path: Path, metadata: dict[str, object], match: str
) -> None:
    make_image(1, size=(40, 32)).save(tmp_path / "b.png")
    with ImageSearchIndex(FakeEmbedder(dim=8), LocalStore(tmp_path / "i.lookalike"), workers=1) as index:
        with pytest.raises(ConfigurationError, match=match) as info:
            index.add_many([Item(tmp_path / "b.png", metadata=metadata)])
        assert "b.png" in str(info.value) and repr(next(iter(metadata))) in str(info.value)
        assert path_id(tmp_path / "b.png") not in index and index.count() == 0


def test_forged_path_cannot_redirect_a_record_to_another_file(tmp_path: Path) -> None:
    """What the page serves and what prune checks stay the indexed file's own path."""
    make_image(2, size=(40, 32)).save(tmp_path / "c.png")
    secret = tmp_path / "secret.txt"
    secret.write_text("not an image")
    with ImageSearchIndex(FakeEmbedder(dim=8), LocalStore(tmp_path / "i.lookalike"), workers=1) as index:
        rid = index.add(tmp_path / "c.png")
        for attempt in ({"metadata": {"path": str(secret)}}, {"drop": ["path"]}):
            with pytest.raises(ConfigurationError, match="'path'"):
                index.update(rid, **attempt)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="'path'"):
            index.add(tmp_path / "c.png", metadata={"path": str(secret)})
        assert index.get(rid).path == str((tmp_path / "c.png").resolve())
        assert index.remove_missing() == []
