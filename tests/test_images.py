"""Image loading: every input kind and mode becomes RGB, and bad files fail clearly."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import ImageLoadError, load_image
from lookalike.images import DEFAULT_MAX_PIXELS

from .conftest import encode, make_image


def _save(img: Image.Image, path: Path, fmt: str | None = None, **kwargs: object) -> Path:
    img.save(path, format=fmt, **kwargs)
    return path


def test_path_bytes_and_pil_give_the_same_pixels(tmp_path: Path) -> None:
    img = make_image(1)
    path = _save(img, tmp_path / "a.png")
    from_path = load_image(path)
    from_str = load_image(str(path))
    from_bytes = load_image(path.read_bytes())
    from_pil = load_image(img)
    for loaded in (from_path, from_str, from_bytes, from_pil):
        assert loaded.mode == "RGB"
        assert loaded.size == img.size
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(img))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 30), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 30))  # blue stripe on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "rotated.jpg", "JPEG", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (30, 60)
    top_row = np.asarray(loaded)[2, :, :].astype(int)
    assert top_row[:, 2].mean() > 200  # the blue stripe is now on top
    assert np.asarray(loaded)[50, 15, 0] > 200  # red below it


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I", "F", "YCbCr"])
def test_modes_become_rgb(mode: str) -> None:
    img = make_image(2).convert(mode)
    loaded = load_image(img)
    assert loaded.mode == "RGB"
    assert loaded.size == img.size


@pytest.mark.parametrize(("mode", "fmt"), [("L", "PNG"), ("LA", "PNG"), ("P", "GIF"),
                                          ("RGBA", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP"),
                                          ("RGB", "BMP"), ("RGB", "TIFF")])
def test_encoded_modes_become_rgb(mode: str, fmt: str) -> None:
    img = make_image(3).convert(mode)
    loaded = load_image(encode(img, fmt))
    assert loaded.mode == "RGB"
    assert loaded.size == img.size


def test_grey_image_keeps_its_grey_levels() -> None:
    grey = Image.new("L", (8, 8), 77)
    assert np.asarray(load_image(encode(grey, "PNG")))[0, 0].tolist() == [77, 77, 77]


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 5, 10))
    arr = np.asarray(load_image(encode(img, "PNG")))
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[0, 9].tolist() == [255, 0, 0]


def test_palette_with_transparency_becomes_white_background() -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((3, 3), 1)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    arr = np.asarray(load_image(buf.getvalue()))
    assert arr[0, 0].tolist() == [255, 255, 255]
    assert arr[3, 3].tolist() == [0, 255, 0]


def test_16_bit_image_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = Image.fromarray(ramp)
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    arr = np.asarray(load_image(data))[:, :, 0].astype(int)
    assert arr.min() == 0 and arr.max() == 255
    assert 100 < arr[32, 0] < 160  # the middle of the ramp is mid-grey, not white
    assert np.all(np.diff(arr.reshape(-1)) >= 0)  # monotonic: the ramp survives


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = Image.open(io.BytesIO(buf.getvalue()))
    assert getattr(img, "n_frames", 1) == 2
    img.seek(1)  # even when the caller left the PIL image on a later frame
    for loaded in (load_image(buf.getvalue()), load_image(img)):
        r, g, b = np.asarray(loaded)[8, 8].tolist()
        assert r > 200 and b < 50


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge 1-bit image: tiny on disk, huge when decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20_000, 10_000))
    assert DEFAULT_MAX_PIXELS < 20_000 * 10_000
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.source == str(path)
    assert "decompression bomb" in info.value.reason
    assert str(path) in str(info.value)


def test_large_photo_under_the_limit_is_not_called_a_bomb() -> None:
    # 102 MP, a real medium-format camera size: above Pillow's warning threshold (89 MP)
    # but under the documented limit. The header-only file then fails to decode, but
    # not as a decompression bomb.
    with pytest.raises(ImageLoadError) as info:
        load_image(_png_header_only(11_648, 8_736))
    assert "bomb" not in info.value.reason and "exceeds" not in info.value.reason


def test_max_pixels_is_configurable() -> None:
    data = encode(make_image(4, size=(100, 100)), "PNG")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(data, max_pixels=9_999)
    assert load_image(data, max_pixels=10_000).size == (100, 100)


def test_large_pil_image_is_refused_too() -> None:
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(Image.new("1", (200, 200)), max_pixels=1_000)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is plain text, not a picture", "not an image"),
        ("truncated-jpeg", "truncated"),
        ("truncated-png", "cannot decode"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png"],
)
def test_bad_files_raise_image_load_error_naming_file_and_reason(
    tmp_path: Path, content: bytes | str, reason: str
) -> None:
    if content == "truncated-jpeg":
        full = encode(make_image(5, size=(200, 160)), "JPEG", quality=90)
        content = full[: len(full) // 2]
    elif content == "truncated-png":
        full = encode(make_image(5, size=(200, 160)), "PNG")
        content = full[: len(full) // 2]
    assert isinstance(content, bytes)
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.source == str(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value) and reason in str(info.value)
    # the same bytes in memory fail the same way, named by their size
    with pytest.raises(ImageLoadError) as in_memory:
        load_image(content)
    assert reason in in_memory.value.reason
    assert "bytes" in in_memory.value.source


def test_lazily_opened_truncated_pil_image(tmp_path: Path) -> None:
    full = encode(make_image(5, size=(300, 200)), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(full[: len(full) // 2])
    with Image.open(path) as lazy, pytest.raises(ImageLoadError) as info:  # open reads the header
        load_image(lazy)
    assert "truncated" in info.value.reason
    assert info.value.source == str(path)  # named by its file, not "<JpegImageFile>"
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(Image.open(io.BytesIO(full[: len(full) // 2])))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.reason == "file not found"
    assert str(path) in str(info.value)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_unsupported_input_type() -> None:
    with pytest.raises(ImageLoadError, match="unsupported input type"):
        load_image(12345)  # type: ignore[arg-type]


def test_image_load_error_is_not_a_bare_pillow_error(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert info.value.__cause__ is None  # a short message, not a Pillow traceback


def test_min_size_decodes_large_jpegs_at_reduced_scale() -> None:
    data = encode(make_image(6, size=(1200, 960)), "JPEG", quality=90)
    full = load_image(data)
    reduced = load_image(data, min_size=224)
    assert full.size == (1200, 960)
    assert min(reduced.size) >= 224
    assert reduced.size[0] < 1200
    assert abs(reduced.size[0] / reduced.size[1] - 1200 / 960) < 0.02
    # small images and PNGs are left alone
    assert load_image(data, min_size=600).size == (1200, 960)
    png = encode(make_image(6, size=(1200, 960)), "PNG")
    assert load_image(png, min_size=224).size == (1200, 960)
