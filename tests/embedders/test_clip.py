"""ClipEmbedder (#17): open_clip's vectors, tokens and preprocessing, checkpoint files,
identity, offline errors, and text search through the facade. Every model here is the tiny
random config of ``tests/conftest.py`` (no weights can be downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lookalike import ImageSearchIndex, Text
from lookalike.embedders import FakeEmbedder
from lookalike.errors import ConfigurationError, ModelLoadError, SchemaMismatchError
from lookalike.preprocess import ImagePreprocess
from lookalike.protocols import PixelEmbedder, TextEmbedder
from lookalike.stores import LocalStore
from lookalike.testing import EmbedderContract

from ..conftest import TINY_CLIP, make_image

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip", reason="the [clip] extra (open-clip-torch) is not installed")

from lookalike.embedders import clip as clip_module  # noqa: E402
from lookalike.embedders.clip import ClipEmbedder  # noqa: E402

TEXTS = ["a red car on a beach", "a dog", "A PHOTO of two cats, sleeping!", "über café 🚲", "x " * 40]
#: bf16 vectors of the tiny random model stay this close (cosine) to its fp32 ones
BF16_MIN_COSINE = 0.99


def _images() -> list[Image.Image]:
    """Odd sizes and shapes: wide, tall, smaller than the crop, large."""
    sizes = [(96, 80), (80, 96), (20, 12), (300, 41), (33, 33), (512, 384)]
    return [make_image(i, size) for i, size in enumerate(sizes)]


def _tiny(weights: Any = None, **kwargs: Any) -> ClipEmbedder:
    kwargs.setdefault("streams", 1)
    return ClipEmbedder(TINY_CLIP, weights, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def checkpoint(tiny_clip_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint file of a random tiny open_clip model (seeded apart from lookalike's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = open_clip.create_model(TINY_CLIP)
    path = tmp_path_factory.mktemp("clip-weights") / "tiny-clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> tuple[Any, Any, Any]:
    """open_clip's own model, inference transform and tokenizer for the checkpoint."""
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP, pretrained=str(checkpoint))
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_CLIP)


# -- parity with open_clip ---------------------------------------------------------------------
def test_image_vectors_equal_open_clips_encode_image(checkpoint: Path, reference: Any) -> None:
    model, preprocess, _ = reference
    images = _images()
    with torch.inference_mode():
        expected = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
    emb = _tiny(checkpoint, precision="fp32")
    np.testing.assert_allclose(emb.embed(images), expected, atol=1e-5, rtol=0)
    # the split the add path uses (pixels in decode threads, batches on the model's thread)
    np.testing.assert_allclose(emb.embed_pixels([emb.pixels(im) for im in images]), expected, atol=1e-5, rtol=0)


def test_preprocessing_equals_open_clips_transform(checkpoint: Path, reference: Any) -> None:
    _, preprocess, _ = reference
    emb = _tiny(checkpoint)
    assert isinstance(emb.spec.preprocess, ImagePreprocess)  # so decode processes can run it
    for image in _images():
        assert torch.equal(emb.spec.preprocess(image), preprocess(image))


def test_tokens_and_text_vectors_equal_open_clips(checkpoint: Path, reference: Any) -> None:
    model, _, tokenizer = reference
    emb = _tiny(checkpoint, precision="fp32")
    assert torch.equal(emb.tokenize(TEXTS), tokenizer(TEXTS))
    assert emb.tokenize(TEXTS).shape == (len(TEXTS), 16)  # cut at the context length, as open_clip does
    with torch.inference_mode():
        expected = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
    np.testing.assert_allclose(emb.embed_text(TEXTS), expected, atol=1e-5, rtol=0)


def test_bf16_vectors_stay_close_to_fp32(checkpoint: Path) -> None:
    fp32, bf16 = _tiny(checkpoint, precision="fp32"), _tiny(checkpoint, precision="bf16")
    images = _images()
    for a, b in ((fp32.embed(images), bf16.embed(images)), (fp32.embed_text(TEXTS), bf16.embed_text(TEXTS))):
        assert bf16.precision == "bf16"
        cosines = np.sum(a * b, axis=1)
        assert cosines.min() > BF16_MIN_COSINE, cosines
        assert not np.array_equal(a, b)  # bf16 really ran


def test_a_checkpoint_file_gives_the_vectors_of_the_model_saved(tiny_clip_config: Path, tmp_path: Path) -> None:
    random = _tiny(None, precision="fp32")
    images = _images()[:3]
    path = tmp_path / "saved.pt"
    random.load()
    torch.save(random._module.clip.state_dict(), path)
    loaded = _tiny(path, precision="fp32")
    assert ":file-sha256:" in loaded.identity and loaded.identity != random.identity
    np.testing.assert_array_equal(loaded.embed(images), random.embed(images))
    np.testing.assert_array_equal(loaded.embed_text(TEXTS), random.embed_text(TEXTS))


def test_a_checkpoint_of_another_model_is_a_model_load_error(tiny_clip_config: Path, tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    with pytest.raises(ModelLoadError, match=f"cannot load open_clip {TINY_CLIP} from .*other.pt"):
        _tiny(path).load()
    with pytest.raises(ModelLoadError, match="cannot read weights file .*missing.pt"):
        ClipEmbedder(TINY_CLIP, weights=Path(tmp_path / "missing.pt"), device="cpu")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(tiny_clip_config: Path) -> None:
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a, b = _tiny(None, precision="fp32"), _tiny(None, precision="fp32")
    np.testing.assert_array_equal(a.embed_text(TEXTS), b.embed_text(TEXTS))
    assert torch.equal(torch.rand(1), before)


# -- identity ----------------------------------------------------------------------------------
def test_identity_names_model_weights_preprocessing_and_tokenizer(tiny_clip_config: Path) -> None:
    identity = _tiny(None).identity
    assert identity.startswith(f"clip:{TINY_CLIP}:random-init:cfg-")
    assert ":resize32-crop32-bicubic-mean0.481455" in identity and ":clip-bpe-ctx16:l2" in identity
    b32 = ClipEmbedder("ViT-B-32", "laion2b_s34b_b79k").identity  # known without any download
    assert b32.startswith("clip:ViT-B-32:laion2b_s34b_b79k:") and ":resize224-crop224-bicubic-" in b32
    assert ClipEmbedder("ViT-B-32").identity == b32  # DEFAULT is pinned to its tag
    assert ClipEmbedder("ViT-B-32", "datacomp_xl_s13b_b90k").identity != b32


def test_unknown_models_and_weights_are_refused_with_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="unknown open_clip model 'ViT-X-99'.*list_models"):
        ClipEmbedder("ViT-X-99")
    with pytest.raises(ConfigurationError, match="no weights 'nope' for ViT-B-32; choose one of .*laion2b_s34b_b79k"):
        ClipEmbedder("ViT-B-32", "nope")
    with pytest.raises(ConfigurationError, match="use model 'ViT-B-32-quickgelu'"):
        ClipEmbedder("ViT-B-32", "openai")  # open_clip itself would only log a warning
    with pytest.raises(ConfigurationError, match="open_clip model name"):
        ClipEmbedder("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")


def test_a_clip_store_refuses_other_models_and_other_stores_refuse_clip(
    tiny_clip_config: Path, tmp_path: Path, checkpoint: Path
) -> None:
    clip_store, fake_store = tmp_path / "clip.lookalike", tmp_path / "fake.lookalike"
    with ImageSearchIndex(embedder=_tiny(None), store=LocalStore(clip_store)) as index:
        index.add(make_image(1))
    with ImageSearchIndex(embedder=FakeEmbedder(dim=32), store=LocalStore(fake_store)) as index:
        index.add(make_image(1))
    for embedder, path in ((FakeEmbedder(dim=32), clip_store), (_tiny(checkpoint), clip_store),
                           (_tiny(None), fake_store)):
        with pytest.raises(SchemaMismatchError), ImageSearchIndex(embedder=embedder, store=LocalStore(path)) as index:
            index.add(make_image(2))


# -- offline -----------------------------------------------------------------------------------
def test_offline_a_tag_fails_with_both_spellings_of_the_fix_never_random_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import open_clip.pretrained

    calls = []

    def offline(cfg: Any, *args: Any, **kwargs: Any) -> str:
        calls.append(cfg)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    monkeypatch.setattr(clip_module, "_check_hub_reachable", lambda pretrained: None)  # the host answers
    emb = ClipEmbedder("ViT-B-32", device="cpu")
    for _ in range(2):  # the failure is kept: one download attempt, not one per call
        with pytest.raises(ModelLoadError) as info:
            emb.embed_text(["a red car"])
        message, cli = str(info.value), info.value.cli_message
        assert "cannot download the open_clip weights ViT-B-32 laion2b_s34b_b79k" in message
        assert "couldn't connect" in message
        assert "ClipEmbedder('ViT-B-32', weights='/path/to/open_clip_pytorch_model.bin')" in message
        assert "--embedder clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin" in cli
    with pytest.raises(ModelLoadError):
        emb.embed([make_image(1)])
    assert len(calls) == 1


def test_offline_the_error_comes_at_once_not_after_a_minute_of_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    import open_clip.pretrained

    downloads, probes = [], []

    def never(cfg: Any, *args: Any, **kwargs: Any) -> str:
        downloads.append(cfg)
        raise AssertionError("a download was attempted although the host cannot be reached")

    def unreachable(address: Any, timeout: float | None = None) -> Any:
        probes.append((address, timeout))
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", never)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(clip_module.socket, "create_connection", unreachable)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelLoadError) as info:
        ClipEmbedder("ViT-B-32", device="cpu").embed_text(["a red car"])
    assert "huggingface.co cannot be reached: [Errno -2] Name or service not known" in str(info.value)
    assert "weights='/path/to/open_clip_pytorch_model.bin'" in str(info.value)
    assert downloads == [] and len(probes) == 1 and probes[0][1] == clip_module.HUB_PROBE_TIMEOUT


def test_cached_weights_need_no_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub

    cached = tmp_path / "open_clip_model.safetensors"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, **k: str(cached) if name == cached.name else None)
    monkeypatch.setattr(clip_module.socket, "create_connection",
                        lambda *a, **k: pytest.fail("probed the host although the weights are cached"))
    clip_module._check_hub_reachable({"hf_hub": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"})


# -- the fast add path ---------------------------------------------------------------------------
def test_it_declares_the_pixel_and_text_protocols(tiny_clip_config: Path) -> None:
    emb = _tiny(None)
    assert isinstance(emb, PixelEmbedder) and isinstance(emb, TextEmbedder)
    function = emb.pixel_function()
    assert function is not None
    image = make_image(3)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(function))(image), emb.pixels(image))
    assert emb.image_size == 32


def test_streams_give_the_vectors_of_one_stream(tiny_clip_config: Path) -> None:
    images = _images() * 2
    one = _tiny(None, precision="fp32", streams=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = _tiny(None, precision="fp32", streams=2, batch_size=2)
        pending = two.submit_pixels([two.pixels(im) for im in images])
        assert pending.in_background
        np.testing.assert_allclose(pending.result(), one.embed(images), atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_embed_text_checks_its_argument(tiny_clip_config: Path) -> None:
    emb = _tiny(None)
    with pytest.raises(ConfigurationError, match="not one string"):
        emb.embed_text("a red car")
    with pytest.raises(ConfigurationError, match="takes strings"):
        emb.embed_text([b"bytes"])  # type: ignore[list-item]
    assert emb.embed_text([]).shape == (0, 32)


class TestTinyClipEmbedder(EmbedderContract):
    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls, tiny_clip_config: Path) -> Any:
        return _tiny(None)


# -- text search through the facade ----------------------------------------------------------------
def test_index_text_search_image_search_and_mixed_queries(tiny_clip_config: Path, tmp_path: Path) -> None:
    emb = _tiny(None, precision="fp32")
    paths = []
    for i in range(8):
        path = tmp_path / f"im{i}.png"
        make_image(i, (64, 48)).save(path)
        paths.append(path)
    with ImageSearchIndex(embedder=emb, store=LocalStore(tmp_path / "s.lookalike")) as index:
        report = index.add_many(paths, metadata=[{"label": "even" if i % 2 == 0 else "odd"} for i in range(8)])
        assert len(report.added) == 8
        # an image of the gallery finds itself first
        for path in paths[:3]:
            hit = index.search(path, k=1)[0]
            assert hit.path == str(path.resolve()) and hit.score == pytest.approx(1.0, abs=1e-5)
        # a text finds the images whose vectors are nearest its text vector, filtered
        text_vector = emb.embed_text(["a red car"])[0]
        image_vectors = emb.embed([Image.open(p).convert("RGB") for p in paths])
        order = np.argsort(-(image_vectors @ text_vector))
        hits = index.search(Text("a red car"), k=3)
        assert [h.path for h in hits] == [str(paths[i].resolve()) for i in order[:3]]
        assert [h.score for h in hits] == pytest.approx([float(image_vectors[i] @ text_vector) for i in order[:3]],
                                                      abs=1e-5)
        odd = index.search(Text("a red car"), k=8, filter={"label": "odd"})
        assert len(odd) == 4 and all(h.metadata["label"] == "odd" for h in odd)
        # search_many with image and text queries mixed answers each as if alone
        mixed = index.search_many([paths[5], Text("a red car"), Text("a dog"), paths[2]], k=2)
        assert [h.id for h in mixed[0]] == [h.id for h in index.search(paths[5], k=2)]
        assert [h.id for h in mixed[1]] == [h.id for h in hits[:2]]
        assert [h.id for h in mixed[2]] == [h.id for h in index.search(Text("a dog"), k=2)]
        assert mixed[3][0].path == str(paths[2].resolve())
