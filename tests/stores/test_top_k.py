"""The exact top-k every store's search ends with: row-wise, vectorised, ties to the lower index."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike import Record, Schema
from lookalike.stores import InMemoryStore, LocalStore, _common
from lookalike.stores._common import top_k, top_k_rows


def reference(row: np.ndarray, k: int) -> list[int]:
    """The k best columns by (score descending, column ascending): a full stable sort."""
    return np.argsort(-row, kind="stable")[:k].tolist()  # type: ignore[no-any-return]


@pytest.mark.parametrize("n", [1, 7, 64, 65, 700, 3000])
@pytest.mark.parametrize("k", [1, 3, 8, 40, 5000])
def test_top_k_rows_is_the_sorted_prefix_with_ties_to_the_lower_index(n: int, k: int) -> None:
    rng = np.random.default_rng(n * 1000 + k)
    # few distinct values: ties everywhere, also at the k-th place
    scores = (rng.integers(-3, 4, size=(6, n)) / 4).astype(np.float32)
    scores[1] = rng.standard_normal(n).astype(np.float32)  # a row without ties
    scores[2, : n // 2] = -np.inf  # masked-out entries, as for filtered searches
    got = top_k_rows(scores, k)
    assert got.shape == (6, min(k, n))
    for row, best in zip(scores, got):
        assert best.tolist() == reference(row, k)
        assert top_k(row, k).tolist() == reference(row, k)


def test_top_k_rows_takes_the_block_bound_path_and_the_select_path() -> None:
    """Both ways of selecting give the same answer (k small next to n, and not)."""
    rng = np.random.default_rng(5)
    scores = (rng.standard_normal((50, 4096)) * 3).round().astype(np.float32)
    for k in (1, 4, 60, 600):
        expected = np.stack([reference(row, k) for row in scores])
        np.testing.assert_array_equal(top_k_rows(scores, k), expected)
        np.testing.assert_array_equal(_common._top_k_select(scores, k), expected)


def test_top_k_rows_of_no_columns_or_no_rows() -> None:
    assert top_k_rows(np.zeros((3, 0), dtype=np.float32), 4).shape == (3, 0)
    assert top_k_rows(np.zeros((0, 9), dtype=np.float32), 4).shape == (0, 4)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_exact_search_scores_queries_in_blocks_with_the_same_hits(
    kind: str, tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch larger than one block of scores gives the hits it gives in one block,
    unfiltered and filtered (few and many candidates), with deletions."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = InMemoryStore() if kind == "memory" else LocalStore(tmp_path / "s.lookalike", ann_threshold=None)  # type: ignore[operator]
    store.create_schema(Schema(16, "test:v1", fields=("label",)))
    labels = ["rare" if i % 10 == 0 else "common" for i in range(300)]
    store.upsert([Record(f"r{i:03d}", v, {"label": lab}) for i, (v, lab) in enumerate(zip(vectors, labels))])
    store.delete([f"r{i:03d}" for i in range(1, 300, 7)])
    queries = vectors[:70]

    def run() -> list[list[tuple[str, float]]]:
        out = []
        for flt in (None, {"label": "rare"}, {"label": "common"}):
            out += [[(h.id, round(h.score, 5)) for h in hits] for hits in store.search(queries, 9, flt)]
        return out

    whole = run()
    alive = [i for i in range(300) if i % 7 != 1]
    scores = vectors[alive] @ queries.T
    for j in range(len(queries)):  # unfiltered: the brute-force answer
        assert [h[0] for h in whole[j]] == [f"r{alive[c]:03d}" for c in reference(scores[:, j], 9)]
    monkeypatch.setattr(_common, "SCORES_BLOCK_BYTES", 1)  # 16 queries per block
    assert _common.rows_per_block(300) == 16
    assert run() == whole
    store.close()
