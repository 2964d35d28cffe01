"""Results you can see: SearchResults (grid, text, DataFrame), search arguments, AddReport
display, the content hash out of Hit.metadata, and notebook progress bars."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lookalike import (
    AddReport,
    ConfigurationError,
    Failure,
    Hit,
    ImageSearchIndex,
    MissingDependencyError,
    NotFoundError,
    sources,
)
from lookalike import display as display_module
from lookalike.display import SearchResults, clear_thumbnail_cache
from lookalike.embedders import FakeEmbedder
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import make_image

DATA_URI = re.compile(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"')
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(autouse=True)
def fresh_thumbnails() -> None:
    clear_thumbnail_cache()


@pytest.fixture
def index() -> ImageSearchIndex:
    return ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore())


@pytest.fixture
def labelled(index: ImageSearchIndex, image_dir: Path) -> ImageSearchIndex:
    files = list(sources.from_dir(image_dir))
    index.add_many(files, metadata=[{"label": "even" if i % 2 == 0 else "odd"} for i in range(len(files))])
    return index


def _thumbnail_sizes(markup: str) -> list[tuple[int, int]]:
    return [Image.open(io.BytesIO(base64.b64decode(data))).size for data in DATA_URI.findall(markup)]


def _count_thumbnails(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    made: list[object] = []
    real = display_module._make_thumbnail

    def counting(source: object) -> str:
        made.append(source)
        return real(source)

    monkeypatch.setattr(display_module, "_make_thumbnail", counting)
    return made


# -- the list type -------------------------------------------------------------------------------
def test_search_returns_a_list_of_hits_with_columns(labelled: ImageSearchIndex, image_dir: Path) -> None:
    query = next(iter(sources.from_dir(image_dir)))
    hits = labelled.search(query, k=5)
    assert isinstance(hits, SearchResults) and isinstance(hits, list)
    assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
    assert hits == list(hits) and list(hits) == hits  # == a plain list of the same hits
    assert hits[0] is list(hits)[0] and hits[-1] is list(hits)[4]
    assert [h.id for h in hits] == hits.ids
    assert [h.path for h in hits] == hits.paths
    assert [h.score for h in hits] == hits.scores
    assert hits.query == query
    top = hits[:2]
    assert isinstance(top, SearchResults) and top.query == query and top == list(hits)[:2]
    assert hits != hits[:4]


def test_search_many_returns_search_results_per_query(labelled: ImageSearchIndex, image_dir: Path) -> None:
    files = list(sources.from_dir(image_dir))[:3]
    results = labelled.search_many(files, k=2)
    assert len(results) == 3
    for query, hits in zip(files, results):
        assert isinstance(hits, SearchResults) and hits.query == query and len(hits) == 2
    empty = ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore())
    nothing = empty.search(files[0])
    assert isinstance(nothing, SearchResults) and nothing == [] and "0 hits" in repr(nothing)


# -- HTML grid -----------------------------------------------------------------------------------
def test_html_grid_shows_ten_thumbnails_with_rank_score_label_and_name(
    labelled: ImageSearchIndex, image_dir: Path
) -> None:
    query = next(iter(sources.from_dir(image_dir)))
    hits = labelled.search(query, k=10)
    markup = hits._repr_html_()
    sizes = _thumbnail_sizes(markup)
    assert len(sizes) == 11  # the query, then ten hits
    assert all(max(size) <= display_module.THUMBNAIL_SIZE for size in sizes)
    for rank, hit in enumerate(hits, 1):
        assert f"<b>#{rank}</b> {hit.score:.2f}" in markup
        assert Path(str(hit.path)).name in markup
    assert markup.index("<b>#1</b>") < markup.index("<b>#2</b>") < markup.index("<b>#10</b>")
    assert ">even<" in markup and ">odd<" in markup and "query" in markup
    # self-contained: no script, no server, no absolute paths or ids
    assert "<script" not in markup.lower() and "http" not in markup
    assert str(image_dir) not in markup
    assert not any(HEX32.search(part) for part in DATA_URI.split(markup)[::2])


def test_inline_styles_are_well_formed(labelled: ImageSearchIndex, image_dir: Path) -> None:
    hits = labelled.search(next(iter(sources.from_dir(image_dir))), k=3)
    report = AddReport(failed=[Failure("a.jpg", "file not found")], seconds=1.0)
    for markup in (hits._repr_html_(), report._repr_html_(), hits[0]._repr_html_()):
        styles = re.findall(r'style="([^"]*)"', markup)
        assert styles
        for style in styles:
            for declaration in filter(None, style.split(";")):
                name, value = declaration.split(":", 1)
                assert re.fullmatch(r"[a-z-]+", name) and ":" not in value, style


def test_thumbnails_are_made_lazily_and_cached(
    labelled: ImageSearchIndex, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _count_thumbnails(monkeypatch)
    query = next(iter(sources.from_dir(image_dir)))
    hits = labelled.search(query, k=12)
    repr(hits), hits.to_pandas(), hits.ids  # noqa: B018
    assert made == []  # nothing is drawn until a notebook asks for HTML
    first = hits._repr_html_()
    assert len(made) == 12  # twelve hits, each once (the query is the first hit's file)
    assert hits._repr_html_() == first and len(made) == 12  # the second render reuses them
    outside = labelled.search(make_image(50), k=3)._repr_html_()
    assert len(made) == 13 and len(DATA_URI.findall(outside)) == 4  # only the new query is made


def test_a_hundred_hits_render_once_each_at_most_max_tiles(
    index: ImageSearchIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        make_image(i, (640, 480)).save(tmp_path / f"p{i}.jpg")
    hits = [Hit(f"id{i}", 1 - i / 200, str(tmp_path / f"p{i % 3}.jpg"), {"label": "x"}) for i in range(150)]
    made = _count_thumbnails(monkeypatch)
    markup = SearchResults(hits, query=None)._repr_html_()
    assert len(DATA_URI.findall(markup)) == display_module.MAX_TILES == 100
    assert "and 50 more" in markup
    assert len(made) == 3  # one per distinct file: the rest come from the cache
    assert len(markup) < 100 * 8_000  # small inlined JPEGs


def test_large_jpegs_are_decoded_at_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jpg"
    make_image(4, (2400, 1600)).save(path, quality=85)
    decoded: list[tuple[int, int]] = []
    real = display_module._small_rgb

    def recording(img: Image.Image) -> Image.Image:
        decoded.append(img.size)
        return real(img)

    monkeypatch.setattr(display_module, "_small_rgb", recording)
    markup = SearchResults([Hit("a", 0.5, str(path))])._repr_html_()
    assert decoded == [(300, 200)]  # 1/8 scale straight from the JPEG, not 3.8 million pixels
    assert _thumbnail_sizes(markup) == [(128, 85)]


def test_gone_or_unreadable_images_show_a_placeholder(index: ImageSearchIndex, tmp_path: Path) -> None:
    good, gone, broken = tmp_path / "good.png", tmp_path / "gone.png", tmp_path / "broken.jpg"
    make_image(1).save(good)
    make_image(2).save(gone)
    make_image(3).save(broken)
    index.add_many([good, gone, broken])
    gone.unlink()
    broken.write_bytes(broken.read_bytes()[:40])
    (tmp_path / "folder.png").mkdir()
    hits = SearchResults(
        [*index.search(good, k=3),
         Hit("d", 0.1, str(tmp_path / "folder.png")),
         Hit("sha256-" + "a" * 32, 0.05, None)],
        query=good,
    )
    markup = hits._repr_html_()
    assert len(DATA_URI.findall(markup)) == 2  # the query and good.png
    for note in ("image missing", "cannot read", "not a file", "no file"):
        assert note in markup


def test_query_kinds_are_shown(labelled: ImageSearchIndex, image_dir: Path) -> None:
    path = next(iter(sources.from_dir(image_dir)))
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    for query in (str(path), path, path.read_bytes(), image):
        markup = labelled.search(query, k=2)._repr_html_()
        assert len(DATA_URI.findall(markup)) == 3, type(query)
    vector = labelled.get(labelled.search(path, k=1)[0].id).vector
    markup = labelled.search(vector, k=2)._repr_html_()
    assert len(DATA_URI.findall(markup)) == 2 and "a vector" in markup  # no picture for a vector
    assert image.size == make_image(0).size  # the caller's image is left as it was


def test_thumbnails_follow_exif_orientation_and_flatten_transparency(tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    make_image(1, (300, 200)).save(rotated, exif=exif)
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (200, 100), (255, 0, 0, 0)).save(clear)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.full((50, 80), 40000, dtype=np.uint16)).save(sixteen)
    palette = tmp_path / "palette.gif"
    make_image(2).convert("P").save(palette)
    hits = SearchResults([Hit(str(i), 0.5, str(p)) for i, p in enumerate([rotated, clear, sixteen, palette])])
    markup = hits._repr_html_()
    thumbs = [Image.open(io.BytesIO(base64.b64decode(d))) for d in DATA_URI.findall(markup)]
    assert [t.size for t in thumbs] == [(85, 128), (128, 64), (80, 50), (96, 80)]
    pixel = thumbs[1].convert("RGB").getpixel((10, 10))
    assert isinstance(pixel, tuple) and min(pixel) > 240  # transparent shows as white


# -- text ---------------------------------------------------------------------------------------
def test_text_repr_is_short_without_ids_or_absolute_paths(labelled: ImageSearchIndex, image_dir: Path) -> None:
    query = next(iter(sources.from_dir(image_dir)))
    hits = labelled.search(query, k=5)
    text = repr(hits)
    assert text == str(hits)
    lines = text.splitlines()
    assert lines[0] == f"5 hits for {query.name}:"
    assert len(lines) == 6
    for rank, (line, hit) in enumerate(zip(lines[1:], hits), 1):
        assert line.split() == [str(rank), f"{hit.score:.2f}", str(hit.metadata["label"]), Path(str(hit.path)).name]
    assert not HEX32.search(text) and str(image_dir) not in text


def test_text_repr_of_many_hits_and_of_hits_without_files() -> None:
    hits = SearchResults([Hit("sha256-" + "b" * 32, 0.9 - i / 100) for i in range(30)], query=b"xyz")
    lines = repr(hits).splitlines()
    assert lines[0] == "30 hits for <3 bytes>:"
    assert len(lines) == 1 + 20 + 1 and "and 10 more" in lines[-1] and "hits[20:]" in lines[-1]
    assert not HEX32.search(repr(hits)) and "sha256-bbbbbbbb" in lines[1]


# -- DataFrame ----------------------------------------------------------------------------------
def test_to_pandas_has_a_row_per_hit_with_every_metadata_field(index: ImageSearchIndex, image_dir: Path) -> None:
    pd = pytest.importorskip("pandas")
    files = list(sources.from_dir(image_dir))
    index.add_many(files[:3], metadata={"label": "a", "year": 2024})
    index.add_many(files[3:6], metadata={"label": "b", "camera": "x100"})
    hits = index.search(files[0], k=6)
    frame = hits.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:3]) == ["id", "score", "path"]
    assert set(frame.columns) == {"id", "score", "path", "label", "year", "camera"}
    assert list(frame.index) == [1, 2, 3, 4, 5, 6] and frame.index.name == "rank"
    assert list(frame["id"]) == hits.ids and list(frame["score"]) == hits.scores
    assert list(frame["path"]) == hits.paths
    assert "sha256" not in frame.columns
    first = frame.iloc[0]
    assert first["label"] == "a" and first["year"] == 2024 and pd.isna(first["camera"])
    clash = SearchResults([Hit("a", 0.5, "/x/a.jpg", {"id": "user", "path": "p"})]).to_pandas()
    assert list(clash.columns) == ["id", "score", "path", "metadata_id", "metadata_path"]
    assert clash.iloc[0]["id"] == "a" and clash.iloc[0]["metadata_id"] == "user"


def test_to_pandas_without_pandas_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install pandas"):
        SearchResults([Hit("a", 1.0)]).to_pandas()


def test_import_lookalike_stays_light() -> None:
    code = ("import sys, lookalike\n"
            "print(sorted(m for m in ('pandas', 'IPython', 'tqdm', 'PIL.Image') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- search arguments ---------------------------------------------------------------------------
def test_min_score_drops_weak_hits(labelled: ImageSearchIndex, image_dir: Path) -> None:
    query = next(iter(sources.from_dir(image_dir)))
    everything = labelled.search(query, k=12)
    cut = everything[5].score
    strong = labelled.search(query, k=12, min_score=cut)
    assert strong == [h for h in everything if h.score >= cut] and len(strong) >= 6
    assert labelled.search(query, k=12, min_score=1.5) == []


def test_exclude_leaves_ids_out_and_still_returns_k(labelled: ImageSearchIndex, image_dir: Path) -> None:
    query = next(iter(sources.from_dir(image_dir)))
    everything = labelled.search(query, k=12)
    skip = everything.ids[:3]
    hits = labelled.search(query, k=5, exclude=skip)
    assert hits == everything[3:8]
    assert labelled.search(query, k=5, exclude=skip[0]) == everything[1:6]  # one id
    assert labelled.search(query, k=5, exclude=everything[:2]) == everything[2:7]  # hits
    assert len(labelled.search(query, k=12, exclude=skip)) == 9  # the store holds no more
    assert labelled.search(query, k=3, exclude=["not-stored"]) == everything[:3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_score": "0.5"}, "min_score"),
        ({"min_score": float("nan")}, "min_score"),
        ({"min_score": True}, "min_score"),
        ({"exclude": 5}, "exclude"),
        ({"exclude": [b"id"]}, "exclude"),
        ({"exclude": b"id"}, "exclude"),
    ],
)
def test_bad_search_arguments(labelled: ImageSearchIndex, image_dir: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        labelled.search(next(iter(sources.from_dir(image_dir))), **kwargs)


def test_a_stored_hit_or_record_is_a_query_more_like_this(labelled: ImageSearchIndex, image_dir: Path) -> None:
    embedder = labelled.embedder
    assert isinstance(embedder, FakeEmbedder)
    query = next(iter(sources.from_dir(image_dir)))
    hits = labelled.search(query, k=12)
    seed = hits[3]
    embedded_before = embedder.images_embedded
    like = labelled.search(seed, k=5)
    assert embedder.images_embedded == embedded_before  # the stored vector, no embedding
    assert seed.id not in like.ids and len(like) == 5
    by_vector = labelled.search(labelled.get(seed.id).vector, k=6)
    assert like == [h for h in by_vector if h.id != seed.id][:5]
    record = labelled.get(seed.id)
    assert labelled.search(record, k=5) == like
    assert like.query is seed and "more like" in repr(like)
    many = labelled.search_many([seed, record, query], k=3)
    assert many[0].ids == many[1].ids == like.ids[:3] and seed.id not in many[0].ids
    assert many[2].ids == hits.ids[:3]  # an image query keeps its own file
    markup = like._repr_html_()
    assert len(DATA_URI.findall(markup)) == 6  # the seed's picture as the query, and five hits


def test_a_hit_that_is_gone_is_not_found(labelled: ImageSearchIndex, image_dir: Path) -> None:
    hit = labelled.search(next(iter(sources.from_dir(image_dir))), k=1)[0]
    labelled.delete(hit.id)
    with pytest.raises(NotFoundError, match="no longer"):
        labelled.search(hit)


# -- content hash ------------------------------------------------------------------------------
def test_hit_metadata_has_only_user_fields(tmp_path: Path, image_dir: Path) -> None:
    files = list(sources.from_dir(image_dir))[:4]
    with ImageSearchIndex(embedder=FakeEmbedder(), store=LocalStore(tmp_path / "s.lookalike")) as index:
        index.add_many(files, metadata={"label": "x"})
        hit = index.search(files[0], k=1)[0]
        assert dict(hit.metadata) == {"label": "x"}
        stored = index.get(hit.id)
        assert hit.content_hash == stored.metadata["sha256"] and len(hit.content_hash) == 64
        again = index.add_many(files, metadata={"label": "x"})  # the stored hash still skips
        assert len(again.unchanged) == 4 and again.embedded == 0


def test_cli_search_json_has_no_content_hash(tmp_path: Path, image_dir: Path) -> None:
    store = str(tmp_path / "cli.lookalike")
    run = [sys.executable, "-m", "lookalike"]
    subprocess.run([*run, "index", str(image_dir), "--store", store, "--embedder", "fake", "-q"], check=True)
    query = next(iter(sources.from_dir(image_dir)))
    out = subprocess.run([*run, "search", str(query), "--store", store, "-k", "2", "--json"],
                         check=True, capture_output=True, text=True).stdout
    hits = json.loads(out)["hits"]
    assert len(hits) == 2 and all("sha256" not in h["metadata"] for h in hits)
    assert "sha256" not in out


# -- AddReport ---------------------------------------------------------------------------------
def test_add_report_repr_is_compact() -> None:
    report = AddReport(added=[f"{i:032x}" for i in range(1000)], updated=["u"], unchanged=["n"] * 5,
                       failed=[Failure(f"bad{i}.jpg", "not an image", None) for i in range(8)],
                       seconds=4.0, embedded=1001)
    text = repr(report)
    lines = text.splitlines()
    assert lines[0] == "AddReport: added 1000, updated 1, unchanged 5, failed 8 in 4.0s, 250.2 img/s"
    assert lines[1:6] == [f"  bad{i}.jpg: not an image" for i in range(5)]
    assert lines[6] == "  ... and 3 more (report.failed lists them all)" and len(lines) == 7
    assert not HEX32.search(text)


def test_add_report_html_lists_failures_escaped() -> None:
    failed = [Failure(f"<b>{i}</b>.jpg", "file not found") for i in range(60)]
    markup = AddReport(added=["a"], failed=failed, seconds=1.0, embedded=1)._repr_html_()
    assert "<table" in markup and markup.count("<tr>") == 1 + 50
    assert "&lt;b&gt;0&lt;/b&gt;.jpg" in markup and "<b>0</b>" not in markup
    assert "and 10 more" in markup
    assert "<table" not in AddReport(added=["a"], seconds=1.0)._repr_html_()


def test_metadata_only_update_reports_no_embedding_rate(index: ImageSearchIndex, image_dir: Path) -> None:
    files = list(sources.from_dir(image_dir))
    first = index.add_many(files)
    assert first.embedded == len(files) and "img/s" in str(first)
    second = index.add_many(files, metadata={"label": "new"})
    assert len(second.updated) == len(files) and second.embedded == 0
    assert second.rate is None and "img/s" not in str(second)
    assert "metadata only (nothing embedded)" in str(second)
    make_image(99).save(files[0])  # one file changed, the rest only get a label
    third = index.add_many(files, metadata={"label": "newer"})
    assert third.embedded == 1 and "1 embedded at" in str(third)


# -- progress ----------------------------------------------------------------------------------
def test_text_bar_in_a_notebook_without_widgets_agrees_with_the_report(
    index: ImageSearchIndex, image_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(display_module, "_in_notebook", lambda: True)
    monkeypatch.setattr(display_module, "_has_widgets", lambda: False)
    report = index.add_many(sources.from_dir(image_dir), progress=True)  # warnings are errors here
    out, err = capsys.readouterr()
    assert err == ""  # stdout, not the notebook's pink stderr box
    final = out.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("indexing: 100%") and "12/12" in final
    assert report.rate is not None and final.endswith(f", {report.rate:.1f} img/s]")


def test_bar_kinds() -> None:
    from tqdm.notebook import tqdm as notebook_tqdm
    from tqdm.std import tqdm as text_tqdm

    assert display_module._bar_class() == (text_tqdm, sys.stderr)  # not in a notebook
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(display_module, "_in_notebook", lambda: True)
        mp.setattr(display_module, "_has_widgets", lambda: True)
        assert display_module._bar_class() == (notebook_tqdm, None)
        mp.setattr(display_module, "_has_widgets", lambda: False)
        assert display_module._bar_class() == (text_tqdm, sys.stdout)


def test_bar_outside_notebooks_goes_to_stderr_for_unknown_totals(
    index: ImageSearchIndex, image_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = index.add_many(iter(list(sources.from_dir(image_dir))), progress=True)
    out, err = capsys.readouterr()
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert out == "" and final.startswith("indexing: 12 img [")
    assert report.rate is not None and final.endswith(f", {report.rate:.1f} img/s]")


def test_evaluation_bar_in_a_notebook_without_widgets_is_text_on_stdout(
    labelled: ImageSearchIndex, image_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lookalike.eval import evaluate

    monkeypatch.setattr(display_module, "_in_notebook", lambda: True)
    monkeypatch.setattr(display_module, "_has_widgets", lambda: False)
    files = list(sources.from_dir(image_dir))[:4]
    evaluate(labelled, [(f, "even" if i % 2 == 0 else "odd") for i, f in enumerate(files)], k=3, progress=True)
    out, err = capsys.readouterr()
    assert err == "" and "queries: 100%" in out and "4/4" in out
