"""Names for stores and embedders, as the CLI and config use them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import ConfigurationError, registry
from lookalike.embedders import FakeEmbedder
from lookalike.registry import default_store_path, embedder_for_identity, make_embedder, open_store
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import make_image


def test_open_store_specs(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), InMemoryStore)
    assert isinstance(open_store("memory"), InMemoryStore)
    for spec in (str(tmp_path / "a.lookalike"), f"local:{tmp_path / 'b.lookalike'}", tmp_path / "c.lookalike"):
        store = open_store(spec)
        assert isinstance(store, LocalStore)
        store.close()
    assert sorted(p.name for p in tmp_path.glob("*.lookalike")) == ["a.lookalike", "b.lookalike", "c.lookalike"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [("s3://bucket/index", "unknown store URL"),
     ("tencent://host:8100/only-db", "DATABASE/COLLECTION"),
     ("tencent://root:secret@host:8100/db/coll", "TENCENT_VECTORDB_KEY")],
)
def test_bad_store_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        open_store(spec)
    assert "secret" not in str(info.value)


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "lookalike" / "index.lookalike"
    monkeypatch.setenv("LOOKALIKE_STORE", str(tmp_path / "mine.lookalike"))
    assert default_store_path() == tmp_path / "mine.lookalike"


def test_make_embedder_and_identity_round_trip() -> None:
    fake = make_embedder("fake", device="cpu", precision="fp32")
    assert isinstance(fake, FakeEmbedder) and fake.dim == 64
    other = FakeEmbedder(dim=12, seed=7)
    found = embedder_for_identity(other.identity)
    assert found is not None and found.identity == other.identity
    assert embedder_for_identity("someone-elses-model:v3") is None
    with pytest.raises(ConfigurationError, match="unknown embedder 'nope'"):
        make_embedder("nope")


def test_torch_embedders_round_trip_by_identity() -> None:
    pytest.importorskip("torchvision")
    names = ["resnet50", "resnet50-random", "torchvision:resnet18:none", "torchvision:resnet18:IMAGENET1K_V1"]
    for name in names:
        embedder = make_embedder(name, device="cpu")
        found = embedder_for_identity(embedder.identity, device="cpu")
        assert found is not None and found.identity == embedder.identity, name
    weights_file = embedder_for_identity(
        "torchvision:resnet50:file-sha256:0123456789abcdef:resize256-crop224-bilinear-imagenet-norm:penultimate-l2")
    assert weights_file is None  # needs the user's file: the CLI asks for --embedder


# -- one place to build an index (#15) -----------------------------------------------------------
def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from lookalike.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _parse(*argv: str) -> Any:
    from lookalike.cli import build_parser

    return build_parser().parse_args(list(argv))


def test_every_model_command_has_the_same_model_options_and_defaults() -> None:
    shared = ("device", "precision", "streams", "calibration")
    parsed = {"index": _parse("index", "photos"), "search": _parse("search", "q.jpg"),
              "serve": _parse("serve"), "eval": _parse("eval", "data")}
    for name, args in parsed.items():
        assert {key: getattr(args, key) for key in shared} == \
            {"device": "auto", "precision": "auto", "streams": None, "calibration": None}, name
    assert [parsed[n].runtime for n in ("index", "search", "serve")] == ["torch"] * 3
    assert parsed["eval"].runtime == []  # repeatable; none given means torch
    assert parsed["index"].batch_size is None and parsed["eval"].batch_size is None


@pytest.mark.parametrize("command", [["index", "photos"], ["search", "q.jpg"], ["serve"]])
def test_onnx_is_the_older_spelling_of_runtime(command: list[str]) -> None:
    assert _parse(*command, "--onnx", "int8").runtime == "onnx-int8"
    assert _parse(*command, "--runtime", "onnx-fp32").runtime == "onnx-fp32"


def test_eval_takes_onnx_as_one_more_runtime() -> None:
    args = _parse("eval", "data", "--runtime", "torch", "--onnx", "fp32", "--runtime", "onnx-int8")
    assert args.runtime == ["torch", "onnx-fp32", "onnx-int8"]


def test_stray_calibration_names_the_runtime_option_as_typed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, image_dir: Path
) -> None:
    store = str(tmp_path / "x.lookalike")
    code, _, err = _cli(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake",
                        "--runtime", "onnx-fp32", "--calibration", str(image_dir))
    assert code == 1 and "--calibration is only used with --runtime onnx-int8 (--onnx int8)" in err
    code, _, err = _cli(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake",
                        "--runtime", "onnx-fp32")
    assert code == 1 and "--onnx runs a torch model; 'fake:" in err
    assert not Path(store).exists()  # refused before a store file was made


@pytest.mark.parametrize("command", [["index", "photos"], ["eval", "data"]])
def test_batch_size_must_be_positive_on_every_command(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parse(*command, "--batch-size", "0")
    assert exit_info.value.code == 2
    assert "must be a positive whole number, got '0'" in capsys.readouterr().err


def test_eval_runs_the_model_with_the_shared_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lookalike.registry

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            make_image(i + (10 if label == "b" else 0)).save(tmp_path / "data" / label / f"{i}.png")
    options: list[dict[str, Any]] = []

    def spy(name: str, **kwargs: Any) -> Any:
        options.append(kwargs)
        return FakeEmbedder()

    monkeypatch.setattr(lookalike.registry, "make_embedder", spy)
    code, _, err = _cli(capsys, "eval", str(tmp_path / "data"), "--embedder", "fake", "-q",
                        "--streams", "3")
    assert code == 0, err
    assert options == [{"device": "auto", "precision": "auto", "streams": 3}]


def test_open_index_builds_the_stores_own_model_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.registry
    from lookalike.registry import open_index

    path = tmp_path / "x.lookalike"
    with pytest.raises(ConfigurationError, match="no index at"):
        open_index(path)
    with open_index(path, "fake", create=True) as index:
        index.add(make_image(1), id="one")
    with open_index(path) as index:  # the model that built the store
        assert index.embedder.identity == FakeEmbedder().identity
        assert [h.id for h in index.search(make_image(1), k=1)] == ["one"]
    built: list[str] = []
    monkeypatch.setattr(lookalike.registry, "make_embedder", lambda name, **kw: built.append(name))
    with open_index(path, model=False) as index:  # info, delete, check: no model is built
        assert index.schema is not None and index.schema.identity == FakeEmbedder().identity
        assert index.delete(["one", "two"]) == 1
        assert index.check() == []
    assert built == []
    memory = InMemoryStore()
    with open_index(memory, FakeEmbedder(dim=8), create=True, batch_size=4) as index:
        assert index.store is memory and index.embedder.dim == 8 and index.batch_size == 4


def test_info_and_delete_need_no_model_even_one_that_cannot_be_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A store built with the user's own weights file: reading and deleting go through the
    facade without building (or being able to build) that model."""
    from lookalike.stores import LocalStore
    from lookalike.types import Record, Schema

    path = tmp_path / "own.lookalike"
    identity = "torchvision:resnet50:file-abc123:resize256-crop224-imagenet:v1"
    store = LocalStore(path)
    store.create_schema(Schema(identity=identity, dim=3))
    store.upsert([Record("r1", np.array([1, 0, 0], np.float32)), Record("r2", np.array([0, 1, 0], np.float32))])
    store.close()
    code, out, err = _cli(capsys, "info", "--store", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["embedder"] == identity and json.loads(out)["count"] == 2
    code, out, err = _cli(capsys, "delete", "r1", "nope", "--store", str(path), "--json")
    assert code == 0, err
    assert json.loads(out) == {"requested": 2, "deleted": 1}
    code, out, err = _cli(capsys, "check", "--store", str(path), "--json")
    assert code == 0 and json.loads(out) == {"ok": True, "problems": []}


def test_check_on_a_store_without_an_integrity_check_fails_with_one_line(
    capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "check", "--store", "memory:")
    assert code == 1 and err.strip().startswith("lookalike: error: ") and "has no integrity check" in err


def test_commands_come_from_one_explicit_list() -> None:
    import argparse

    from lookalike.cli import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [name for name, _ in COMMANDS]
    assert [name for name, _ in COMMANDS] == ["index", "search", "info", "delete", "check", "copy", "dupes", "eval", "serve"]


def test_serve_does_not_import_the_cli() -> None:
    code = ("import argparse, sys, lookalike.serve, lookalike.eval.cli; "
            "sub = argparse.ArgumentParser().add_subparsers(); "
            "lookalike.serve.add_command(sub); lookalike.eval.cli.add_command(sub); "
            "assert 'lookalike.cli' not in sys.modules, 'cli imported'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


class _UrlStore(InMemoryStore):
    """A store of a scheme of its own, as a newcomer would add one."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> _UrlStore:
        store = cls()
        store.opened_as = (url, options)  # type: ignore[attr-defined]
        return store


def test_a_new_store_is_one_line_in_the_store_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.STORES, "mine", f"{__name__}:_UrlStore")
    store = registry.open_store("mine://host/db", timeout=3)
    assert isinstance(store, _UrlStore)
    assert store.opened_as == ("mine://host/db", {"timeout": 3})  # type: ignore[attr-defined]
    assert isinstance(registry.open_store("mine:x"), _UrlStore)
    with pytest.raises(ConfigurationError, match="unknown store URL 'other://x'"):
        registry.open_store("other://x")
    assert type(registry.open_store("memory")).__name__ == "InMemoryStore"
