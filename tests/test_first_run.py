"""A failed first run leaves the store unbound, and the CLI gives CLI advice (#14)."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from lookalike import ImageSearchIndex, ModelLoadError, SchemaMismatchError
from lookalike.cli import main
from lookalike.embedders import FakeEmbedder
from lookalike.stores import InMemoryStore, LocalStore

from .conftest import make_image

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from lookalike.embedders import ResNet50Embedder, TorchEmbedder  # noqa: E402
from lookalike.embedders.spec import ModelSpec  # noqa: E402
from lookalike.embedders.torchvision import imagenet_preprocess  # noqa: E402

RESNET50_FILE = "resnet50-11ad3fa6.pth"


class NoWeights(TorchEmbedder):
    """A torch embedder whose model cannot be loaded (as offline), counting the attempts."""

    def __init__(self) -> None:
        super().__init__(ModelSpec(identity="no-weights:v1", dim=8, preprocess=imagenet_preprocess(32, 28),
                                   build=self._build), device="cpu", precision="fp32")
        self.attempts = 0

    def _build(self) -> Any:
        self.attempts += 1
        raise ModelLoadError("cannot download the weights (no route to host)")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """torchvision's download fails as on a machine without internet; the URLs tried."""
    import torchvision.models._api as api

    tried: list[str] = []

    def no_network(url: str, *args: Any, **kwargs: Any) -> Any:
        tried.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tried


def test_a_model_that_never_loaded_leaves_the_store_unbound(tmp_path: Path) -> None:
    path = tmp_path / "photos.lookalike"
    store = LocalStore(path)
    index = ImageSearchIndex(embedder=NoWeights(), store=store)
    with pytest.raises(ModelLoadError):
        index.add_many([make_image(i) for i in range(5)])
    assert store.describe() is None and index.count() == 0
    with pytest.raises(ModelLoadError):
        index.create_schema()  # explicit: loads the model first, records nothing when it fails
    assert store.describe() is None
    # another model can now use the store
    other = ImageSearchIndex(embedder=FakeEmbedder(), store=store)
    report = other.add_many([make_image(i) for i in range(3)])
    assert len(report.added) == 3 and store.describe() is not None
    assert store.describe().identity == FakeEmbedder().identity  # type: ignore[union-attr]
    store.close()


def test_a_run_that_embeds_nothing_records_no_model() -> None:
    store = InMemoryStore()
    index = ImageSearchIndex(embedder=FakeEmbedder(), store=store)
    assert index.add_many([]).added == []
    report = index.add_many([b"not an image", b""])  # every image fails: nothing is written
    assert len(report.failed) == 2 and store.describe() is None
    assert index.search(make_image(1)) == [] and index.count() == 0


def test_explicit_create_schema_still_binds_the_store_once_the_model_loads() -> None:
    store = InMemoryStore()
    emb = TorchEmbedder(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
                        imagenet_preprocess(32, 28), dim=3, identity="pool:v1", device="cpu")
    schema = ImageSearchIndex(embedder=emb, store=store, fields=["label", "camera"]).create_schema()
    assert store.describe() == schema and schema.identity == "pool:v1"
    assert "camera" in schema.fields
    with pytest.raises(SchemaMismatchError):  # bound: another model is refused
        ImageSearchIndex(embedder=FakeEmbedder(), store=store).add(make_image(1))


def test_the_first_write_records_the_fields_of_the_index() -> None:
    store = InMemoryStore()
    index = ImageSearchIndex(embedder=FakeEmbedder(), store=store, fields=["label", "camera"])
    index.add(make_image(1), metadata={"camera": "x100"})
    assert store.describe() is not None and "camera" in store.describe().fields  # type: ignore[union-attr]
    assert len(index.search(make_image(1), filter={"camera": "x100"})) == 1


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_offline_first_run_then_the_advised_embedder_works(
    capsys: pytest.CaptureFixture[str], offline: list[str], tmp_path: Path, image_dir: Path
) -> None:
    store = str(tmp_path / "photos.lookalike")
    code, _, err = run(capsys, "index", str(image_dir), "--store", store, "--device", "cpu", "-q")
    assert code == 1 and err.count("\n") == 1 and err.startswith("lookalike: error:")
    assert len(offline) == 1  # one download attempt for the whole run, not one per image
    # the advice is spelled for the command line, not for Python
    assert "--embedder efficientnet-lite0" in err and f"--embedder resnet50:/path/to/{RESNET50_FILE}" in err
    assert "weights=" not in err and "EfficientNetLite0Embedder" not in err
    code, out, _ = run(capsys, "info", "--store", store, "--json")
    assert code == 0 and json.loads(out)["embedder"] is None  # nothing recorded
    code, out, err = run(capsys, "index", str(image_dir), "--store", store, "--embedder", "fake", "--json",
                         "--field", "camera")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["added"] == 12
    info = json.loads(run(capsys, "info", "--store", store, "--json")[1])
    assert info["embedder"].startswith("fake:") and "camera" in info["fields"]


def test_cli_run_of_a_folder_without_images_records_no_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = str(tmp_path / "s.lookalike")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "index", str(tmp_path / "empty"), "--store", store, "--embedder", "fake", "-q")
    assert code == 1 and "no images found" in err
    if Path(store).exists():  # the run may stop before it opens the store at all
        code, out, _ = run(capsys, "info", "--store", store, "--json")
        assert code == 0 and json.loads(out)["embedder"] is None


def test_python_keeps_python_advice(offline: list[str]) -> None:
    with pytest.raises(ModelLoadError) as info:
        ResNet50Embedder(device="cpu").embed([make_image(1)])
    message, cli = str(info.value), info.value.cli_message
    assert f"weights='/path/to/{RESNET50_FILE}'" in message and "EfficientNetLite0Embedder()" in message
    assert "--embedder" not in message
    assert "--embedder efficientnet-lite0" in cli and "weights=" not in cli
    assert message.split(" or ")[0] == cli.split(" or ")[0]  # the same reason, other spelling


def test_model_load_error_keeps_its_cli_message_through_pickle() -> None:
    import pickle

    error = ModelLoadError("pass weights='x'", cli_message="pass --embedder resnet50:x")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == "pass weights='x'" and again.cli_message == "pass --embedder resnet50:x"
    assert ModelLoadError("plain").cli_message == "plain"
