"""Embedders that the Ray workers of ``tests/test_ray_engine.py`` build from a
:class:`~lookalike.ray_engine.WorkerSpec` (the test cluster's ``PYTHONPATH`` holds the
repository, so ``tests.ray_helpers`` imports there). Torch-free and light: no pytest."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lookalike.embedders._torch import TorchEmbedder
from lookalike.embedders.fake import FakeEmbedder
from lookalike.embedders.spec import ModelSpec
from lookalike.errors import ModelLoadError
from lookalike.preprocess import ImagePreprocess
from lookalike.ray_engine import WorkerSpec


class KillingFake(FakeEmbedder):
    """``FakeEmbedder()`` (same identity, same vectors) whose process kills itself with
    SIGKILL when it is given a batch after ``after`` images were embedded (counted in a file
    beside ``flag``, across actors and runs), once: the flag file is made first, so the batch,
    retried on a restarted actor, goes through."""

    def __init__(self, flag: str, after: int = 8) -> None:
        super().__init__()
        self.flag, self.after = flag, after

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec("tests.ray_helpers:KillingFake", {"flag": self.flag, "after": self.after})

    def embed(self, images: Sequence[Any]) -> NDArray[np.float32]:
        counter = self.flag + ".count"
        done = os.path.getsize(counter) if os.path.exists(counter) else 0  # one byte per image
        if done >= self.after:
            try:
                fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        vectors = super().embed(images)
        with open(counter, "ab") as fh:
            fh.write(b"." * len(images))
        return vectors


class OtherFake(FakeEmbedder):
    """A worker spec that builds another model than the driver's (identity check)."""

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec("lookalike.embedders.fake:FakeEmbedder", {"seed": 7})


class PixelFake(FakeEmbedder):
    """``FakeEmbedder()`` (same identity, same vectors) with its preprocessing split off, as the
    torch models have it: ``pixels`` gives a uint8 array per image (made in the decode tasks,
    carried to the model actors as arrays of one shape), ``embed_pixels`` embeds them."""

    def worker_spec(self) -> WorkerSpec:
        return WorkerSpec("tests.ray_helpers:PixelFake", {})

    def pixels(self, image: Any) -> NDArray[np.uint8]:
        from PIL import Image

        return np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.uint8)

    def embed_pixels(self, items: Sequence[NDArray[np.uint8]]) -> NDArray[np.float32]:
        from PIL import Image

        return super().embed([Image.fromarray(np.asarray(item)) for item in items])


def _no_weights() -> Any:
    raise ModelLoadError("the weights cannot be read here (a decode task must never load them)")


def unloadable_torch() -> TorchEmbedder:
    """A torch model whose weights cannot load: a decode task still makes its pixels."""
    recipe = ImagePreprocess(32, 28, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return TorchEmbedder(ModelSpec(identity="no-weights-on-workers:v1", dim=4, preprocess=recipe,
                                   build=_no_weights), device="cpu")
