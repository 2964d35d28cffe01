"""CLIP models on open_clip: images and text in one space, so a store of image vectors
answers ``search(Text("a red car"))`` as well as a query photo.

:func:`clip_spec` describes one (a :class:`~lookalike.embedders.spec.ModelSpec` for the
image tower, with open_clip's own preprocessing); :class:`ClipEmbedder` runs it with the
torch runner (precision, CPU streams, CUDA graphs, decode processes: the fast add path of
every torch embedder) and adds the text tower (:meth:`ClipEmbedder.embed_text`).
open_clip is imported here only, when a ``ClipEmbedder`` is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from numpy.typing import NDArray

from .._checks import optional_import
from ..errors import ConfigurationError, ModelLoadError
from ..preprocess import ImagePreprocess, norm_tag
from . import _torch
from ._torch import TorchEmbedder, import_torch
from .spec import ModelSpec
from .torchvision import _file_tag, _looks_like_path

__all__ = ["CONFIGS_ENV", "DEFAULT_WEIGHTS", "ClipEmbedder", "clip_spec"]

log = logging.getLogger(__name__)

#: The pretrained tag ``weights="DEFAULT"`` picks, per model (open_clip's best-known
#: LAION weights); other models take the first tag open_clip lists for them.
DEFAULT_WEIGHTS = {
    "ViT-B-32": "laion2b_s34b_b79k",
    "ViT-B-16": "laion2b_s34b_b88k",
    "ViT-L-14": "laion2b_s32b_b82k",
    "ViT-H-14": "laion2b_s32b_b79k",
}
#: Extra open_clip model configs (``.json`` files or folders of them, separated by
#: ``os.pathsep``), registered with ``open_clip.add_model_config`` before a model is looked up.
CONFIGS_ENV = "LOOKALIKE_CLIP_CONFIGS"
TEXT_BATCH = 256  #: texts per forward pass of the text tower
_FEATURE = "ClipEmbedder"
_registered: set[str] = set()
_register_lock = threading.Lock()


def _open_clip() -> Any:
    """open_clip (with torch), or :class:`~lookalike.errors.MissingDependencyError` naming ``[clip]``."""
    import_torch(_FEATURE, ("clip",))
    module = optional_import("open_clip", extra="clip", feature=_FEATURE, package="open-clip-torch")
    _register_configs(module)
    return module


def _register_configs(open_clip: Any) -> None:
    """Register the configs named by ``$LOOKALIKE_CLIP_CONFIGS`` (once per path)."""
    paths = [p for p in os.environ.get(CONFIGS_ENV, "").split(os.pathsep) if p]
    with _register_lock:
        for path in paths:
            if path in _registered:
                continue
            if not Path(path).exists():
                raise ConfigurationError(f"${CONFIGS_ENV} names {path!r}, which does not exist")
            open_clip.add_model_config(path)
            _registered.add(path)


@dataclass(frozen=True)
class _TextSide:
    """What the text tower needs besides the model: the tokenizer's name and context length."""

    tokenizer: str
    context_length: int


def clip_spec(
    model: str = "ViT-B-32", weights: str | os.PathLike[str] | None = "DEFAULT"
) -> tuple[ModelSpec, _TextSide]:
    """The spec of an open_clip model's image tower (and what its text side needs), known
    without building the model or fetching its weights (arguments: see :class:`ClipEmbedder`)."""
    open_clip = _open_clip()
    if not isinstance(model, str) or ":" in model or "/" in model:
        raise ConfigurationError(
            f"model must be an open_clip model name such as 'ViT-B-32' (open_clip.list_models()), got {model!r}"
        )
    config = open_clip.get_model_config(model)
    if config is None:
        raise ConfigurationError(
            f"unknown open_clip model {model!r}; see open_clip.list_models() (e.g. ViT-B-32, ViT-B-16, "
            f"ViT-L-14), or register a config file with ${CONFIGS_ENV}"
        )
    pretrained: dict[str, Any] = {}
    weights_file: Path | None = None
    if weights is None:
        tag = "random-init"  # seeded: see _ClipModel
    elif isinstance(weights, os.PathLike) or (isinstance(weights, str) and _looks_like_path(weights)):
        weights_file = Path(weights).expanduser()
        tag = _file_tag(weights_file)
    elif isinstance(weights, str):
        tags = list(open_clip.list_pretrained_tags_by_model(model))
        tag = _default_tag(model, tags) if weights == "DEFAULT" else weights
        pretrained = open_clip.get_pretrained_cfg(model, tag)
        if not pretrained:
            raise ConfigurationError(
                f"open_clip has no weights {tag!r} for {model}; choose one of {', '.join(tags) or 'none'}, "
                "a checkpoint file path, or None (random weights, for tests)"
            )
        if bool(pretrained.get("quick_gelu", False)) != bool(config.get("quick_gelu", False)):
            other = model[: -len("-quickgelu")] if model.endswith("-quickgelu") else f"{model}-quickgelu"
            raise ConfigurationError(
                f"open_clip's {model} {tag} weights were trained with another activation (QuickGELU "
                f"{'on' if pretrained.get('quick_gelu') else 'off'}); use model {other!r} for them"
            )
    else:
        raise ConfigurationError(f"weights must be a tag, a file path or None, got {weights!r}")
    preprocess, preprocess_tag, size = _preprocess(open_clip, config, pretrained)
    text = config.get("text_cfg", {})
    text_side = _TextSide(_tokenizer_name(model, text), int(text.get("context_length", 77)))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    identity = (f"clip:{model}:{tag}:cfg-{digest}:{preprocess_tag}:"
                f"{text_side.tokenizer}-ctx{text_side.context_length}:l2")
    build = _ClipModel(model, tag if pretrained else None, weights_file, dict(pretrained), preprocess)
    spec = ModelSpec(identity=identity, dim=int(config["embed_dim"]), preprocess=preprocess, build=build,
                     image_size=size, extras=("clip",))
    return spec, text_side


def _default_tag(model: str, tags: list[str]) -> str:
    if model in DEFAULT_WEIGHTS and DEFAULT_WEIGHTS[model] in tags:
        return DEFAULT_WEIGHTS[model]
    if not tags:
        raise ConfigurationError(
            f"open_clip knows no pretrained weights for {model}; pass weights='/path/to/checkpoint' "
            "or weights=None (random weights, for tests)"
        )
    return tags[0]


def _preprocess(open_clip: Any, config: dict[str, Any], pretrained: dict[str, Any]) -> tuple[Any, str, int | None]:
    """open_clip's inference preprocessing for this model and weights (``create_model``'s
    rule: its defaults, then the pretrained tag's, the size from the image tower), as an
    :class:`ImagePreprocess` where it is resize + centre crop (bit-identical, runs in decode
    processes), else open_clip's own transform."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(asdict(PreprocessCfg()), pretrained)
    size = config.get("vision_cfg", {}).get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cfg["size"] = (h, w)
    mean = tuple(float(m) for m in cfg["mean"])
    std = tuple(float(s) for s in cfg["std"])
    interpolation = str(cfg["interpolation"])
    mode = str(cfg["resize_mode"])
    tag = f"{mode}{h}x{w}-{interpolation}-{norm_tag(mean, std)}"
    if mode == "shortest" and h == w and interpolation in ("bicubic", "bilinear"):
        return ImagePreprocess(h, h, mean, std, interpolation), f"resize{h}-crop{h}-{interpolation}-{norm_tag(mean, std)}", h
    return _OpenClipTransform(cfg), tag, None


class _OpenClipTransform:
    """open_clip's own inference transform (for resize modes other than shortest side +
    centre crop): one RGB image -> a ``(3, H, W)`` tensor."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self._transform: Any = None

    def __call__(self, image: Any) -> Any:
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            self._transform = image_transform_v2(PreprocessCfg(**self.cfg), is_train=False)
        return self._transform(image)


def _tokenizer_name(model: str, text_cfg: dict[str, Any]) -> str:
    """Which tokenizer open_clip's ``get_tokenizer`` picks for ``model`` (its rule, without building it)."""
    if text_cfg.get("hf_tokenizer_name"):
        return "hf-" + str(text_cfg["hf_tokenizer_name"]).replace("/", "-").replace(":", "-")
    if "siglip" in model.lower():
        return "siglip"
    return "clip-bpe"


class _ClipModel:
    """A spec's ``build``: the whole open_clip model with its weights (a pretrained tag,
    downloaded once into open_clip's cache; a checkpoint file; or seeded random weights),
    wrapped so that its forward pass is the image tower."""

    def __init__(self, model: str, tag: str | None, weights_file: Path | None, pretrained: dict[str, Any],
                 preprocess: Any) -> None:
        self.model, self.tag, self.weights_file, self.pretrained = model, tag, weights_file, pretrained
        self.preprocess = preprocess

    def __call__(self) -> Any:
        open_clip = _open_clip()
        torch = import_torch(_FEATURE, ("clip",))
        checkpoint = self._download(open_clip) if self.tag else None
        if self.weights_file is not None:
            if not self.weights_file.is_file():
                raise ModelLoadError(f"{self.model} weights file {str(self.weights_file)!r} does not exist")
            checkpoint = str(self.weights_file)
        # Random weights are seeded, so "random-init" names one model; the caller's RNG is left alone.
        with torch.random.fork_rng(devices=[]), _quiet_open_clip():
            torch.manual_seed(0)
            try:
                clip = open_clip.create_model(self.model, pretrained=checkpoint, pretrained_text=False,
                                              pretrained_image=False)
            except Exception as exc:  # a checkpoint of another model, a damaged file
                where = repr(checkpoint) if checkpoint else "random weights"
                raise ModelLoadError(f"cannot load open_clip {self.model} from {where}: {exc}") from exc
        return _image_tower(clip)

    def _download(self, open_clip: Any) -> str:
        from open_clip.pretrained import download_pretrained

        source = self.pretrained.get("hf_hub") or self.pretrained.get("url") or "open_clip's servers"
        try:
            _check_hub_reachable(self.pretrained)
            with _quiet_open_clip():
                path = download_pretrained(self.pretrained)
        except Exception as exc:  # offline: urllib, huggingface_hub and open_clip all raise their own
            reason = (f"cannot download the open_clip weights {self.model} {self.tag} from {source} "
                      f"({_first_line(exc)}). On a machine without internet, download them elsewhere "
                      "(open_clip keeps them in ~/.cache/huggingface/hub or ~/.cache/clip) and ")
            raise ModelLoadError(
                f"{reason}pass the checkpoint file: ClipEmbedder({self.model!r}, "
                "weights='/path/to/open_clip_pytorch_model.bin').",
                cli_message=f"{reason}pass the checkpoint file: --embedder "
                f"clip:{self.model}:/path/to/open_clip_pytorch_model.bin.",
            ) from exc
        if not path:
            raise ModelLoadError(f"open_clip has no download for {self.model} {self.tag}")
        return str(path)


HUB_PROBE_TIMEOUT = 5.0  #: seconds the Hugging Face host has to answer before a download


def _check_hub_reachable(pretrained: dict[str, Any]) -> None:
    """Raise ``OSError`` at once when weights hosted on the Hugging Face Hub are not in its
    cache and the host does not answer: huggingface_hub retries with back-off for about a
    minute before it gives up, which an offline machine should not have to sit through."""
    hub = str(pretrained.get("hf_hub") or "")
    if not hub or "file" in pretrained:
        return
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # open_clip then downloads from the URL, or says the hub is missing
        return
    model_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = [filename, filename.rsplit(".", 1)[0] + ".safetensors"]
    if filename == "open_clip_pytorch_model.bin":
        names.append("open_clip_model.safetensors")
    if any(isinstance(try_to_load_from_cache(model_id, name), str) for name in names):
        return
    if constants.HF_HUB_OFFLINE:
        raise OSError("HF_HUB_OFFLINE is set and the weights are not in the Hugging Face cache")
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as exc:
        raise OSError(f"{host} cannot be reached: {exc}") from exc


class _quiet_open_clip(logging.Filter):
    """Drops open_clip's own info and warning lines on the root logger while a model is
    built (e.g. its "initialized randomly" warning for weights=None, which the caller asked
    for); other modules' lines, and open_clip's errors, pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "open_clip" not in Path(record.pathname).parts

    def __enter__(self) -> None:
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _image_tower(clip: Any) -> Any:
    """``clip`` as a module whose forward pass is ``encode_image`` (its text tower kept as ``.clip``)."""
    import torch.nn as nn

    class ClipImageTower(nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, images: Any) -> Any:
            return self.clip.encode_image(images)

    return ClipImageTower(clip)


class ClipEmbedder(TorchEmbedder):
    """A CLIP model on open_clip: image vectors and text vectors in one space
    (``index.search(lookalike.Text("a red car"))``). Needs ``pip install 'lookalike[clip]'``.

    Images go through the image tower with open_clip's own preprocessing (for most models a
    bicubic resize of the shorter side + centre crop + the OpenAI normalisation, run in the
    decode threads or processes); text through the text tower with open_clip's tokenizer,
    whose vocabulary ships inside the open_clip package (no download). Vectors are the
    towers' L2-normalised outputs (open_clip's ``encode_image``/``encode_text`` with
    ``normalize=True``).

    Args:
        model: an open_clip model name (``open_clip.list_models()``): ``"ViT-B-32"``
            (default), ``"ViT-B-16"``, ``"ViT-L-14"``... Configs of your own: ``$LOOKALIKE_CLIP_CONFIGS``.
        weights: an open_clip pretrained tag (``open_clip.list_pretrained_tags_by_model(model)``;
            ``"DEFAULT"``: ``laion2b_s34b_b79k`` for ViT-B-32, see :data:`DEFAULT_WEIGHTS`),
            downloaded once into open_clip's cache; a local checkpoint file (e.g.
            ``open_clip_pytorch_model.bin``); or ``None`` for random weights (seeded; tests
            only, never chosen silently).
        device, precision, batch_size, streams, decode: see :class:`TorchEmbedder`; ``precision``
            defaults to ``"auto"``; the text tower runs in the precision the image tower chose.
            ``decode="gpu"`` needs a model whose preprocessing is resize + centre crop
            (ViT-B-32 and most others; a model with another open_clip transform is refused).

    The identity names model (and a hash of its config), weights, preprocessing and
    tokenizer, so a CLIP store refuses any other model and other stores refuse it.
    Offline, a tag that is not in the cache fails with
    :class:`~lookalike.errors.ModelLoadError` naming the checkpoint-file fix; nothing is
    loaded until the first image or text is embedded.

    >>> emb = ClipEmbedder("ViT-B-32")                                        # doctest: +SKIP
    >>> emb = ClipEmbedder("ViT-B-32", weights="open_clip_pytorch_model.bin")  # offline  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str = "ViT-B-32",
        weights: str | os.PathLike[str] | None = "DEFAULT",
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        streams: int | None = None,
        decode: str = "cpu",
    ) -> None:
        spec, text = clip_spec(model, weights)
        self.model_name = model
        self.context_length = text.context_length
        self._tokenizer: Any = None
        super().__init__(spec, device=device, precision=precision, batch_size=batch_size, streams=streams,
                         decode=decode)

    def tokenize(self, texts: Sequence[str]) -> Any:
        """open_clip's tokens of ``texts``: a ``(len(texts), context_length)`` int64 tensor
        (longer texts are cut at the context length, as open_clip does)."""
        texts = _check_texts(texts)
        if self._tokenizer is None:
            open_clip = _open_clip()
            with self._load_lock:
                if self._tokenizer is None:
                    try:
                        self._tokenizer = open_clip.get_tokenizer(self.model_name)
                    except Exception as exc:  # an HF tokenizer that must be downloaded
                        raise ModelLoadError(
                            f"cannot load the tokenizer of open_clip {self.model_name}: {_first_line(exc)}"
                        ) from exc
        return self._tokenizer(list(texts))

    def embed_text(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """L2-normalised text vectors ``(len(texts), dim)``, in the image vectors' space."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._ensure_ready()
        torch = _torch.torch
        out = []
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = self.tokenize(texts[start : start + TEXT_BATCH]).to(self.device)
            with torch.inference_mode():
                dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
                if dtype is not None:
                    with torch.autocast(self.device.type, dtype=dtype):
                        features = self._module.clip.encode_text(tokens)
                else:
                    features = self._module.clip.encode_text(tokens)
                features = features.float().flatten(1)
                if features.shape[1] != self.dim:
                    raise ConfigurationError(f"{self!r} produced {features.shape[1]}-d text features, "
                                             f"but dim={self.dim}")
                out.append(torch.nn.functional.normalize(features, dim=1).cpu())
        return np.ascontiguousarray(torch.cat(out).numpy(), dtype=np.float32)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigurationError("embed_text takes a sequence of strings, not one string; wrap it in a list")
    out = list(texts)
    for text in out:
        if not isinstance(text, str):
            raise ConfigurationError(f"embed_text takes strings, got {type(text).__name__}")
    return out
