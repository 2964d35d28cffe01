"""lookalike.testing: the test kit in the wheel (fake embedder, images, store contract, plugin)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import ConfigurationError
from lookalike.testing import FakeEmbedder, InMemoryStore, make_image, make_images

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )


# -- importable without torch (and without pytest) ---------------------------------------------
def test_kit_works_without_torch_or_pytest(tmp_path: Path) -> None:
    result = _run_python(f"""
        import sys
        for name in ("torch", "torchvision", "pytest", "hypothesis"):
            sys.modules[name] = None  # importing any of them now fails
        from lookalike import ImageSearchIndex
        from lookalike.testing import FakeEmbedder, InMemoryStore, make_images
        paths = make_images({str(tmp_path)!r}, 4)
        index = ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore())
        index.add_many(paths)
        assert index.search(paths[2], k=1)[0].path == str(paths[2].resolve())
        try:
            from lookalike.testing import VectorStoreContract
        except ImportError as exc:
            print("contract needs:", exc)
        else:
            raise SystemExit("VectorStoreContract imported without pytest")
    """)
    assert result.returncode == 0, result.stderr
    assert "contract needs:" in result.stdout and "pytest" in result.stdout


def test_public_names_are_sorted_and_resolve() -> None:
    import lookalike.testing as kit

    assert list(kit.__all__) == sorted(kit.__all__)
    for name in kit.__all__:
        assert getattr(kit, name) is not None
    with pytest.raises(AttributeError, match="NoSuchThing"):
        kit.NoSuchThing  # noqa: B018
    from lookalike.embedders import FakeEmbedder as Fake
    from lookalike.stores import InMemoryStore as Memory

    assert kit.FakeEmbedder is Fake and kit.InMemoryStore is Memory


def test_plugin_module_loads_without_importing_lookalike_numpy_or_torch() -> None:
    """The pytest11 entry point is loaded by every pytest run: it must stay light."""
    result = _run_python("""
        import sys
        import _lookalike_pytest
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"lookalike", "numpy", "PIL", "torch"})
        print(heavy)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_pyproject_registers_the_plugin_entry_point() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {"lookalike": "_lookalike_pytest"}
    wheel = meta["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["force-include"] == {"src/_lookalike_pytest.py": "_lookalike_pytest.py"}


# -- images ------------------------------------------------------------------------------------
def test_make_image_is_deterministic_and_saves_by_suffix(tmp_path: Path) -> None:
    a, b = make_image(5), make_image(5)
    assert a.size == (96, 80) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert make_image(6).tobytes() != a.tobytes()
    assert make_image(1, (40, 30), mode="L").mode == "L"
    saved = make_image(7, path=tmp_path / "deep" / "x.png")
    with Image.open(tmp_path / "deep" / "x.png") as img:
        assert img.format == "PNG" and img.tobytes() == saved.tobytes()  # PNG is lossless


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda p: make_image(0, path=p / "x.tiff2"), "x.tiff2"),
        (lambda p: make_image(0, (8, 8)), "16x16"),
        (lambda p: make_images(p, -1), "n must be"),
        (lambda p: make_images(p, 2, ext="svg"), "svg"),
    ],
    ids=["unknown-suffix", "too-small", "negative-n", "unknown-ext"],
)
def test_make_image_refuses_bad_arguments(tmp_path: Path, call: object, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        call(tmp_path)  # type: ignore[operator]


def test_make_images_are_distinct_files_that_embed_apart(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "pics", 40)
    assert paths == sorted((tmp_path / "pics").iterdir())
    assert [p.name for p in paths[:2]] == ["img000.jpg", "img001.jpg"]
    images = []
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "JPEG"
            images.append(img.convert("RGB"))
    vectors = FakeEmbedder().embed(images)
    cosines = vectors @ vectors.T
    np.fill_diagonal(cosines, -1.0)
    assert cosines.max() < 0.9, "two generated images embed almost alike"
    assert make_images(tmp_path / "png", 2, ext=".PNG")[1].name == "img001.png"
    assert make_images(tmp_path / "none", 0) == []


def test_an_index_over_make_images_finds_each_image_first(tmp_path: Path) -> None:
    from lookalike import ImageSearchIndex

    paths = make_images(tmp_path, 12, seed=100)
    with ImageSearchIndex(embedder=FakeEmbedder(), store=InMemoryStore()) as index:
        assert index.add_many(paths).ok
        for path, hits in zip(paths, index.search_many(paths, k=2)):
            assert hits[0].path == str(path.resolve())
            assert hits[0].score > hits[1].score + 0.1


# -- VectorStoreContract on a user's store -----------------------------------------------------
GOOD_STORE = """
    import pytest
    from lookalike.testing import InMemoryStore, VectorStoreContract

    class MyStore(InMemoryStore):
        '''A user's store: here, ours under another name.'''

    class TestMyStore(VectorStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore()
"""

SLOPPY_STORE = '''
    import numpy as np
    import pytest
    from lookalike import ConfigurationError, Hit, SchemaMismatchError
    from lookalike.testing import VectorStoreContract

    class DictStore:
        """Keeps records in a dict; skips validation; a list in a filter is compared as a value."""

        def __init__(self):
            self.schema, self.rows = None, {}

        def _need(self):
            if self.schema is None:
                raise ConfigurationError("no schema yet: call create_schema first")

        def create_schema(self, schema):
            if self.schema is not None and schema != self.schema:
                raise SchemaMismatchError(f"store has {self.schema!r}, not {schema!r}")
            self.schema = schema

        def describe(self):
            return self.schema

        def upsert(self, records):
            self._need()
            for r in records:
                self.rows[r.id] = r

        def search(self, vectors, k, filter=None):
            self._need()
            out = []
            for q in np.atleast_2d(np.asarray(vectors, dtype=np.float32)):
                q = q / np.linalg.norm(q)
                rows = [r for r in self.rows.values()
                        if all(r.metadata.get(f) == v for f, v in (filter or {}).items())]
                scored = sorted(((float(r.vector @ q), r) for r in rows), key=lambda t: -t[0])
                out.append([Hit.from_metadata(r.id, s, r.metadata) for s, r in scored[:k]])
            return out

        def get(self, ids):
            self._need()
            return [self.rows[i] for i in dict.fromkeys(ids) if i in self.rows]

        def delete(self, ids):
            self._need()
            return sum(self.rows.pop(i, None) is not None for i in set(ids))

        def scan(self, batch_size=1000):
            self._need()
            rows = list(self.rows.values())
            for start in range(0, len(rows), batch_size):
                yield rows[start:start + batch_size]

        def count(self):
            return len(self.rows)

        def close(self):
            pass

    class TestDictStore(VectorStoreContract):
        @pytest.fixture
        def store(self):
            return DictStore()
'''


def _outcomes(reprec: pytest.HookRecorder) -> tuple[set[str], set[str]]:
    passed, skipped, failed = reprec.listoutcomes()
    return {r.nodeid.split("::", 1)[1] for r in passed}, {r.nodeid.split("::", 1)[1] for r in failed}


def test_a_users_store_passes_and_a_sloppy_one_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_good=GOOD_STORE, test_sloppy=SLOPPY_STORE)
    reprec = pytester.inline_run("-p", "no:cacheprovider")
    passed, failed = _outcomes(reprec)
    good_passed = {t for t in passed if t.startswith("TestMyStore::")}
    assert not {t for t in failed if t.startswith("TestMyStore::")}
    assert len(good_passed) == 115  # the whole contract, property tests on the one `store`
    assert "TestMyStore::test_similar_pairs_equal_brute_force[0.9]" in good_passed  # it has similar_pairs
    assert "TestMyStore::test_property_self_top1_sorted_and_length" in good_passed
    sloppy = {t.split("::", 1)[1] for t in failed if t.startswith("TestDictStore::")}
    assert {
        "test_filter_in_list",
        "test_search_validates_k[0]",
        "test_search_validates_k[1.5]",
        "test_search_with_nan_raises[nan]",
        "test_search_with_wrong_dim_raises",
        "test_invalid_records_are_refused[nan]",
        "test_invalid_records_are_refused[wrong-dim]",
        "test_duplicate_ids_in_one_upsert_are_refused",
        "test_filter_on_undeclared_field_raises",
        "test_same_misuse_same_error[k=0]",
        "test_unfilterable_values_are_refused_at_upsert[nul-in-string]",
    } <= sloppy, sorted(sloppy)
    assert "TestDictStore::test_upsert_replaces_by_id" in passed  # what it does do, it does right


def test_failures_tell_the_implementer_what_to_fix(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sloppy=SLOPPY_STORE)
    # a subprocess, as a user's run: the plugin has the contract's asserts rewritten by pytest
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "lookalike.testing.plugin",
        "-k", "test_search_validates_k or test_filter_in_list or wrong_dim_raises or refused_at_upsert and nul",
    )
    result.assert_outcomes(failed=10)
    result.stdout.fnmatch_lines([  # in the order of the tests in the class
        "*{'value': 'a\\x00b'} (nul-in-string) must raise lookalike.errors.ConfigurationError, but it "
        "raised nothing. No store can keep this value*lookalike.filters.value_problem*",
        "*search(k=0) must raise lookalike.errors.ConfigurationError, but it raised nothing*",
        "*search(k=1.5) must raise lookalike.errors.ConfigurationError; it raised builtins.TypeError*",
        "*a list in a filter means any of*",
        "*Extra items in the right set:*",  # pytest's own account of what differed
    ])


def test_contract_runs_fixed_examples_without_hypothesis(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("""
        import sys
        sys.modules["hypothesis"] = None  # as if hypothesis were not installed
        for name in [m for m in sys.modules if m.startswith("lookalike.testing.contract")]:
            del sys.modules[name]
    """)
    pytester.makepyfile(test_good=GOOD_STORE)
    # a subprocess: in this one hypothesis's plugin is loaded and has patched pytest
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-v")
    result.assert_outcomes(passed=111 + 5 + 12 + 4 + 13)  # the fixed examples of the 4 property tests
    result.stdout.fnmatch_lines([
        "*TestMyStore::test_property_self_top1_sorted_and_length[[]ex4[]] PASSED*",
        "*TestMyStore::test_property_ties_and_duplicates[[]ex11[]] PASSED*",
        "*TestMyStore::test_property_upserts_and_deletes_match_a_dict[[]ex3[]] PASSED*",
        "*TestMyStore::test_property_metadata_values_behave_like_the_reference[[]ex12[]] PASSED*",
    ])


def test_contract_without_a_store_fixture_says_what_to_write(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from lookalike.testing import VectorStoreContract

        class TestForgot(VectorStoreContract):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "test_create_schema_is_described")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a `store` fixture in your VectorStoreContract subclass*"])


# -- the pytest plugin ---------------------------------------------------------------------------
def test_plugin_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_index_and_images(lookalike_index, image_files):
            paths = sorted(image_files.iterdir())
            assert len(paths) == 8
            report = lookalike_index.add_many(paths)
            assert len(report.added) == 8 and lookalike_index.count() == 8
            assert lookalike_index.search(paths[3], k=1)[0].path == str(paths[3].resolve())

        def test_each_test_gets_a_fresh_index(lookalike_index):
            assert lookalike_index.count() == 0
            assert "FakeEmbedder" in repr(lookalike_index.embedder)
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "lookalike.testing.plugin")
    result.assert_outcomes(passed=2)


def test_plugin_fixture_names_do_not_clash_with_the_project_suite() -> None:
    import _lookalike_pytest

    ours = {"lookalike_index", "image_files"}
    assert ours <= set(vars(_lookalike_pytest))
    for conftest in ROOT.joinpath("tests").rglob("conftest.py"):
        text = conftest.read_text()
        assert not any(f"def {name}(" in text for name in ours), conftest
