"""Names for embedders and stores, used by the CLI and config: ``--embedder efficientnet-lite0``,
``--store tencent://host:8100/db/collection``. Heavy modules are imported only when a name
is resolved."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ConfigurationError
from .protocols import Embedder, VectorStore

__all__ = [
    "EMBEDDERS",
    "check_onnx_options",
    "default_store_path",
    "embedder_for_identity",
    "make_embedder",
    "open_store",
    "with_onnx",
]


def _resnet50(**kw: Any) -> Embedder:
    from .embedders.torchvision import ResNet50Embedder

    return ResNet50Embedder(**kw)


def _resnet50_random(**kw: Any) -> Embedder:
    from .embedders.torchvision import ResNet50Embedder

    return ResNet50Embedder(weights=None, **kw)


def _lite0(**kw: Any) -> Embedder:
    from .embedders.efficientnet_lite import EfficientNetLite0Embedder

    return EfficientNetLite0Embedder(**kw)


def _fake(**kw: Any) -> Embedder:
    from .embedders.fake import FakeEmbedder

    kw.pop("device", None)
    kw.pop("precision", None)
    kw.pop("batch_size", None)
    kw.pop("streams", None)
    return FakeEmbedder(**kw)


#: Embedder names the CLI accepts (plus ``torchvision:ARCH[:WEIGHTS]`` and ``resnet50:PATH``).
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "resnet50": _resnet50,
    "efficientnet-lite0": _lite0,
    "resnet50-random": _resnet50_random,
    "fake": _fake,
}


def make_embedder(name: str, **options: Any) -> Embedder:
    """Build an embedder from a name: ``resnet50``, ``efficientnet-lite0``, ``fake``,
    ``resnet50-random``, ``resnet50:/path/weights.pth`` or ``torchvision:ARCH[:WEIGHTS]``."""
    if name in EMBEDDERS:
        return EMBEDDERS[name](**options)
    if name.startswith("resnet50:"):
        from .embedders.torchvision import ResNet50Embedder

        return ResNet50Embedder(weights=name.split(":", 1)[1], **options)
    if name.startswith("torchvision:"):
        from .embedders.torchvision import TorchvisionEmbedder

        parts = name.split(":", 2)
        weights = parts[2] if len(parts) > 2 else "DEFAULT"
        return TorchvisionEmbedder(parts[1], None if weights == "none" else weights, **options)
    raise ConfigurationError(
        f"unknown embedder {name!r}; use one of {', '.join(EMBEDDERS)}, resnet50:PATH, "
        "or torchvision:ARCH[:WEIGHTS]"
    )


CALIBRATION_IMAGES = 100  #: at most this many images of a calibration folder calibrate int8


def check_onnx_options(onnx: str | None, calibration: str | os.PathLike[str] | None) -> None:
    """Refuse ``--calibration`` without ``--onnx int8`` and ``--onnx int8`` without it."""
    if calibration and onnx != "int8":
        raise ConfigurationError("--calibration is only used with --onnx int8")
    if onnx == "int8" and not calibration:
        raise ConfigurationError(
            "--onnx int8 needs --calibration DIR: a folder of images like the ones you index "
            f"(up to {CALIBRATION_IMAGES} of them are used)"
        )


def with_onnx(
    embedder: Embedder, onnx: str, calibration: str | os.PathLike[str] | None = None
) -> Embedder:
    """``embedder``'s model run by ONNX Runtime (``onnx`` = ``"fp32"`` or ``"int8"``); int8
    calibrates on up to 100 images spread over the ``calibration`` folder."""
    from .embedders._torch import TorchEmbedder
    from .embedders.onnx import OnnxEmbedder
    from .sources import from_dir

    check_onnx_options(onnx, calibration)
    if not isinstance(embedder, TorchEmbedder):
        raise ConfigurationError(f"--onnx runs a torch model; {embedder.identity!r} is not one")
    images = None
    if onnx == "int8":
        assert calibration is not None
        files = list(from_dir(calibration))
        if not files:
            raise ConfigurationError(f"no images in the calibration folder {os.fspath(calibration)!r}")
        images = files[:: max(1, len(files) // CALIBRATION_IMAGES)][:CALIBRATION_IMAGES]
    return OnnxEmbedder(embedder, quantize=None if onnx == "fp32" else onnx, calibration=images)


def embedder_for_identity(identity: str, **options: Any) -> Embedder | None:
    """The registered embedder whose identity is ``identity`` (for reopening a store), if any."""
    if identity.startswith("fake:"):
        fields = dict(part.split("=", 1) for part in identity.split(":")[2:] if "=" in part)
        return make_embedder("fake", dim=int(fields.get("dim", 64)), seed=int(fields.get("seed", 0)))
    if identity.startswith("efficientnet-lite0:"):
        return make_embedder("efficientnet-lite0", **options)
    if identity.startswith("torchvision:"):
        arch, weights = identity.split(":")[1:3]
        if weights == "random-init":
            weights = "none"
        if weights.startswith("file-"):
            return None  # needs the user's weights file: they must pass --embedder
        if arch == "resnet50" and ":resize256-crop224-" in identity:  # ResNet50Embedder
            name = {"none": "resnet50-random", "IMAGENET1K_V2": "resnet50"}.get(weights, f"resnet50:{weights}")
            return make_embedder(name, **options)
        return make_embedder(f"torchvision:{arch}:{weights}", **options)
    return None


def default_store_path() -> Path:
    """``$LOOKALIKE_STORE``, else ``$XDG_DATA_HOME/lookalike/index.lookalike``
    (``~/.local/share/lookalike/index.lookalike``)."""
    if os.environ.get("LOOKALIKE_STORE"):
        return Path(os.environ["LOOKALIKE_STORE"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "lookalike" / "index.lookalike"


def open_store(spec: str | os.PathLike[str] | None = None, **options: Any) -> VectorStore:
    """Open a store from a spec.

    - a path (``photos.lookalike``, ``local:photos.lookalike``): :class:`~lookalike.stores.LocalStore`;
    - ``memory:``: :class:`~lookalike.stores.InMemoryStore`;
    - ``tencent://HOST:PORT/DATABASE/COLLECTION`` (``tencents://`` for HTTPS):
      :class:`~lookalike.stores.TencentVectorStore`, key from ``TENCENT_VECTORDB_KEY``;
    - ``None``: the default local store (:func:`default_store_path`).
    """
    if spec is None:
        spec = default_store_path()
    text = os.fspath(spec)
    if text in ("memory", "memory:"):
        from .stores.memory import InMemoryStore

        return InMemoryStore()
    if text.startswith(("tencent://", "tencents://")):
        return _open_tencent(text, **options)
    if "://" in text:
        raise ConfigurationError(
            f"unknown store URL {text!r}; use a file path, memory:, or tencent://HOST:PORT/DB/COLLECTION"
        )
    if text.startswith("local:"):
        text = text[len("local:") :]
    from .stores.local import LocalStore

    return LocalStore(text, **options)


def _open_tencent(url: str, **options: Any) -> VectorStore:
    parts = urlsplit(url)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if not parts.hostname or len(segments) != 2:
        raise ConfigurationError(
            "Tencent store URL must look like tencent://HOST:PORT/DATABASE/COLLECTION"
        )
    if parts.password:
        raise ConfigurationError(
            "do not put the API key in the store URL; set TENCENT_VECTORDB_KEY instead"
        )
    scheme = "https" if parts.scheme == "tencents" else "http"
    port = f":{parts.port}" if parts.port else ""
    from .stores.tencent import TencentVectorStore

    kwargs: dict[str, Any] = {"database": segments[0], "collection": segments[1]}
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    kwargs.update(options)
    return TencentVectorStore(f"{scheme}://{parts.hostname}{port}", **kwargs)
