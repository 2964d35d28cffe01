"""``exact_pairs``, the exact self-join every store's ``similar_pairs`` is built on: in
blocks, over scattered positions, each pair once across the steps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lookalike.stores import _common
from lookalike.stores._common import exact_pairs, row_reader


@pytest.mark.parametrize("scattered", [False, True])
def test_steps_of_blocks_give_every_pair_once(monkeypatch: pytest.MonkeyPatch, scattered: bool) -> None:
    monkeypatch.setattr(_common, "SCORES_BLOCK_BYTES", 4 * 100 * 400)  # 100 queries x 400 later rows
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((1500, 8)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    positions = np.sort(rng.choice(1500, 700, replace=False)) if scattered else np.arange(1500)
    reads: list[int] = []
    reader = row_reader(matrix)

    def rows(p: np.ndarray) -> np.ndarray:
        reads.append(len(p))
        got = reader(p)
        assert np.shares_memory(got, matrix) == (not scattered)  # a run is a slice, no copy
        return got

    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(positions), 100):
        left, right, scores = exact_pairs(rows, positions, start, min(start + 100, len(positions)), 0.8)
        for a, b, s in zip(left.tolist(), right.tolist(), scores.tolist()):
            assert (a, b) not in found and a < b
            found[(a, b)] = s
    assert max(reads) == 400  # the later rows come in bounded blocks
    scores64 = matrix.astype(np.float64) @ matrix.T.astype(np.float64)
    want = {(int(a), int(b)) for a, b in itertools.combinations(positions, 2) if scores64[a, b] >= 0.8 + 1e-6}
    assert want and want <= set(found)
    assert all(scores64[a, b] >= 0.8 - 2e-5 and s == pytest.approx(scores64[a, b], abs=1e-5) for (a, b), s in found.items())
