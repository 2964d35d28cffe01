"""The public surface: complete, sorted ``__all__`` lists and a light ``import lookalike``."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest

import lookalike
import lookalike.embedders
import lookalike.stores

MODULES = [lookalike, lookalike.embedders, lookalike.stores]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_all_is_sorted_and_resolvable(module: types.ModuleType) -> None:
    names = list(module.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(module, name) is not None


def test_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(lookalike).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public <= set(lookalike.__all__), public - set(lookalike.__all__)
    assert isinstance(lookalike.__version__, str) and lookalike.__version__


def test_documented_imports_work() -> None:
    from lookalike import AddReport, Hit, ImageSearchIndex, Record, Schema, sources
    from lookalike.embedders import (
        FakeEmbedder,
        OnnxEmbedder,
        ResNet50Embedder,
        TorchEmbedder,
        TorchvisionEmbedder,
    )
    from lookalike.stores import InMemoryStore, LocalStore

    for obj in (AddReport, Hit, ImageSearchIndex, Record, Schema, FakeEmbedder, OnnxEmbedder, ResNet50Embedder,
                TorchEmbedder, TorchvisionEmbedder, InMemoryStore, LocalStore):
        assert inspect.isclass(obj)
    assert callable(sources.from_dir) and callable(sources.from_csv) and callable(sources.from_glob)


def test_unknown_lazy_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchEmbedder"):
        lookalike.embedders.NoSuchEmbedder  # noqa: B018
    with pytest.raises(AttributeError, match="NoSuchStore"):
        lookalike.stores.NoSuchStore  # noqa: B018


def test_import_lookalike_imports_neither_torch_nor_tcvectordb() -> None:
    code = (
        "import sys\n"
        "import lookalike, lookalike.stores, lookalike.embedders, lookalike.registry, lookalike.cli\n"
        "import lookalike.embedders.clip, lookalike.eval.cli, lookalike.serve\n"
        "from lookalike import ImageSearchIndex, sources\n"
        "from lookalike.embedders import FakeEmbedder\n"
        "from lookalike.stores import InMemoryStore, LocalStore\n"
        "index = ImageSearchIndex(embedder=FakeEmbedder(dim=8), store=InMemoryStore())\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'tcvectordb', 'onnxruntime', 'open_clip') "
        "if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
