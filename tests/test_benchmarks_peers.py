"""benchmarks/store_peers.py runs end to end in its quick mode with the systems CI has.

lookalike, faiss and usearch only (faiss and usearch come with the ``bench`` extra); the
peers that CI does not install (chromadb, LanceDB, sqlite-vec, hnswlib, Qdrant) live in
``benchmarks/requirements-peers.txt``. The figures are not checked, only that every column
is there with a sane value and that the ground truth is the exact answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "store_peers.py"
SYSTEMS = ("lookalike", "faiss", "usearch")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    pytest.importorskip("faiss")
    pytest.importorskip("usearch")
    tmp = tmp_path_factory.mktemp("peers")
    out, work = tmp / "peers.json", tmp / "work"
    done = _run(
        "--quick", "--n", "300", "--labels", "10", "--queries", "20", "--single", "12",
        "--filtered", "10", "--systems", ",".join(SYSTEMS), "--out", str(out),
        "--workdir", str(work), cwd=tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), work, done.stdout


def test_every_system_has_every_column_with_a_sane_value(
    quick: tuple[dict[str, Any], Path, str],
) -> None:
    report, _, stdout = quick
    assert report["config"]["n"] == 300 and report["config"]["rounds"] == 1
    assert set(report["systems"]) == set(SYSTEMS)
    assert report["cpu"]["cores"] >= 1
    for name, entry in report["systems"].items():
        s = entry["summary"]
        assert "errors" not in s, (name, s)
        assert s["insert_vec_per_s"] > 0 and s["insert_disk_mb"] > 0, name
        assert s["import_s"] >= 0 and s["cold_start_s"] > 0, name
        assert s["cold_start_s"] == pytest.approx(s["open_s"] + s["first_query_s"])
        assert 0 < s["single_p50_ms"] <= s["single_p99_ms"], name
        assert s["single_count"] == 12, name
        assert 0.0 <= s["recall_at_10"] <= 1.0 and s["recall_count"] == 20, name
        assert s["batched_qps"] > 0 and s["batched_count"] == 20, name
        assert s["serve_rss_mb"] > 0, name
        assert entry["rounds"][0]["insert"]["seconds"] > 0
        assert report["versions"][name], name
    look = report["systems"]["lookalike"]["summary"]
    assert look["recall_at_10"] >= 0.95  # 300 records: exact or as good as
    for name in ("lookalike", "faiss"):  # both answer a label filter
        s = report["systems"][name]["summary"]
        assert s["filtered_count"] == 10 and s["filtered_p50_ms"] > 0, name
        assert 0.0 <= s["filtered_recall_at_10"] <= 1.0 and s["filtered_labels_ok"], name
    assert look["filtered_recall_at_10"] == 1.0  # a filter never drops a match
    assert "filtered_p50_ms" not in report["systems"]["usearch"]["summary"]
    rows = report["table"].splitlines()
    assert len(rows) == 2 + len(SYSTEMS) and rows[-1] in stdout
    assert rows[2].startswith("| lookalike LocalStore") and "| - |" in rows[-1]  # usearch


def test_ground_truth_is_the_exact_answer(quick: tuple[dict[str, Any], Path, str]) -> None:
    _, work, _ = quick
    vectors, queries = np.load(work / "vectors.npy"), np.load(work / "queries.npy")
    assert vectors.shape == (300, 2048) and queries.shape == (20, 2048)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert not (queries @ vectors.T > 0.9999).any()  # held out: no query is stored
    scores = queries @ vectors.T
    truth = np.load(work / "truth.npy")
    for q, row in enumerate(truth):
        assert set(row) == set(np.argsort(-scores[q])[:10])
    ftruth = np.load(work / "truth_filtered.npy")  # query j asks for label c{j % 10}
    for j, row in enumerate(ftruth):
        ids = np.flatnonzero(np.arange(300) % 10 == j % 10)
        assert set(row) == set(ids[np.argsort(-scores[j, ids])[:10]])


def test_an_unknown_system_is_refused_before_any_work(tmp_path: Path) -> None:
    done = _run("--quick", "--systems", "lookalike,milvus", "--workdir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown system(s) milvus" in done.stderr
    assert not (tmp_path / "vectors.npy").exists()


def test_a_phase_reports_its_own_peak_rss_not_its_parents() -> None:
    # ru_maxrss would not do: a child started by vfork + exec inherits the parent's peak
    ballast = np.ones(256 * 2**20 // 8)  # 256 MB resident in this (the parent) process
    code = "import store_peers; print(store_peers.peak_rss_mb())"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=SCRIPT.parent, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert float(done.stdout) < 200, done.stdout  # numpy alone: about 30 MB
    assert ballast.sum() == len(ballast)


def test_ivf_list_sizes_and_codes_scanned_are_read_from_inside_a_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    faiss = pytest.importorskip("faiss")
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import store_peers

    rng = np.random.default_rng(0)
    data = rng.standard_normal((600, 16)).astype(np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 12, faiss.METRIC_INNER_PRODUCT)
    index.train(data)
    index.add(data)

    class Ann:  # an engine passing nprobe per search: the holder's nprobe counts
        def __init__(self) -> None:
            self.index, self.nprobe = index, 3

    store = type("Store", (), {})()
    store.mirror = {"ann": [Ann()]}
    queries = data[:5]
    got = store_peers.ivf_lists(store, queries)
    sizes = np.array([index.invlists.list_size(i) for i in range(12)])
    probed = index.quantizer.search(queries, 3)[1]
    assert got is not None and sizes.sum() == 600
    assert (got["nlist"], got["nprobe"], got["list_largest"]) == (12, 3, sizes.max())
    assert got["codes_per_query_mean"] == pytest.approx(sizes[probed].sum(1).mean())
    assert got["codes_per_query_max"] == sizes[probed].sum(1).max()
    assert store_peers.ivf_lists(type("Plain", (), {})(), queries) is None


def test_codes_scanned_follow_lookalikes_centred_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalStore's index files vectors by their centred direction, not by the raw
    quantizer search: the benchmark asks the index itself what its probes scan."""
    pytest.importorskip("faiss")
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import store_peers

    from lookalike.stores.local._ivf import IvfIndex

    rng = np.random.default_rng(1)
    data = (rng.standard_normal((800, 16)) + 4).astype(np.float32)  # a shared mean direction
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ann = IvfIndex.train(16, data, 800)
    ann.add(np.arange(1, 801, dtype=np.int64), data)
    got = store_peers.ivf_lists({"ann": ann}, data[:20])
    assert got is not None and got["nprobe"] == ann.nprobe
    assert got["codes_per_query_mean"] == pytest.approx(ann.codes_scanned(data[:20]).mean())


def test_a_system_that_fails_is_reported_and_the_run_exits_1(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    done = _run(
        "--quick", "--n", "50", "--queries", "5", "--systems", "lookalike", "--timeout", "0.01",
        "--out", str(out), "--workdir", str(tmp_path / "work"), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed: lookalike" in done.stderr
    report = json.loads(out.read_text())
    summary = report["systems"]["lookalike"]["summary"]
    assert summary["errors"] == ["timed out after 0 s"]
    assert "timed out after 0 s" in report["table"].splitlines()[-1]
