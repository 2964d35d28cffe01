"""``lookalike index --engine``: the options that only apply with ``--engine ray`` and URL
sources, checked before any cluster, model or store (no Ray needed; the runs themselves are
in ``test_ray_engine.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.cli import build_parser, main


@pytest.mark.parametrize("option", [["--workers", "2"], ["--gpus-per-worker", "1"], ["--ray-address", "auto"]])
def test_ray_options_without_the_ray_engine_are_refused(option: list[str], image_files: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.lookalike"
    assert main(["index", str(image_files), "--store", str(store), "--embedder", "fake", *option]) == 1
    assert f"{option[0]} only applies with --engine ray" in capsys.readouterr().err
    assert not store.exists()


def test_two_ray_options_without_the_ray_engine_are_named_together(image_files: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.lookalike"
    assert main(["index", str(image_files), "--store", str(store), "--embedder", "fake", "--workers", "2",
                 "--gpus-per-worker", "1"]) == 1
    assert "--gpus-per-worker and --workers only apply with --engine ray" in capsys.readouterr().err


def test_a_url_without_the_ray_engine_says_which_engine_reads_it(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "s3://bucket/photos/", "--store", str(tmp_path / "s"), "--embedder", "fake"]) == 1
    err = capsys.readouterr().err
    assert "does not fetch URLs" in err and "--engine ray" in err


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--gpus-per-worker", "-1"], ["--gpus-per-worker", "x"],
                                  ["--engine", "spark"]])
def test_bad_engine_values_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["index", "photos", *argv])
    assert exc.value.code == 2


def test_engine_options_parse() -> None:
    args = build_parser().parse_args(["index", "photos", "--engine", "ray", "--ray-address", "ray://head:10001",
                                      "--workers", "4", "--gpus-per-worker", "0.5"])
    assert (args.engine, args.ray_address, args.workers, args.gpus_per_worker) == ("ray", "ray://head:10001", 4, 0.5)
