"""``EmbedderContract``: the embedder contract suite as a pytest base class.

Subclass it in a test module and provide an ``embedder`` fixture::

    import pytest
    from lookalike.testing import EmbedderContract

    class TestMyEmbedder(EmbedderContract):
        @pytest.fixture(scope="class")
        @classmethod
        def embedder(cls):
            return MyEmbedder()

Every test uses the public :class:`~lookalike.Embedder` protocol (and, for an embedder
with the batch hooks of :class:`~lookalike.embedders.TorchEmbedder` -- ``pixels``,
``pixel_function``, ``embed_pixels``, ``submit_pixels`` -- those too; for a
:class:`~lookalike.protocols.TextEmbedder`, ``embed_text``), a few small
generated images, and says, when it fails, what the embedder should do instead. Set
``atol`` on the subclass for a model whose batches differ in the last bits (low precision).
This module imports pytest: import it from tests only.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from ..protocols import Embedder, TextEmbedder
from .images import make_image

__all__ = ["EmbedderContract", "contract_images"]

_HOOKS = ("pixels", "embed_pixels", "submit_pixels")


def contract_images() -> list[Any]:
    """Five RGB images of different sizes, shapes and content (one very thin, one tiny)."""
    from PIL import Image

    images = [make_image(i, size=size) for i, size in enumerate([(64, 48), (40, 90), (120, 120)])]
    images.append(make_image(3, size=(300, 16)).resize((300, 3)))  # thin: resized, then cropped
    images.append(Image.new("RGB", (2, 2), (200, 30, 90)))  # tiny and flat
    return images


class EmbedderContract:
    """The behaviour every :class:`~lookalike.Embedder` must have, as pytest tests.

    Subclass it (the class name must start with ``Test``) and define an ``embedder``
    fixture (``scope="class"`` and ``@classmethod`` for a model that is slow to build). Every embedder of
    lookalike runs through this same class.
    """

    atol: float = 1e-5  #: how far batch and single-image vectors may differ

    @pytest.fixture
    def embedder(self) -> Embedder:
        raise NotImplementedError(
            "define an `embedder` fixture in your EmbedderContract subclass, e.g.\n"
            "    @pytest.fixture(scope='class')\n    @classmethod\n    def embedder(cls):\n        return MyEmbedder()"
        )

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls) -> list[Any]:
        return contract_images()

    # -- the protocol ----------------------------------------------------------------------------
    def test_is_an_embedder(self, embedder: Embedder) -> None:
        assert isinstance(embedder, Embedder), "an embedder needs `dim`, `identity` and `embed(images)`"
        dim = embedder.dim
        assert isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1, (
            f"`dim` must be a positive int, got {dim!r}")

    def test_identity_is_a_stable_string(self, embedder: Embedder, images: list[Any]) -> None:
        identity = embedder.identity
        assert isinstance(identity, str) and identity.strip(), (
            f"`identity` must be a non-empty string naming model, weights and preprocessing, got {identity!r}")
        embedder.embed(images[:1])
        assert embedder.identity == identity, (
            "`identity` must not change when the model loads or embeds: stores record it")
        assert repr(embedder), "repr() must work before and after the model loads"

    def test_vectors_are_float32_unit_rows(self, embedder: Embedder, images: list[Any]) -> None:
        vectors = embedder.embed(images)
        _check_vectors(vectors, len(images), embedder.dim)

    def test_no_images_give_no_vectors(self, embedder: Embedder) -> None:
        empty = embedder.embed([])
        assert isinstance(empty, np.ndarray) and empty.shape == (0, embedder.dim), (
            f"embed([]) must return an empty (0, {embedder.dim}) array, got {getattr(empty, 'shape', empty)!r}")

    def test_a_batch_equals_one_image_at_a_time(self, embedder: Embedder, images: list[Any]) -> None:
        batch = embedder.embed(images)
        single = np.concatenate([embedder.embed([image]) for image in images])
        np.testing.assert_allclose(batch, single, atol=self.atol, err_msg=(
            "an image's vector must not depend on the other images of its batch"))

    def test_deterministic_and_images_left_as_they_were(self, embedder: Embedder, images: list[Any]) -> None:
        before = [(image.mode, image.size, image.tobytes()) for image in images]
        first = embedder.embed(images)
        np.testing.assert_allclose(embedder.embed(images), first, atol=self.atol,
                                   err_msg="the same images must give the same vectors")
        assert [(image.mode, image.size, image.tobytes()) for image in images] == before, (
            "embed() must not modify the images it is given")

    @pytest.mark.parametrize("bad", [None, "not an image", b"\x89PNG", 3])
    def test_something_that_is_not_an_image_raises(self, embedder: Embedder, bad: Any) -> None:
        with pytest.raises(Exception):  # noqa: B017, PT011 -- the contract is: never a vector
            embedder.embed([bad])

    # -- the batch hooks (TorchEmbedder, OnnxEmbedder) ---------------------------------------
    def test_pixels_then_embed_pixels_equal_embed(self, embedder: Any, images: list[Any]) -> None:
        hooks = _hooks(embedder)
        expected = embedder.embed(images)
        pixels = [hooks.pixels(image) for image in images]
        np.testing.assert_allclose(hooks.embed_pixels(pixels), expected, atol=self.atol,
                                   err_msg="embed_pixels([pixels(image)...]) must equal embed(images)")
        pending = hooks.submit_pixels(pixels)
        assert isinstance(pending.in_background, bool), "submit_pixels(...).in_background must be a bool"
        np.testing.assert_allclose(pending.result(), expected, atol=self.atol,
                                   err_msg="submit_pixels(...).result() must equal embed(images)")
        assert not pending.in_background, "in_background must be False once result() has returned"
        empty = hooks.embed_pixels([])
        assert empty.shape == (0, embedder.dim), "embed_pixels([]) must return a (0, dim) array"

    def test_pixel_function_is_picklable_and_equals_pixels(self, embedder: Any, images: list[Any]) -> None:
        hooks = _hooks(embedder)
        function = hooks.pixel_function()
        if function is None:  # allowed: the pixels then come from decode threads only
            return
        again = pickle.loads(pickle.dumps(function))
        for image in images:
            np.testing.assert_array_equal(
                np.asarray(again(image)), np.asarray(hooks.pixels(image)),
                err_msg="pixel_function() must compute what pixels() does, after pickling (decode processes)")

    def test_image_size_is_a_positive_int_or_none(self, embedder: Any) -> None:
        size = _hooks(embedder).image_size
        assert size is None or (isinstance(size, int) and size >= 1), (
            f"image_size must be None or the shorter side the preprocessing resizes to, got {size!r}")

    # -- the text tower (TextEmbedder, e.g. ClipEmbedder) ------------------------------------------
    def test_text_vectors_are_unit_rows_in_the_image_space(self, embedder: Any) -> None:
        if not isinstance(embedder, TextEmbedder):
            pytest.skip(f"{type(embedder).__name__} has no text tower (embed_text)")
        texts = ["a red car on a beach", "two cats", "a red car on a beach"]
        vectors = embedder.embed_text(texts)
        _check_vectors(vectors, len(texts), embedder.dim)
        np.testing.assert_allclose(vectors[0], vectors[2], atol=self.atol,
                                   err_msg="embed_text must be deterministic: the same text, the same vector")
        np.testing.assert_allclose(embedder.embed_text(texts[1:2])[0], vectors[1], atol=self.atol,
                                   err_msg="a text's vector must not depend on the others in its batch")
        assert embedder.embed_text([]).shape == (0, embedder.dim), "embed_text([]) must return a (0, dim) array"


def _hooks(embedder: Any) -> Any:
    """The embedder, when it has the batch hooks; else the test is skipped."""
    if not all(callable(getattr(embedder, name, None)) for name in (*_HOOKS, "pixel_function")):
        pytest.skip(f"{type(embedder).__name__} has no pixels/embed_pixels hooks (a plain Embedder)")
    return embedder


def _check_vectors(vectors: NDArray[np.float32], n: int, dim: int) -> None:
    assert isinstance(vectors, np.ndarray), f"embed() must return a numpy array, got {type(vectors).__name__}"
    assert vectors.dtype == np.float32, f"vectors must be float32, got {vectors.dtype}"
    assert vectors.shape == (n, dim), f"embed() of {n} images must return shape ({n}, {dim}), got {vectors.shape}"
    assert np.isfinite(vectors).all(), "vectors must hold no NaN or infinity"
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4, err_msg="every vector must be L2-normalised (length 1)")

