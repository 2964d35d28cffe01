"""find_duplicates / duplicates_of (issue #19): grouping, thresholds, batching, report, CLI."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import ImageSearchIndex, Record, Schema
from lookalike.cli import main
from lookalike.duplicates import (
    CALIBRATED,
    FALLBACK_THRESHOLD,
    FIRST_K,
    DuplicateGroups,
    UncalibratedThresholdWarning,
    find_duplicates,
)
from lookalike.embedders import FakeEmbedder
from lookalike.eval.duplicates_report import render_html, write_html
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import SearchOnly, make_image

DIM = 32


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return out


def near(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly cosine ``cos`` to unit ``base``."""
    other = rng.standard_normal(base.shape[0])
    other -= (other @ base) * base
    other /= np.linalg.norm(other)
    return unit(cos * base + np.sqrt(1 - cos**2) * other)


def planted(rng: np.random.Generator, sizes: list[int], singles: int) -> tuple[list[Record], list[set[str]]]:
    """Groups of the given sizes (members at cosine 0.97 to their source) plus unrelated singles."""
    records: list[Record] = []
    groups: list[set[str]] = []
    for g, size in enumerate(sizes):
        base = unit(rng.standard_normal(DIM))
        ids = {f"g{g}m{m}" for m in range(size)}
        for m in range(size):
            vec = base if m == 0 else near(base, 0.97, rng)
            records.append(Record(f"g{g}m{m}", vec, {"path": f"/photos/g{g}m{m}.jpg", "label": "even" if g % 2 == 0 else "odd"}))
        groups.append(ids)
    for s in range(singles):
        records.append(Record(f"single{s}", unit(rng.standard_normal(DIM)), {"path": f"/photos/s{s}.jpg", "label": "even"}))
    return records, groups


def make_store(kind: str, tmp_path: Path, records: list[Record], identity: str = "test:v1") -> Any:
    """``kind``: "memory", "local" (both find pairs with ``similar_pairs``) or "searched"
    (an InMemoryStore seen without it)."""
    store = LocalStore(tmp_path / "s.lookalike") if kind == "local" else InMemoryStore()
    store.create_schema(Schema(DIM, identity))
    store.upsert(records)
    return SearchOnly(store) if kind == "searched" else store


@pytest.fixture(params=["memory", "local", "searched"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_planted_groups_are_found_exactly_once(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records, truth = planted(rng, [2, 3, 5, FIRST_K * 3], singles=60)  # one group beyond the first k
    store = make_store(kind, tmp_path, records)
    groups = find_duplicates(store, 0.9, batch_size=16)
    assert isinstance(groups, DuplicateGroups) and groups.threshold == 0.9
    assert sorted(map(len, groups), reverse=True) == [len(g) for g in groups]  # largest first
    assert sorted(({h.id for h in g} for g in groups), key=sorted) == sorted(truth, key=sorted)
    ids = [h.id for g in groups for h in g]
    assert len(ids) == len(set(ids))  # never in two groups
    for group in groups:
        vecs = {r.id: r.vector for r in store.get([h.id for h in group])}
        rep = group.representative
        assert rep.score == 1.0 and rep.path == f"/photos/{rep.id}.jpg"
        for hit in group.duplicates:
            assert hit.score == pytest.approx(float(vecs[hit.id] @ vecs[rep.id]), abs=1e-5)
        assert [h.score for h in group.duplicates] == sorted((h.score for h in group.duplicates), reverse=True)
        # the representative is the medoid: highest summed similarity to the group
        matrix = np.stack([vecs[h.id] for h in group])
        sums = matrix @ matrix.sum(axis=0)
        assert sums[0] == pytest.approx(sums.max(), abs=1e-5)
    store.close()


def test_chains_join_one_group_and_threshold_is_inclusive() -> None:
    rng = np.random.default_rng(1)
    a = unit(rng.standard_normal(DIM))
    b = near(a, 0.93, rng)
    # c at 0.93 to b but far from a: connected components put a, b, c together
    c = near(b, 0.93, rng)
    while float(c @ a) > 0.85:
        c = near(b, 0.93, rng)
    store = InMemoryStore()
    store.create_schema(Schema(DIM, "test:v1"))
    store.upsert([Record("a", a), Record("b", b), Record("c", c)])
    (group,) = find_duplicates(store, 0.93 - 1e-6)
    assert {h.id for h in group} == {"a", "b", "c"} and group.representative.id == "b"
    assert find_duplicates(store, 0.95) == []


def test_memory_is_bounded_by_the_batch(tmp_path: Path) -> None:
    """Every search and get asks for at most a batch of rows, also for a group larger than a batch."""
    rng = np.random.default_rng(2)
    records, truth = planted(rng, [2, 12], singles=20)
    inner = make_store("memory", tmp_path, records)
    asked: list[tuple[str, int]] = []

    class Spy(SearchOnly):
        def search(self, vectors: np.ndarray, k: int, filter: Any = None) -> Any:
            asked.append(("search", len(vectors)))
            return inner.search(vectors, k, filter)

        def get(self, ids: list[str]) -> Any:
            asked.append(("get", len(ids)))
            return inner.get(ids)

    small = find_duplicates(Spy(inner), 0.9, batch_size=5)  # type: ignore[arg-type]
    assert max(n for _, n in asked) <= 5 and any(w == "get" for w, _ in asked)
    assert [{h.id for h in g} for g in small] == [truth[1], truth[0]]
    whole = find_duplicates(inner, 0.9)
    assert [(g[0].id, {h.id: round(h.score, 5) for h in g}) for g in small] == [
        (g[0].id, {h.id: round(h.score, 5) for h in g}) for g in whole
    ]


def test_filter_limits_both_sides(kind: str, tmp_path: Path) -> None:
    records, truth = planted(np.random.default_rng(3), [2, 3, 4], singles=5)
    store = make_store(kind, tmp_path, records)
    groups = find_duplicates(store, 0.9, filter={"label": "odd"})
    assert [{h.id for h in g} for g in groups] == [truth[1]]
    assert all(h.metadata["label"] == "odd" for g in groups for h in g)
    store.close()


def test_default_threshold_is_the_calibrated_one_else_a_warning() -> None:
    identity, calibration = next(iter(CALIBRATED.items()))
    records, _ = planted(np.random.default_rng(4), [2], singles=3)
    store = InMemoryStore()
    store.create_schema(Schema(DIM, identity))
    store.upsert(records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_duplicates(store).threshold == calibration.threshold
    other = InMemoryStore()
    other.create_schema(Schema(DIM, "resnet50:unknown-weights"))
    other.upsert(records)
    with pytest.warns(UncalibratedThresholdWarning, match="resnet50:unknown-weights.*0.9"):
        assert find_duplicates(other).threshold == FALLBACK_THRESHOLD
    assert find_duplicates(InMemoryStore(), 0.5) == []  # no schema yet: nothing to group


def test_calibration_is_recorded_beside_the_model_identity() -> None:
    from lookalike.embedders import EfficientNetLite0Embedder

    identity = EfficientNetLite0Embedder().identity  # cheap: no weights load
    assert identity in CALIBRATED
    assert 0.5 < CALIBRATED[identity].threshold < 1.0 and "F1" in CALIBRATED[identity].measured


# -- with images, through the facade ---------------------------------------------------------
@pytest.fixture
def photo_index(tmp_path: Path) -> tuple[ImageSearchIndex, Path]:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(8):
        make_image(i, size=(160, 120)).save(root / f"p{i}.png")
    make_image(0, size=(160, 120)).resize((80, 60)).save(root / "p0-small.jpg", quality=80)
    make_image(3, size=(160, 120)).save(root / "p3-resaved.jpg", quality=40)
    index = ImageSearchIndex(FakeEmbedder(), LocalStore(tmp_path / "photos.lookalike"))
    index.add_many(sorted(root.iterdir()))
    return index, root


def test_facade_find_duplicates_and_duplicates_of(photo_index: tuple[ImageSearchIndex, Path], tmp_path: Path) -> None:
    index, root = photo_index
    groups = index.find_duplicates(0.95)
    assert sorted(sorted(Path(h.path or "").name for h in g) for g in groups) == [
        ["p0-small.jpg", "p0.png"], ["p3-resaved.jpg", "p3.png"]]
    # "do I already have this?" for a picture that is not stored
    query = tmp_path / "new.jpg"
    make_image(5, size=(160, 120)).resize((120, 90)).save(query, quality=70)
    found = index.duplicates_of(query, 0.95)
    assert [Path(h.path or "").name for h in found] == ["p5.png"]
    assert index.duplicates_of(make_image(99), 0.95) == []
    # a stored image: its own record is left out, its duplicate is not
    own = index.duplicates_of(root / "p3.png", 0.95)
    assert [Path(h.path or "").name for h in own] == ["p3-resaved.jpg"]
    index.close()


def test_html_report_and_notebook_display(photo_index: tuple[ImageSearchIndex, Path], tmp_path: Path) -> None:
    index, _ = photo_index
    groups = index.find_duplicates(0.95)
    page = render_html(groups)
    assert page.count('class="q"') == 2 and page.count("data:image/jpeg;base64,") == 4
    assert "keep" in page and "0.95" in page
    fragment = groups._repr_html_()
    assert fragment.startswith('<div class="lookalike-dupes">') and "<html" not in fragment
    assert fragment.count("data:image/jpeg;base64,") == 4
    out = write_html(groups, tmp_path / "d.html")
    assert out.read_text(encoding="utf-8") == page
    # every piece of text is escaped
    hostile = DuplicateGroups([type(groups[0])(groups[0])], threshold=0.9)
    from lookalike import Hit

    hostile[0][1] = Hit("x", 0.97, "/tmp/<script>alert(1)</script>.jpg")
    assert "<script>" not in render_html(hostile) and "&lt;script&gt;" in render_html(hostile)
    index.close()


# -- CLI -------------------------------------------------------------------------------------
def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_dupes_text_json_report(photo_index: tuple[ImageSearchIndex, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    index, root = photo_index
    store = str(index.store.path)  # type: ignore[attr-defined]
    index.close()
    code, out, err = run(capsys, "dupes", "--store", store, "--threshold", "0.95", "-q")
    assert code == 0, err
    assert "# group 1: 2 images" in out and "2 groups, 2 duplicates" in out and "keep" in out
    code, out, _ = run(capsys, "dupes", "--store", store, "--threshold", "0.95", "--json",
                       "--report", str(tmp_path / "r.html"))
    data = json.loads(out)
    assert code == 0 and data["threshold"] == 0.95 and [len(g) for g in data["groups"]] == [2, 2]
    assert (tmp_path / "r.html").read_text(encoding="utf-8").count('class="q"') == 2
    # no --threshold on a model without calibration: one warning line, the fallback used
    code, out, err = run(capsys, "dupes", "--store", store, "--json")
    assert code == 0 and json.loads(out)["threshold"] == FALLBACK_THRESHOLD
    assert err.count("lookalike: warning: no calibrated duplicate threshold") == 1
    code, out, _ = run(capsys, "dupes", "--store", store, "--threshold", "0.95", "--json",
                       "--filter", "path=" + str(root / "p0.png"))
    assert code == 0 and json.loads(out)["groups"] == []


def test_cli_summary_counts_in_the_singular_where_there_is_one(capsys: pytest.CaptureFixture[str]) -> None:
    from lookalike import Hit, duplicates_cli
    from lookalike.duplicates import DuplicateGroup, DuplicateGroups

    group = DuplicateGroup([Hit("a", 1.0, path="a.jpg"), Hit("b", 0.97, path="b.jpg")])
    duplicates_cli._print_text(DuplicateGroups([group], threshold=0.9), [("b", "b.jpg", "t/b.jpg")], False, 1)
    out = capsys.readouterr().out
    assert "1 group, 1 duplicate beyond the first of each group (threshold 0.900)" in out
    assert "would move (dry run; add --apply to move) 1 file:" in out


def test_cli_move_is_a_dry_run_unless_applied(photo_index: tuple[ImageSearchIndex, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    index, root = photo_index
    store = str(index.store.path)  # type: ignore[attr-defined]
    index.close()
    before = sorted(p.name for p in root.iterdir())
    trash = tmp_path / "trash"
    code, out, _ = run(capsys, "dupes", "--store", store, "--threshold", "0.95", "--move-to", str(trash), "-q")
    assert code == 0 and "would move (dry run; add --apply to move) 2 files" in out
    assert sorted(p.name for p in root.iterdir()) == before and not trash.exists()
    trash.mkdir()
    (trash / "p0-small.jpg").write_bytes(b"someone else's file")  # never overwritten
    code, out, err = run(capsys, "dupes", "--store", store, "--threshold", "0.95", "--move-to", str(trash),
                         "--apply", "--json")
    assert code == 0, err
    moves = json.loads(out)["moves"]
    kept = {Path(g[0]["path"]).name for g in json.loads(out)["groups"]}
    moved = {Path(m["from"]).name for m in moves}
    assert len(moves) == 2 and all(m["done"] for m in moves) and not kept & moved
    assert (trash / "p0-small.jpg").read_bytes() == b"someone else's file"
    assert sorted(p.name for p in trash.iterdir()) == sorted(["p0-small.jpg", *(Path(m["to"]).name for m in moves)])
    assert all(Path(m["to"]).is_file() and not Path(m["from"]).exists() for m in moves)
    assert kept <= {p.name for p in root.iterdir()}
    with LocalStore(store) as s:
        assert s.count() == 8  # the moved images' records are gone
    code, out, _ = run(capsys, "dupes", "--store", store, "--threshold", "0.95", "--json")
    assert json.loads(out)["groups"] == []


def test_every_pair_in_a_group_is_linked_by_a_chain() -> None:
    """Groups are exactly the connected components of the pairs at or above the threshold."""
    rng = np.random.default_rng(5)
    vecs = unit(rng.standard_normal((40, 6)))  # low dimension: many chance pairs and chains
    store = InMemoryStore()
    store.create_schema(Schema(6, "test:v1"))
    store.upsert([Record(str(i), v) for i, v in enumerate(vecs)])
    groups = find_duplicates(store, 0.8, batch_size=7)
    sims = vecs @ vecs.T
    parent = list(range(40))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in itertools.combinations(range(40), 2):
        if sims[i, j] >= 0.8:
            parent[root(i)] = root(j)
    comps: dict[int, set[str]] = {}
    for i in range(40):
        comps.setdefault(root(i), set()).add(str(i))
    expected = sorted((c for c in comps.values() if len(c) > 1), key=lambda c: sorted(c))
    assert sorted(({h.id for h in g} for g in groups), key=lambda c: sorted(c)) == expected


def find(parent: list[int], x: int) -> int:
    while parent[x] != x:
        x = parent[x]
    return x


def test_components_match_a_reference_union_find() -> None:
    """The numpy union-find labels every node with the smallest node of its component,
    also for long chains given in the worst order and for repeated and self edges."""
    from lookalike.duplicates import _components

    rng = np.random.default_rng(7)
    n = 400
    graphs = [
        (np.arange(n - 1, 0, -1), np.arange(n - 2, -1, -1)),  # one chain, from its far end
        (rng.permutation(n - 1) + 1, np.zeros(n - 1, dtype=np.intp)),  # one star
        (rng.integers(0, n, 300), rng.integers(0, n, 300)),  # random: many components, self edges
        (np.array([], dtype=np.intp), np.array([], dtype=np.intp)),
    ]
    chain = rng.permutation(n)  # a chain through the nodes in random order
    graphs.append((chain[:-1], chain[1:]))
    for left, right in graphs:
        parent = list(range(n))
        for a, b in zip(left.tolist(), right.tolist()):
            ra, rb = find(parent, a), find(parent, b)
            parent[max(ra, rb)] = min(ra, rb)
        expected = [min(y for y in range(n) if find(parent, y) == find(parent, x)) for x in range(n)]
        assert _components(left.astype(np.intp), right.astype(np.intp), n).tolist() == expected


def _counting_searches(inner: Any) -> tuple[Any, list[tuple[int, int]]]:
    """``inner`` behind a proxy that records each search's (queries, k)."""
    asked: list[tuple[int, int]] = []

    class Spy(SearchOnly):
        def search(self, vectors: np.ndarray, k: int, filter: Any = None) -> Any:
            asked.append((len(vectors), k))
            return inner.search(vectors, k, filter)

    return Spy(inner), asked


def test_only_images_whose_last_hit_qualifies_are_searched_again() -> None:
    """The first search asks FIRST_K hits for every image; further searches only for the
    images of groups larger than that, each time GROWTH times as many."""
    from lookalike.duplicates import GROWTH

    rng = np.random.default_rng(8)
    records, truth = planted(rng, [2, FIRST_K - 1, FIRST_K, FIRST_K * GROWTH + 3], singles=40)
    inner = make_store("memory", Path("."), records)
    spy, asked = _counting_searches(inner)
    groups = find_duplicates(spy, 0.9, batch_size=1000)
    assert sorted(({h.id for h in g} for g in groups), key=sorted) == sorted(truth, key=sorted)
    big = len(truth[3])
    assert asked == [(len(records), FIRST_K), (FIRST_K + big, FIRST_K * GROWTH),
                     (big, min(FIRST_K * GROWTH**2, len(records)))]  # never more than there are


def test_batches_start_with_the_k_the_previous_batch_needed() -> None:
    """Where every image has many duplicates, the batches after the first ask for enough
    hits at once instead of searching every row twice; the groups stay the same."""
    rng = np.random.default_rng(9)
    records, truth = planted(rng, [10] * 6, singles=0)
    inner = make_store("memory", Path("."), records)
    spy, asked = _counting_searches(inner)
    groups = find_duplicates(spy, 0.9, batch_size=20)
    assert sorted(({h.id for h in g} for g in groups), key=sorted) == sorted(truth, key=sorted)
    # first batch: 4 hits, all qualify, again with 32; 10 needed, so the next ones ask 16
    assert asked == [(20, FIRST_K), (20, FIRST_K * 8), (20, 16), (20, 16)]
    whole = find_duplicates(inner, 0.9)  # one batch
    assert [(g[0].id, {h.id: round(h.score, 5) for h in g}) for g in groups] == [
        (g[0].id, {h.id: round(h.score, 5) for h in g}) for g in whole]


def test_a_store_that_joins_itself_is_asked_for_its_pairs(tmp_path: Path) -> None:
    """find_duplicates takes a PairSearchStore's pairs (no search per record) and
    counts progress by the records each batch covered, filtered or not."""
    records, truth = planted(np.random.default_rng(12), [2, 3, 4], singles=30)
    inner = make_store("memory", tmp_path, records)
    seen: list[tuple[float, Any, int]] = []

    class Joined(SearchOnly):
        def search(self, *args: Any) -> Any:
            raise AssertionError("a store with similar_pairs is not searched record by record")

        def similar_pairs(self, threshold: float, filter: Any = None) -> Any:
            for batch in inner.similar_pairs(threshold, filter):
                seen.append((threshold, filter, batch.scanned))
                yield batch

    groups = find_duplicates(Joined(inner), 0.9, progress=True)
    assert sorted(({h.id for h in g} for g in groups), key=sorted) == sorted(truth, key=sorted)
    assert seen == [(0.9, None, len(records))]
    odd = find_duplicates(Joined(inner), 0.9, filter={"label": "odd"}, progress=True)
    assert [{h.id for h in g} for g in odd] == [truth[1]]
    assert seen[-1] == (0.9, {"label": "odd"}, 3)


def test_threshold_one_finds_exact_copies(kind: str, tmp_path: Path) -> None:
    """A vector's float32 product with its exact copy can come out just below 1.0: a
    threshold of 1.0 still finds every exact copy, and nothing else."""
    rng = np.random.default_rng(13)
    vectors = unit(rng.standard_normal((40, DIM)))
    records = [Record(f"a{i}", v) for i, v in enumerate(vectors)] + [Record(f"b{i}", v) for i, v in enumerate(vectors[:25])]
    records += [Record("near", near(vectors[30], 0.999, rng))]
    store = make_store(kind, tmp_path, records)
    groups = find_duplicates(store, 1.0)
    assert {frozenset(h.id for h in g) for g in groups} == {frozenset({f"a{i}", f"b{i}"}) for i in range(25)}
    assert len(groups) == 25
    store.close()
