"""Shared fixtures: a clean environment, generated images, the shared data set."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike.embedders._calibrate import describe_cpu

pytest_plugins = ("pytester",)  # tests run user-side test files (lookalike.testing, doc blocks)

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "reverse_image_search"
if not DATASET.is_dir():  # CI clones next to shared/ too; allow an override
    DATASET = Path(os.environ.get("LOOKALIKE_DATASET", str(DATASET)))

_NATIVE_BF16 = describe_cpu().native_bf16

needs_dataset = pytest.mark.skipif(
    not (DATASET / "train").is_dir(),
    reason=f"data set folder {DATASET} is absent (the shared reverse_image_search set)",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No developer credentials or settings leak into tests; no network model cache."""
    for name in list(os.environ):
        if name.startswith(("LOOKALIKE_", "TENCENT_VECTORDB_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-home"))
    # exported ONNX models (OnnxEmbedder) go to the test session's temp dir, not ~/.cache
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "lookalike-cache"))
    # precision="auto" times fp32 against bf16 on first load; timings on a loaded CI machine
    # may go either way, so tests get a fixed answer (bf16 where the CPU has it natively).
    # tests/embedders/test_auto_precision.py tests the timing itself with a fake clock.
    monkeypatch.setenv("LOOKALIKE_PRECISION", "bf16" if _NATIVE_BF16 else "fp32")


def make_image(seed: int, size: tuple[int, int] = (96, 80), mode: str = "RGB") -> Image.Image:
    """A distinct synthetic picture: coloured background, shapes placed by ``seed``."""
    rng = np.random.default_rng(seed)
    base = tuple(int(c) for c in rng.integers(0, 256, 3))
    img = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = x0 + int(rng.integers(8, w // 2 + 9)), y0 + int(rng.integers(8, h // 2 + 9))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    return img.convert(mode) if mode != "RGB" else img


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def image_factory() -> Callable[[int], Image.Image]:
    return make_image


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """A folder of 12 distinct images (JPEG and PNG, in two subfolders) plus a non-image."""
    root = tmp_path / "photos"
    for i in range(12):
        sub = root / ("a" if i < 6 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        ext = "jpg" if i % 2 == 0 else "png"
        make_image(i).save(sub / f"img{i:02d}.{ext}", quality=92)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def dataset() -> Iterator[Path]:
    if not (DATASET / "train").is_dir():
        pytest.skip(f"data set folder {DATASET} is absent")
    yield DATASET


#: A tiny open_clip model config (ViT image tower 32 px, 2-layer text tower, 32-d), for
#: CLIP tests that must stay fast: open_clip builds it with random weights in a blink.
TINY_CLIP = "lookalike-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CLIP config's file, registered with open_clip for this process."""
    open_clip = pytest.importorskip("open_clip", reason="the [clip] extra (open-clip-torch) is not installed")
    import json

    path = tmp_path_factory.mktemp("clip-configs") / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(path)
    return path


@pytest.fixture
def tiny_clip(tiny_clip_config: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tiny CLIP model's name; ``$LOOKALIKE_CLIP_CONFIGS`` names its config, so that
    ``lookalike`` subprocesses (serve) know it too."""
    monkeypatch.setenv("LOOKALIKE_CLIP_CONFIGS", str(tiny_clip_config))
    return TINY_CLIP


class SearchOnly:
    """A store without ``similar_pairs``: ``find_duplicates`` searches each record's
    neighbours (the path of stores that cannot join themselves, Tencent's)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "similar_pairs":
            raise AttributeError(name)
        return getattr(self._inner, name)
