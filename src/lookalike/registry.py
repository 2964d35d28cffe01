"""One place to build an index from names: ``--embedder efficientnet-lite0``,
``--store tencent://host:8100/db/collection``, ``--runtime onnx-int8``. The CLI, the web page
(``lookalike serve``) and ``lookalike eval`` all call :func:`open_index` or :func:`make_model`.
Heavy modules are imported only when a name is resolved."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, quote_name
from .index import ImageSearchIndex
from .protocols import Embedder, TextEmbedder, VectorStore
from .types import Schema

__all__ = [
    "EMBEDDERS",
    "JPEG_DECODES",
    "RUNTIMES",
    "check_onnx_options",
    "decode_in_processes",
    "default_store_path",
    "embedder_for_identity",
    "make_embedder",
    "make_model",
    "open_existing",
    "open_index",
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


def _clip(**kw: Any) -> Embedder:
    from .embedders.clip import ClipEmbedder

    return ClipEmbedder(**kw)


def _fake(**kw: Any) -> Embedder:
    from .embedders.fake import FakeEmbedder

    kw.pop("decode", None)  # --jpeg-decode gpu: refused by _with_runtime
    kw.pop("device", None)
    kw.pop("precision", None)
    kw.pop("batch_size", None)
    kw.pop("streams", None)
    return FakeEmbedder(**kw)


#: Embedder names the CLI accepts (plus ``torchvision:ARCH[:WEIGHTS]``, ``resnet50:PATH`` and
#: ``clip:MODEL[:WEIGHTS]``).
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "resnet50": _resnet50,
    "efficientnet-lite0": _lite0,
    "clip": _clip,
    "resnet50-random": _resnet50_random,
    "fake": _fake,
}


def make_embedder(name: str, **options: Any) -> Embedder:
    """Build an embedder from a name: ``resnet50``, ``efficientnet-lite0``, ``clip``, ``fake``,
    ``resnet50-random``, ``resnet50:/path/weights.pth``, ``torchvision:ARCH[:WEIGHTS]`` or
    ``clip:MODEL[:WEIGHTS]`` (an open_clip model; WEIGHTS a pretrained tag, a checkpoint
    path, or ``none`` for random weights)."""
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
    if name.startswith("clip:"):
        from .embedders.clip import ClipEmbedder

        parts = name.split(":", 2)
        weights = parts[2] if len(parts) > 2 else "DEFAULT"
        return ClipEmbedder(parts[1] or "ViT-B-32", None if weights == "none" else weights, **options)
    raise ConfigurationError(
        f"unknown embedder {name!r}; use one of {', '.join(EMBEDDERS)}, resnet50:PATH, "
        "torchvision:ARCH[:WEIGHTS] or clip:MODEL[:WEIGHTS]"
    )


CALIBRATION_IMAGES = 100  #: at most this many images of a calibration folder calibrate int8


def check_onnx_options(onnx: str | None, calibration: str | os.PathLike[str] | None) -> None:
    """Refuse ``--calibration`` without ``--runtime onnx-int8`` (``onnx="int8"``) and int8
    without it."""
    if calibration and onnx != "int8":
        raise ConfigurationError("--calibration is only used with --runtime onnx-int8")
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
    if isinstance(embedder, TextEmbedder):  # ONNX Runtime would run the image tower alone: no text search
        raise ConfigurationError("CLIP models run on torch only (--runtime torch): the ONNX runtime has no "
                                 "text tower")
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
    if identity.startswith("clip:"):
        model, weights = identity.split(":")[1:3]
        if weights.startswith("file-"):
            return None  # needs the user's checkpoint file: they must pass --embedder
        return make_embedder(f"clip:{model}:{'none' if weights == 'random-init' else weights}", **options)
    return None


def default_store_path() -> Path:
    """``$LOOKALIKE_STORE``, else ``$XDG_DATA_HOME/lookalike/index.lookalike``
    (``~/.local/share/lookalike/index.lookalike``)."""
    if os.environ.get("LOOKALIKE_STORE"):
        return Path(os.environ["LOOKALIKE_STORE"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "lookalike" / "index.lookalike"


#: Store URL schemes: ``SCHEME:...`` or ``SCHEME://...`` opens ``module:Class``, whose
#: ``from_url(spec, **options)`` parses the rest. A plain path is ``local:``. A new store
#: is one file with such a class and one line here.
STORES: dict[str, str] = {
    "local": "lookalike.stores.local:LocalStore",
    "memory": "lookalike.stores.memory:InMemoryStore",
    "tencent": "lookalike.stores.tencent:TencentVectorStore",
    "tencents": "lookalike.stores.tencent:TencentVectorStore",
}


def open_store(spec: str | os.PathLike[str] | None = None, **options: Any) -> VectorStore:
    """Open a store from a spec (the :data:`STORES` table says which class opens which):

    - a path (``photos.lookalike``, ``local:photos.lookalike``): :class:`~lookalike.stores.LocalStore`;
    - ``memory:``: :class:`~lookalike.stores.InMemoryStore`;
    - ``tencent://HOST:PORT/DATABASE/COLLECTION`` (``tencents://`` for HTTPS):
      :class:`~lookalike.stores.TencentVectorStore`, key from ``TENCENT_VECTORDB_KEY``;
    - ``None``: the default local store (:func:`default_store_path`).
    """
    text = os.fspath(default_store_path() if spec is None else spec)
    scheme = _store_scheme(text)
    module, _, name = STORES[scheme].partition(":")
    store_class = getattr(importlib.import_module(module), name)
    store: VectorStore = store_class.from_url(text, **options)
    return store


def _store_scheme(text: str) -> str:
    """The :data:`STORES` key of a spec: its ``SCHEME:`` prefix, else ``local`` (a path)."""
    if text == "memory":
        return "memory"
    scheme, colon, _ = text.partition(":")
    if colon and scheme in STORES:
        return scheme
    if "://" in text:
        raise ConfigurationError(
            f"unknown store URL {text!r}; use a file path, memory:, or tencent://HOST:PORT/DB/COLLECTION"
        )
    return "local"


# -- building an index -----------------------------------------------------------------
#: ``--runtime`` values: who runs the model (``--onnx fp32|int8`` is the older spelling).
RUNTIMES: dict[str, str | None] = {"torch": None, "onnx-fp32": "fp32", "onnx-int8": "int8"}
#: ``--jpeg-decode`` values: where ``add_many`` decodes JPEG files for a torch model (the
#: torch embedders' ``decode=``; docs/performance.md, "GPU JPEG decode").
JPEG_DECODES = ("cpu", "gpu", "auto")


def make_model(
    name: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    streams: int | None = None,
    runtime: str = "torch",
    calibration: str | os.PathLike[str] | None = None,
    jpeg_decode: str = "cpu",
) -> Embedder:
    """The embedder ``name`` (see :func:`make_embedder`) with the shared model options:
    the ``--device``, ``--precision``, ``--streams``, ``--runtime``, ``--calibration`` and
    ``--jpeg-decode`` (the torch embedders' ``decode=``) of every command that runs a model."""
    return _with_runtime(lambda **options: make_embedder(name, **options), device, precision,
                         streams, runtime, calibration, jpeg_decode)


def _with_runtime(
    build: Callable[..., Embedder],
    device: str,
    precision: str,
    streams: int | None,
    runtime: str,
    calibration: str | os.PathLike[str] | None,
    jpeg_decode: str,
) -> Embedder:
    onnx = _check_model_options(device, runtime, calibration, jpeg_decode)
    options: dict[str, Any] = {"device": "cpu" if onnx else device, "precision": precision}
    if streams is not None:
        options["streams"] = streams
    if jpeg_decode != "cpu" and not onnx:  # "cpu": each embedder's own default
        options["decode"] = jpeg_decode
    embedder = build(**options)
    if jpeg_decode == "gpu" and not onnx:
        from .embedders._torch import TorchEmbedder  # torch-free until a model loads

        if not isinstance(embedder, TorchEmbedder):  # the fake, also when rebuilt from a store
            raise ConfigurationError(f"--jpeg-decode gpu runs a torch model on CUDA; {embedder.identity!r} "
                                     "is not one")
    return with_onnx(embedder, onnx, calibration) if onnx else embedder


def _check_model_options(
    device: str, runtime: str, calibration: str | os.PathLike[str] | None, jpeg_decode: str
) -> str | None:
    """The model options' mistakes that need no model, before any is built or any store
    file made; the ONNX Runtime flavour of ``runtime`` (``None``: torch)."""
    if runtime not in RUNTIMES:
        raise ConfigurationError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    onnx = RUNTIMES[runtime]
    if onnx and device not in ("auto", "cpu"):
        raise ConfigurationError(f"--onnx runs on the CPU; drop --device {device}")
    check_onnx_options(onnx, calibration)
    if jpeg_decode not in JPEG_DECODES:
        raise ConfigurationError(f"unknown --jpeg-decode {jpeg_decode!r}; use one of {', '.join(JPEG_DECODES)}")
    if jpeg_decode == "gpu" and onnx:
        raise ConfigurationError(f"--jpeg-decode gpu needs --runtime torch on CUDA; --runtime {runtime} runs "
                                 "on the CPU")
    if jpeg_decode == "gpu" and device != "auto" and not str(device).startswith("cuda"):
        raise ConfigurationError(f"--jpeg-decode gpu cannot run: the model runs on the CPU (--device {device}); "
                                 "it needs a CUDA device (--jpeg-decode auto uses the GPU where there is one)")
    if jpeg_decode == "gpu" and device == "auto" and not _cuda_available():
        raise ConfigurationError("--jpeg-decode gpu cannot run: the model runs on the CPU (CUDA is not "
                                 "available); it needs a CUDA device (--jpeg-decode auto uses the GPU "
                                 "where there is one)")
    return onnx


def _cuda_available() -> bool:
    """Whether torch sees a CUDA device (``True`` without torch: building the model then
    says which extra is missing)."""
    try:
        import torch
    except ImportError:
        return True
    return bool(torch.cuda.is_available())


def open_existing(spec: str | os.PathLike[str] | None) -> VectorStore:
    """Open a store that must exist already: reading commands never create a store file."""
    text = os.fspath(spec) if spec is not None else str(default_store_path())
    if text not in ("memory", "memory:") and "://" not in text:
        path = Path(text[len("local:"):] if text.startswith("local:") else text).expanduser()
        if not path.exists():
            raise ConfigurationError(
                f"no index at {quote_name(str(path))}: run 'lookalike index' first or pass --store"
            )
    return open_store(spec)


def open_index(
    store: str | os.PathLike[str] | VectorStore | None = None,
    embedder: str | Embedder | None = None,
    *,
    create: bool = False,
    model: bool = True,
    device: str = "auto",
    precision: str = "auto",
    streams: int | None = None,
    runtime: str = "torch",
    calibration: str | os.PathLike[str] | None = None,
    jpeg_decode: str = "cpu",
    decode: str = "threads",
    batch_size: int | None = None,
    fields: Sequence[str] | None = None,
) -> ImageSearchIndex:
    """An :class:`~lookalike.ImageSearchIndex` from names: the one way the CLI, the page and
    ``lookalike eval`` build one.

    Args:
        store: a store spec (see :func:`open_store`; ``None``: the default local store) or a
            store. A spec must name an existing store unless ``create``.
        embedder: a name (see :func:`make_embedder`), an embedder, or ``None``: the model that
            built the store, else (``create``) ``resnet50``.
        create: the store may be new (``lookalike index``).
        model: ``False`` for commands that never embed (``info``, ``delete``, ``check``): the
            index names the store's model without building or loading it.
        device, precision, streams, runtime, calibration, jpeg_decode: the shared model
            options (see :func:`make_model`).
        decode: ``threads``, ``processes`` or ``auto`` (see :func:`decode_in_processes`).
        batch_size, fields: passed to :class:`~lookalike.ImageSearchIndex`.
    """

    def build(opened: VectorStore | None) -> Embedder:
        if not model:
            assert opened is not None
            return _StoredModel(opened.describe())
        if embedder is not None and not isinstance(embedder, str):
            return embedder
        return _with_runtime(lambda **options: _named_model(embedder, opened, create, store, **options),
                             device, precision, streams, runtime, calibration, jpeg_decode)

    if model and (embedder is None or isinstance(embedder, str)):
        _check_model_options(device, runtime, calibration, jpeg_decode)  # before a store file is made
    # a named model is built (and its options checked) before a new store file is made
    chosen = build(None) if create and model and isinstance(embedder, str) else None
    if isinstance(store, (str, os.PathLike)) or store is None:
        opened = open_store(store) if create else open_existing(store)
    else:
        opened = store
    try:
        if chosen is None:
            chosen = build(opened)
        processes = decode_in_processes(decode, device, chosen)
    except BaseException:
        opened.close()
        raise
    return ImageSearchIndex(embedder=chosen, store=opened, processes=processes, batch_size=batch_size,
                            fields=fields or None)


def _named_model(
    name: str | None, store: VectorStore | None, create: bool, spec: object, **options: Any
) -> Embedder:
    if name:
        return make_embedder(name, **options)
    assert store is not None
    schema = store.describe()
    if schema is not None:
        found = embedder_for_identity(schema.identity, **options)
        if found is None:
            raise ConfigurationError(
                f"the store was built by embedder {schema.identity!r}; pass --embedder to name it"
            )
        return found
    if not create:
        where = spec if isinstance(spec, (str, os.PathLike)) else default_store_path()
        raise ConfigurationError(f"no index at {where}: run 'lookalike index' first or pass --store")
    return make_embedder("resnet50", **options)


def decode_in_processes(decode: str, device: str, embedder: Embedder) -> bool:
    """``--decode``: ``auto`` decodes in processes when a torch model runs on CUDA (there
    the threads' GIL is the bottleneck; on a CPU the cores are busy with the model)."""
    if decode != "auto":
        return decode == "processes"
    from .embedders._torch import TorchEmbedder, import_torch

    if not isinstance(embedder, TorchEmbedder):  # the fake, or ONNX Runtime on the CPU
        return False
    if device != "auto":
        return str(device).startswith("cuda")
    torch = import_torch(type(embedder).__name__)  # the model needs it anyway
    return bool(torch.cuda.is_available())


class _StoredModel:
    """The model that built a store, named but never built: the embedder of an index opened
    for commands that do not embed (``info``, ``delete``, ``check``)."""

    def __init__(self, schema: Schema | None) -> None:
        self.identity = schema.identity if schema is not None else "none (the store is empty)"
        self.dim = schema.dim if schema is not None else 0

    def embed(self, images: Sequence[Any]) -> Any:
        raise ConfigurationError(f"this command does not run the model {self.identity!r}")

    def __repr__(self) -> str:
        return f"the store's model {self.identity!r} (not loaded)"
