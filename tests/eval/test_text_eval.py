"""``lookalike eval --text-queries`` (#17): text-to-image retrieval with the class names as
queries, run here with the tiny random CLIP model (the figures of pretrained weights are
measured with the command in docs/quality.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookalike import ImageSearchIndex, Text
from lookalike.cli import main
from lookalike.eval import evaluate
from lookalike.registry import make_embedder
from lookalike.stores import InMemoryStore

from .conftest import write_class_folders

pytest.importorskip("torch")
pytest.importorskip("open_clip", reason="the [clip] extra (open-clip-torch) is not installed")

NAME = "clip:lookalike-tiny-clip:none"


@pytest.fixture
def towhee_classes(tmp_path: Path) -> Path:
    """Towhee layout with class names that have underscores: train/ 3 per class, test/ 1."""
    root = tmp_path / "ds"
    write_class_folders(root / "train", {"red_fox": 1, "tabby_cat": 2, "sea_eel": 3}, 3)
    for label in ("red_fox", "tabby_cat", "sea_eel"):
        (root / "test" / label).mkdir(parents=True)
        (root / "train" / label / f"{label}_2.png").rename(root / "test" / label / f"{label}_2.png")
    return root


def test_text_queries_are_the_class_names_and_score_like_search(
    tiny_clip: str, towhee_classes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", str(towhee_classes), "--embedder", NAME, "--text-queries", "-k", "4", "--json", "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)["reports"][0]
    assert report["queries"] == 3 and report["gallery"] == 6
    rows = {row["query"]: row for row in report["rows"]}
    assert set(rows) == {"a photo of a red fox", "a photo of a tabby cat", "a photo of a sea eel"}
    # the same search through the facade gives the same ranking and the same figures
    with ImageSearchIndex(embedder=make_embedder(NAME, device="cpu"), store=InMemoryStore()) as index:
        index.add_many([p for p in (towhee_classes / "train").rglob("*.png")],
                       metadata=[{"label": p.parent.name} for p in (towhee_classes / "train").rglob("*.png")])
        for text, row in rows.items():
            hits = index.search(Text(text), k=4)
            assert [h.metadata["label"] for h in hits] == [h["label"] for h in row["hits"]]
            assert [h["relevant"] for h in row["hits"]] == [h.metadata["label"] == row["label"] for h in hits]
        again = evaluate(index, [(Text(t), r["label"]) for t, r in rows.items()], k=4)
    assert again.mhr == pytest.approx(report["mHR@4"]) and again.recall_at_1 == pytest.approx(report["recall@1"])


def test_text_queries_need_a_text_tower_and_a_template(
    towhee_classes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(towhee_classes), "--embedder", "fake", "--text-queries", "-q"]) == 1
    assert "cannot search by Text" in capsys.readouterr().err
    assert main(["eval", str(towhee_classes), "--embedder", "fake", "--text-queries", "-q",
                 "--text-template", "no placeholder"]) == 1
    assert "--text-template needs exactly one {}" in capsys.readouterr().err
