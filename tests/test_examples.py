"""The examples and the notebook run, with the fake embedder standing in for the model."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

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


def test_notebook_cells_run_in_order(samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = json.loads((EXAMPLES / "notebook.ipynb").read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        source = source.replace('EMBEDDER = "efficientnet-lite0"', 'EMBEDDER = "fake"')
        source = source.replace("../samples", str(samples))
        exec(compile(source, "notebook", "exec"), namespace)
    hits = namespace["hits"]
    assert hits[0].path.endswith("chelsea.png")  # type: ignore[index,attr-defined]
