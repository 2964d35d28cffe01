"""Torchvision embedders: random weights through the real code path, local weight files,
and the offline error (no test here downloads anything)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike import ConfigurationError, ImageSearchIndex, ModelLoadError, path_id
from lookalike.stores import InMemoryStore

from ..conftest import make_image

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from lookalike.embedders import ResNet50Embedder, TorchvisionEmbedder  # noqa: E402

RESNET50_FILE = "resnet50-11ad3fa6.pth"  # the IMAGENET1K_V2 file name


def reference_vectors(model: Any, images: list[Any]) -> Any:
    """What torchvision's own pipeline gives: Resize 256, CenterCrop 224, ImageNet norm."""
    from torchvision import transforms

    pipeline = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    model = model.eval()
    with torch.inference_mode():
        out = model(torch.stack([pipeline(img) for img in images]))
    return torch.nn.functional.normalize(out.flatten(1), dim=1).numpy()


@pytest.fixture(scope="session")
def random_resnet50() -> Any:
    """One randomly initialised ResNet50 embedder for the session (built on first embed)."""
    return ResNet50Embedder(weights=None, device="cpu")


@pytest.fixture(scope="session")
def resnet50_state_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1234)
    model = torchvision.models.resnet50(weights=None)
    path = tmp_path_factory.mktemp("weights") / "my-resnet50.pth"
    torch.save(model.state_dict(), path)
    return path


# -- cheap: construction never loads or downloads anything ---------------------------------
def test_construction_is_cheap_and_identity_names_weights_and_preprocessing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    emb = ResNet50Embedder(device="cpu")
    assert emb.dim == 2048
    assert emb.identity == (
        "torchvision:resnet50:IMAGENET1K_V2:resize256-crop224-bilinear-imagenet-norm:penultimate-l2"
    )
    torch_home = tmp_path_factory.getbasetemp() / "torch-home"
    assert not list(torch_home.rglob("*.pth"))  # nothing downloaded
    assert ResNet50Embedder(weights="IMAGENET1K_V1").identity != emb.identity
    assert "random-init" in ResNet50Embedder(weights=None).identity


def test_default_index_embedder_is_resnet50_built_lazily() -> None:
    index = ImageSearchIndex(store=InMemoryStore())
    assert "not built yet" in repr(index)
    assert isinstance(index.embedder, ResNet50Embedder)


@pytest.mark.parametrize(
    ("args", "match"),
    [(("no_such_net",), "unknown torchvision"), (("resnet18", "IMAGENET9K"), "IMAGENET1K_V1")],
)
def test_bad_arch_or_weights_name(args: tuple[str, ...], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        TorchvisionEmbedder(*args)


def test_missing_weights_file_fails_at_construction(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / RESNET50_FILE
    with pytest.raises(ModelLoadError, match="nowhere"):
        ResNet50Embedder(weights=missing)


def test_weights_file_that_is_not_torch(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(b"definitely not a checkpoint")
    emb = ResNet50Embedder(weights=path, device="cpu")
    with pytest.raises(ModelLoadError, match="cannot read weights file"):
        emb.embed([make_image(1)])


def test_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 2)}}, path)
    emb = ResNet50Embedder(weights=str(path), device="cpu")
    with pytest.raises(ModelLoadError, match="does not fit"):
        emb.embed([make_image(1)])


# -- offline -------------------------------------------------------------------------------
def _offline_message_checks(message: str, torch_home: Path) -> None:
    assert RESNET50_FILE in message
    assert str(torch_home / "hub" / "checkpoints" / RESNET50_FILE) in message  # where to put it
    assert "weights=" in message  # or how to pass it
    assert "EfficientNetLite0Embedder" in message  # or the offline model


def test_offline_raises_model_load_error_not_random_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision.models._api as api

    calls: list[str] = []

    def no_network(url: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    emb = ResNet50Embedder(device="cpu")
    for _ in range(2):  # and again: it does not fall back to anything on a retry
        with pytest.raises(ModelLoadError) as info:
            emb.embed([make_image(1)])
        _offline_message_checks(str(info.value), tmp_path)
        assert "no route to host" in str(info.value)
        assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert calls and calls[0].endswith(RESNET50_FILE)
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore())
    with pytest.raises(ModelLoadError):
        index.add(make_image(2))
    with pytest.raises(ModelLoadError):  # not a per-image failure: the model is missing
        index.add_many([make_image(3), make_image(4)], on_error="skip")
    assert index.count() == 0


def _resolves(host: str, timeout: float = 3.0) -> bool:
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def test_offline_real_download_attempt_fails_fast(capfd: pytest.CaptureFixture[str]) -> None:
    if _resolves("download.pytorch.org"):
        pytest.skip("this machine reaches the internet; the offline path is tested with a mock")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        ResNet50Embedder(device="cpu").embed([make_image(1)])
    assert time.monotonic() - started < 60
    _offline_message_checks(str(info.value), Path(torch.hub.get_dir()).parent)
    capfd.readouterr()


def test_damaged_cached_weights_say_to_delete_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / RESNET50_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download" * 10)
    with pytest.raises(ModelLoadError) as info:
        ResNet50Embedder(device="cpu").embed([make_image(1)])
    assert str(cached) in str(info.value) and "delete the file" in str(info.value)


# -- real models with random or local weights (slow) ----------------------------------------
@pytest.mark.slow
def test_random_resnet50_through_the_real_code_path(random_resnet50: Any, tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.jpg"
        make_image(i, size=(300, 260)).save(path, quality=90)
        paths.append(path)
    index = ImageSearchIndex(embedder=random_resnet50, store=InMemoryStore(), batch_size=3, workers=2)
    report = index.add_many(paths)
    assert len(report.added) == 4 and report.failed == []
    assert index.get(path_id(paths[0])).vector.shape == (2048,)
    results = index.search_many(paths, k=4)
    for path, hits in zip(paths, results):
        assert hits[0].id == path_id(path)
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
    vectors = random_resnet50.embed([make_image(0, size=(300, 260)), make_image(9)])
    assert vectors.shape == (2, 2048) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_weights_path_gives_the_same_vectors_as_those_weights(resnet50_state_file: Path) -> None:
    emb = ResNet50Embedder(weights=resnet50_state_file, device="cpu", precision="fp32")
    assert emb.identity.startswith("torchvision:resnet50:file-sha256:")
    assert ResNet50Embedder(weights=str(resnet50_state_file)).identity == emb.identity
    images = [make_image(1, size=(320, 240)), make_image(2, size=(200, 300)).convert("L").convert("RGB")]
    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(resnet50_state_file, weights_only=True))
    model.fc = torch.nn.Identity()
    np.testing.assert_allclose(emb.embed(images), reference_vectors(model, images), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_other_architectures_with_random_weights(arch: str) -> None:
    emb = TorchvisionEmbedder(arch, weights=None, device="cpu")
    assert "random-init" in emb.identity and arch in emb.identity
    vectors = emb.embed([make_image(1), make_image(2)])
    assert vectors.shape == (2, emb.dim)  # the advertised dim is the real one
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
