"""The GPU pixel path of add_many (#20), run on the CPU: the device decoder
(:class:`JpegBatchDecoder`) with ``decode_jpeg`` on ``device="cpu"`` (its CPU twin: the same
code path, libjpeg-turbo instead of nvJPEG) injected into a :class:`TorchEmbedder`. The
CUDA run of the same path: tests/embedders/test_cuda.py."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lookalike import ImageSearchIndex
from lookalike.errors import ConfigurationError, ImageLoadError
from lookalike.images import load_image
from lookalike.preprocess import ImagePreprocess, imagenet_preprocess
from lookalike.stores import InMemoryStore

from ..conftest import encode, make_image

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from lookalike.embedders import TorchEmbedder  # noqa: E402
from lookalike.embedders._jpeg import JpegBatchDecoder  # noqa: E402

from .test_torch import tiny_module  # noqa: E402

RECIPE = imagenet_preprocess(40, 32)


class Recording:
    """A decoder that records the batches it is handed (and may fail on some files)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def __call__(self, encoded: Sequence[bytes]) -> list[Any]:
        self.calls.append(len(encoded))
        got: list[Any] = self.inner(encoded)
        return got


def twin(**options: Any) -> tuple[TorchEmbedder, Recording]:
    """A tiny torch model on the CPU whose add_many goes through the device decoder's CPU twin."""
    emb = TorchEmbedder(tiny_module(), RECIPE, dim=16, identity="tiny:v1", device="cpu",
                        precision="fp32", streams=1, image_size=40, **options)
    emb.load()
    recording = Recording(JpegBatchDecoder(RECIPE, "cpu", draft_size=40))
    emb.jpeg_decoder = recording
    return emb, recording


def plain(**options: Any) -> TorchEmbedder:
    return TorchEmbedder(tiny_module(), RECIPE, dim=16, identity="tiny:v1", device="cpu",
                         precision="fp32", streams=1, image_size=40, **options)


def jpeg(seed: int, size: tuple[int, int] = (96, 80), **kwargs: Any) -> bytes:
    return encode(make_image(seed, size), "JPEG", quality=95, **kwargs)


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def cpu_pixels(data: bytes, recipe: ImagePreprocess = RECIPE) -> np.ndarray:
    return recipe.pixels(load_image(data, min_size=recipe.resize))


def close(a: Any, b: np.ndarray, mean: float = 1.5) -> bool:
    diff = np.abs(np.asarray(a, dtype=np.int16) - b.astype(np.int16))
    return a.shape == b.shape and float(diff.mean()) < mean


# -- the decoder alone ------------------------------------------------------------------
def test_decoder_makes_the_recipes_pixels_for_plain_jpegs() -> None:
    datas = [jpeg(i, size) for i, size in enumerate([(96, 80), (80, 96), (60, 60), (300, 120), (40, 41)])]
    got = JpegBatchDecoder(RECIPE, "cpu", draft_size=40)(datas)
    assert all(g is not None and g.dtype == torch.uint8 for g in got)
    for g, data in zip(got, datas):
        assert g is not None and close(g.numpy(), cpu_pixels(data)), "the tensor recipe must match Pillow's within rounding"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decoder_applies_exif_orientation_as_pillow_does(orientation: int) -> None:
    # an asymmetric picture: any wrong flip or rotation moves the blocks
    img = Image.new("RGB", (120, 72), (20, 20, 20))
    img.paste((250, 30, 30), (0, 0, 60, 24))
    img.paste((30, 250, 30), (90, 40, 120, 72))
    img.paste((30, 30, 250), (0, 50, 20, 72))
    data = with_orientation(img, orientation)
    got = JpegBatchDecoder(RECIPE, "cpu", draft_size=40)([data])[0]
    assert got is not None
    assert close(got.numpy(), cpu_pixels(data), mean=3.0)


def test_decoder_declines_what_the_cpu_path_treats_specially(tmp_path: Path) -> None:
    cmyk = encode(make_image(1).convert("CMYK"), "JPEG")
    progressive = jpeg(2, progressive=True)
    png = encode(make_image(3), "PNG")
    thin = jpeg(4, size=(2400, 12))  # resized, 40 x 8,000 wide: the CPU path's bounded resize
    good = jpeg(5)
    truncated = good[: len(good) // 2]
    garbage = b"\xff\xd8\xff not really a jpeg \xff\xd9"
    decoder = JpegBatchDecoder(RECIPE, "cpu")
    got = decoder([cmyk, progressive, png, thin, good, truncated, garbage])
    assert [g is not None for g in got] == [False, False, False, False, True, False, False]
    assert (decoder.taken, decoder.declined) == (1, 6)


def test_decoder_averages_large_jpegs_as_pillow_decodes_them_at_reduced_scale() -> None:
    """The CPU path decodes a JPEG whose short side is >= 2x image_size at 1/2..1/8 scale;
    the device path averages the same blocks, so both resize the same picture."""
    data = encode(make_image(7, (400, 330)).resize((400, 330)), "JPEG", quality=95)  # 1/8 scale on Pillow
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (49, 41))
    assert img.size == (50, 42)  # Pillow's reduced scale: ceil(400 / 8) x ceil(330 / 8)
    reference = cpu_pixels(data)
    drafted = JpegBatchDecoder(RECIPE, "cpu", draft_size=40)([data])[0]
    full = JpegBatchDecoder(RECIPE, "cpu")([data])[0]
    assert drafted is not None and full is not None
    error = [float(np.abs(x.numpy().astype(np.int16) - reference.astype(np.int16)).mean()) for x in (drafted, full)]
    assert error[0] < 1.5 and error[0] < error[1] / 2


def test_decoder_declines_more_pixels_than_its_limit() -> None:
    got = JpegBatchDecoder(RECIPE, "cpu", max_pixels=96 * 80 - 1)([jpeg(0), jpeg(1, (50, 50))])
    assert got[0] is None and got[1] is not None


def test_decoder_bounds_the_pixels_per_decode_call() -> None:
    calls: list[int] = []

    def decode(tensors: list[Any], **kwargs: Any) -> Any:
        calls.append(len(tensors))
        return torchvision.io.decode_jpeg(tensors, **kwargs)

    datas = [jpeg(i, (100, 100)) for i in range(7)]  # 10,000 pixels each
    got = JpegBatchDecoder(RECIPE, "cpu", batch_pixels=30_000, decode=decode)(datas)
    assert all(g is not None for g in got)
    assert calls == [3, 3, 1]


def test_decoder_finds_the_file_that_failed_a_batch() -> None:
    """decode_jpeg returns nothing when one file of a list fails: each is then decoded alone."""
    datas = [jpeg(i) for i in range(4)]
    bad = datas[2]

    def decode(tensors: list[Any], **kwargs: Any) -> Any:
        if any(bytes(t.numpy()) == bad for t in tensors):
            raise RuntimeError("nvjpeg: bad stream")
        return torchvision.io.decode_jpeg(tensors, **kwargs)

    got = JpegBatchDecoder(RECIPE, "cpu", decode=decode)(datas)
    assert [g is not None for g in got] == [True, True, False, True]
    for g, data in zip(got, datas):
        if g is not None:
            assert close(g.numpy(), cpu_pixels(data))


def test_without_torchvision_decode_jpeg_auto_keeps_pillow_and_gpu_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.embedders._jpeg import gpu_decode_problem

    monkeypatch.delattr(torchvision.io, "decode_jpeg")  # a torchvision that dropped it (TorchCodec)
    assert "decode_jpeg is not available" in (gpu_decode_problem(RECIPE) or "")
    with pytest.raises(ConfigurationError, match="decode='gpu' cannot run: torchvision.io.decode_jpeg"):
        JpegBatchDecoder(RECIPE, "cpu")


def test_decoder_refuses_a_recipe_torch_cannot_resize_like_pillow() -> None:
    with pytest.raises(ConfigurationError, match="lanczos"):
        JpegBatchDecoder(ImagePreprocess(40, 32, (0.5,) * 3, (0.5,) * 3, "lanczos"), "cpu")


# -- the option ---------------------------------------------------------------------------
def test_decode_option_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="decode must be one of"):
        plain(decode="nvjpeg")
    with pytest.raises(ConfigurationError, match="custom callable"):
        TorchEmbedder(tiny_module(), lambda im: None, dim=16, identity="t", device="cpu", decode="gpu")


def test_decode_gpu_on_the_cpu_says_it_needs_cuda() -> None:
    emb = plain(decode="gpu")
    with pytest.raises(ConfigurationError, match="needs a CUDA device"):
        emb.load()


def test_add_many_with_decode_gpu_on_the_cpu_fails_with_that_reason_and_stores_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg(0))
    index = ImageSearchIndex(embedder=plain(decode="gpu"), store=InMemoryStore())
    with pytest.raises(ConfigurationError, match="decode='gpu' cannot run: the model runs on the CPU"):
        index.add_many([tmp_path / "a.jpg"])
    assert len(index) == 0


def test_decode_auto_on_the_cpu_and_cpu_keep_the_pillow_path() -> None:
    auto, cpu = plain(decode="auto"), plain()
    assert cpu.decodes_jpeg() is False and not cpu._ready  # answered without loading the model
    assert auto.decodes_jpeg() is False and auto.jpeg_decoder is None


def test_mixed_host_and_device_pixels_embed_as_host_pixels() -> None:
    emb = plain()
    datas = [jpeg(i) for i in range(5)]
    host = [cpu_pixels(d) for d in datas]
    mixed: list[Any] = [torch.from_numpy(h.copy()) if i % 2 else h for i, h in enumerate(host)]
    assert np.array_equal(emb.embed_pixels(mixed), emb.embed_pixels(host))
    all_device = [torch.from_numpy(h.copy()) for h in host]
    assert np.array_equal(emb.embed_pixels(all_device), emb.embed_pixels(host))


# -- add_many through the device path -----------------------------------------------------
def _folder(tmp_path: Path) -> list[Path]:
    """JPEGs with odd ones between them: order matters."""
    files = {
        "00.jpg": jpeg(0),
        "01.png": encode(make_image(1), "PNG"),
        "02.jpg": jpeg(2, (80, 96)),
        "03.jpg": b"\xff\xd8\xff broken \xff\xd9",
        "04.jpg": encode(make_image(4).convert("CMYK"), "JPEG"),
        "05.jpg": jpeg(5, progressive=True),
        "06.jpg": with_orientation(make_image(6, (120, 72)), 6),
        "07.jpg": jpeg(7)[:400],  # truncated
        "08.jpg": jpeg(8, (2400, 12)),  # thin
        "09.jpg": jpeg(9, (70, 64)),
    }
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    return paths


def test_add_many_decodes_jpegs_on_the_device_and_the_rest_with_pillow(tmp_path: Path) -> None:
    paths = _folder(tmp_path)
    emb, recording = twin()
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), batch_size=4, workers=2)
    report = index.add_many(paths)
    reference = ImageSearchIndex(embedder=plain(), store=InMemoryStore(), batch_size=4, workers=2)
    expected = reference.add_many(paths)
    # the same outcome, in the same order, with the same reasons, as today's CPU path
    assert report.added == expected.added
    assert [(f.source, f.reason) for f in report.failed] == [(f.source, f.reason) for f in expected.failed]
    assert {Path(f.source).name for f in report.failed} == {"03.jpg", "07.jpg"}
    # every JPEG-looking file of each chunk went to the device in one call
    assert recording.calls == [3, 4, 2]
    assert recording.inner.taken == 4  # 00, 02, 06 (EXIF-rotated), 09; the rest fell back
    for rid in report.added:
        got, want = index.get(rid).vector, reference.get(rid).vector
        assert float(got @ want) > 0.999, "device-decoded vectors must match the Pillow path's"


def test_add_many_on_error_raise_names_the_file_the_device_left(tmp_path: Path) -> None:
    paths = _folder(tmp_path)
    paths = [p for p in paths if p.name != "03.jpg"]  # the first failure: 07.jpg, in the second chunk
    emb, _ = twin()
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), batch_size=4)
    with pytest.raises(ImageLoadError) as err:
        index.add_many(paths, on_error="raise")
    reference = ImageSearchIndex(embedder=plain(), store=InMemoryStore(), batch_size=4)
    with pytest.raises(ImageLoadError) as expected:
        reference.add_many(paths, on_error="raise")
    assert err.value.source == expected.value.source == str(tmp_path / "07.jpg")
    assert str(err.value) == str(expected.value)
    assert len(index) == len(reference) == 4  # the first chunk landed: 00, 01, 02, 04


def test_add_many_skips_unchanged_files_before_the_device_sees_them(tmp_path: Path) -> None:
    paths = _folder(tmp_path)
    emb, recording = twin()
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), batch_size=4)
    first = index.add_many(paths)
    taken = recording.inner.taken
    recording.calls.clear()
    again = index.add_many(paths)
    assert sorted(again.unchanged) == sorted(first.added) and not again.added
    # unchanged content is never decoded, on any device: only the two files that failed
    # (nothing stored for them) are tried again, one per chunk
    assert recording.calls == [1, 1] and recording.inner.taken == taken
    (paths[0]).write_bytes(jpeg(100))
    changed = index.add_many(paths)
    assert changed.updated == [first.added[0]] and recording.inner.taken == taken + 1


def test_add_many_keeps_order_across_chunks_and_bytes_inputs(tmp_path: Path) -> None:
    datas = [jpeg(i, (64 + i, 70)) for i in range(11)]
    emb, recording = twin()
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), batch_size=3, workers=3)
    report = index.add_many(datas, ids=[f"id{i:02d}" for i in range(11)])
    assert report.added == [f"id{i:02d}" for i in range(11)]
    assert recording.calls == [3, 3, 3, 2] and recording.inner.taken == 11
    expected = plain().embed([load_image(d) for d in datas])
    stored = np.stack([index.get(f"id{i:02d}").vector for i in range(11)])
    assert float(np.sum(stored * expected, axis=1).min()) > 0.999


def test_add_many_with_processes_reads_in_threads_and_sends_the_rest_to_processes(tmp_path: Path) -> None:
    paths = _folder(tmp_path)
    emb, recording = twin()
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), batch_size=10, workers=1, processes=True)
    try:
        report = index.add_many(paths)
    finally:
        index.close()
    assert recording.calls == [9] and recording.inner.taken == 4  # the files were read here, not deferred
    assert len(report.added) == 8 and {Path(f.source).name for f in report.failed} == {"03.jpg", "07.jpg"}


# -- the header reader against Pillow's opinion -------------------------------------------
def pillow_header(data: bytes) -> tuple[int, int, int] | None:
    """What Pillow says of a file, put as read_header answers: (width, height, orientation)
    for a sequential 8-bit RGB or greyscale JPEG, else None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            if img.info.get("progressive") or img.info.get("progression"):
                return None
            if img.info.get("adobe_transform") == 0 and img.mode == "RGB":
                return None
            try:
                orientation = int(img.getexif().get(0x0112, 1))
            except Exception:
                orientation = 1
            return img.width, img.height, orientation
    except Exception:
        return None


def _variants() -> list[bytes]:
    out = [jpeg(0), jpeg(1, (640, 480)), encode(make_image(2).convert("L"), "JPEG"),
           encode(make_image(3).convert("CMYK"), "JPEG"), jpeg(4, progressive=True),
           encode(make_image(5), "PNG"), b"\xff\xd8\xff\xe0\x00", b"\xff\xd8", b"",
           encode(make_image(6), "JPEG", quality=50, subsampling=0),
           encode(make_image(7), "JPEG", quality=90, subsampling=2)]
    for orientation in (1, 3, 6, 8):
        out.append(with_orientation(make_image(8 + orientation), orientation))
    return out


def test_header_reader_agrees_with_pillow_on_generated_files() -> None:
    from lookalike.embedders._jpeg import read_header

    for data in _variants():
        assert read_header(data) == pillow_header(data), data[:16]


def test_header_reader_agrees_with_pillow_on_the_shared_photos(dataset: Path) -> None:
    from lookalike.embedders._jpeg import read_header

    files = sorted((dataset / "train").glob("*/*.JPEG"))[::10]  # 100 photos, 2 of them greyscale
    for path in files:
        data = path.read_bytes()
        assert read_header(data) == pillow_header(data), path
