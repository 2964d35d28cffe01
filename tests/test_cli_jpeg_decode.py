"""``--jpeg-decode cpu|gpu|auto``: the torch embedders' ``decode=`` on the command line
(issue #20). No GPU here: the wiring, and the clear errors where it cannot apply. The GPU
path itself is tested in ``tests/embedders/test_gpu_decode.py`` (CPU twin) and ``test_cuda.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lookalike.cli import build_parser, main
from lookalike.stores import LocalStore

#: a small torch model with seeded random weights (nothing to download), run in fp32 so
#: that no precision is timed
TORCH_MODEL = ["--embedder", "torchvision:mobilenet_v3_small:none", "--precision", "fp32"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lookalike: error: "), err
    return lines[0]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch sees no CUDA device, as on this machine (the tests mean the same on a GPU box)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every index the commands build (to look at its embedder)."""
    import lookalike.registry
    from lookalike import ImageSearchIndex as real

    indexes: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        indexes.append(real(*args, **kwargs))
        return indexes[-1]

    monkeypatch.setattr(lookalike.registry, "ImageSearchIndex", spy)
    return indexes


def vectors(path: Path) -> dict[str, list[float]]:
    with LocalStore(path) as store:
        return {r.id: r.vector.tolist() for batch in store.scan() for r in batch}


@pytest.mark.parametrize("command", ["index", "search", "serve", "eval"])
def test_every_model_command_takes_it_and_defaults_to_cpu(command: str) -> None:
    parser = build_parser()
    first = ["x"] if command in ("index", "eval") else []
    assert parser.parse_args([command, *first]).jpeg_decode == "cpu"  # as the Python default
    for value in ("cpu", "gpu", "auto"):
        assert parser.parse_args([command, *first, "--jpeg-decode", value]).jpeg_decode == value


def test_an_unknown_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["index", "photos", "--jpeg-decode", "nvjpeg"])
    assert exc.value.code == 2 and "invalid choice: 'nvjpeg'" in capsys.readouterr().err


def test_index_with_auto_on_a_cpu_runs_the_pillow_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       image_dir: Path, no_cuda: None, built: list[Any]) -> None:
    stores = {}
    for decode in ("auto", "cpu"):
        stores[decode] = tmp_path / f"{decode}.lookalike"
        code, out, err = run(capsys, "index", str(image_dir), "--store", str(stores[decode]), *TORCH_MODEL,
                             "--jpeg-decode", decode, "--json")
        assert code == 0, err
        assert json.loads(out)["added"] == 12
        embedder = built[-1].embedder
        assert embedder._decode == decode  # passed through the registry to the torch embedder
        assert embedder.device.type == "cpu" and embedder.jpeg_decoder is None  # auto: no GPU, so Pillow
    assert vectors(stores["auto"]) == vectors(stores["cpu"])


def test_gpu_with_device_cpu_is_one_error_line_before_any_store(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path, image_dir: Path) -> None:
    store = tmp_path / "s.lookalike"
    for embedder in ([], TORCH_MODEL):  # the store's default model, or a named one
        code, _, err = run(capsys, "index", str(image_dir), "--store", str(store), *embedder,
                           "--device", "cpu", "--jpeg-decode", "gpu")
        assert code == 1  # like the other model options' mistakes (--onnx fp32 --device cuda...)
        line = one_error_line(err)
        assert "--jpeg-decode gpu cannot run: the model runs on the CPU (--device cpu)" in line
        assert "needs a CUDA device" in line
        assert not store.exists()


def test_gpu_without_cuda_is_refused_before_the_first_image(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                            image_dir: Path, no_cuda: None,
                                                            built: list[Any]) -> None:
    store = tmp_path / "s.lookalike"
    code, _, err = run(capsys, "index", str(image_dir), "--store", str(store), *TORCH_MODEL, "--jpeg-decode", "gpu")
    assert code == 1
    assert "--jpeg-decode gpu cannot run: the model runs on the CPU (CUDA is not available)" in one_error_line(err)
    assert not store.exists() and built == []  # refused before any model or store
    code, _, err = run(capsys, "index", str(image_dir), "--store", str(store), "--jpeg-decode", "gpu")
    assert code == 1 and "CUDA is not available" in one_error_line(err)  # the default model
    assert not store.exists()


def test_the_python_api_gives_the_same_reason(no_cuda: None) -> None:
    from lookalike import ConfigurationError
    from lookalike.registry import make_model

    with pytest.raises(ConfigurationError, match="needs a CUDA device"):
        make_model("torchvision:mobilenet_v3_small:none", device="cpu", jpeg_decode="gpu")
    emb = make_model("torchvision:mobilenet_v3_small:none", device="cpu", precision="fp32", jpeg_decode="auto")
    assert emb._decode == "auto"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="unknown --jpeg-decode 'nvjpeg'"):
        make_model("fake", jpeg_decode="nvjpeg")


@pytest.mark.parametrize(("extra", "match"), [
    (["--onnx", "fp32"], "--jpeg-decode gpu needs --runtime torch on CUDA; --onnx fp32 runs on the CPU"),
    (["--runtime", "onnx-int8", "--calibration", "x"],
     "--jpeg-decode gpu needs --runtime torch on CUDA; --runtime onnx-int8 runs on the CPU"),
    (["--embedder", "fake", "--device", "cuda"],
     "--jpeg-decode gpu runs a torch model on CUDA; 'fake:v1"),
    (["--engine", "ray"], "--jpeg-decode gpu does not apply with --engine ray"),
])
def test_gpu_where_it_cannot_apply(capsys: pytest.CaptureFixture[str], tmp_path: Path, image_dir: Path,
                                   extra: list[str], match: str) -> None:
    store = tmp_path / "s.lookalike"
    code, _, err = run(capsys, "index", str(image_dir), "--store", str(store), *extra, "--jpeg-decode", "gpu")
    assert code == 1 and match in one_error_line(err)
    assert not store.exists()


def test_search_refuses_it_with_onnx_in_the_spelling_typed(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                           image_dir: Path) -> None:
    store = tmp_path / "s.lookalike"
    assert main(["index", str(image_dir), "--store", str(store), "--embedder", "fake", "-q"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "search", str(image_dir / "a" / "img00.jpg"), "--store", str(store),
                       "--runtime", "onnx-fp32", "--jpeg-decode", "gpu")
    assert code == 1 and "--runtime onnx-fp32 runs on the CPU" in one_error_line(err)


def test_gpu_with_a_store_the_fake_built_is_refused_too(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        image_dir: Path) -> None:
    store = str(tmp_path / "s.lookalike")
    assert main(["index", str(image_dir / "a"), "--store", store, "--embedder", "fake", "-q"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "index", str(image_dir), "--store", store, "--device", "cuda", "--jpeg-decode", "gpu")
    assert code == 1 and "--jpeg-decode gpu runs a torch model on CUDA; 'fake:v1" in one_error_line(err)
    with LocalStore(store) as opened:
        assert opened.count() == 6  # nothing added


def test_auto_and_cpu_leave_other_embedders_alone(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  image_dir: Path) -> None:
    for decode in ("auto", "cpu"):  # auto: the GPU where it can run; the fake has no model to run there
        code, out, err = run(capsys, "index", str(image_dir), "--store", str(tmp_path / f"{decode}.lookalike"),
                             "--embedder", "fake", "--jpeg-decode", decode, "--json")
        assert code == 0 and json.loads(out)["added"] == 12, err


def test_eval_refuses_gpu_with_an_onnx_row_before_the_first_row(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    code, _, err = run(capsys, "eval", str(tmp_path / "no-such-data-set"), "--runtime", "torch",
                       "--runtime", "onnx-fp32", "--jpeg-decode", "gpu")
    assert code == 1 and "--runtime onnx-fp32 runs on the CPU" in one_error_line(err)


def test_eval_passes_it_to_each_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.eval.cli as eval_cli
    from lookalike import ConfigurationError

    asked: list[dict[str, Any]] = []

    def make_model(name: str, **options: Any) -> Any:
        asked.append(options)
        raise ConfigurationError("stop here")

    monkeypatch.setattr(eval_cli, "make_model", make_model)
    monkeypatch.setattr(eval_cli, "load_dataset", lambda *a, **k: _NoData())
    assert main(["eval", "data", "--embedder", "fake", "--jpeg-decode", "auto", "-q"]) == 1
    assert asked and asked[0]["jpeg_decode"] == "auto"


class _NoData:
    gallery: list[Any] = []
    queries: list[Any] = []
    root = Path(".")


def test_clip_models_take_it_too(tiny_clip: str) -> None:
    from lookalike.embedders.clip import ClipEmbedder
    from lookalike.registry import make_model

    emb = make_model(f"clip:{tiny_clip}:none", device="cpu", precision="fp32", jpeg_decode="auto")
    assert isinstance(emb, ClipEmbedder) and emb._decode == "auto" and not emb._ready
    assert ClipEmbedder(tiny_clip, None, device="cuda", decode="gpu")._decode == "gpu"  # resize + crop: it can
