"""Hostile files against the GPU pixel path (#20), run through its CPU twin: whatever the
device decoder is handed, add_many's outcome is the CPU path's, and nothing the header
claims makes the device decode (or allocate) more than the file's real pixels allow."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lookalike import ImageSearchIndex
from lookalike.stores import InMemoryStore

from ..conftest import encode, make_image

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from lookalike.embedders._jpeg import JpegBatchDecoder  # noqa: E402

from ..embedders.test_gpu_decode import RECIPE, plain, twin  # noqa: E402


def _with_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming ``width`` x ``height``."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _recording_decode(calls: list[int]) -> Any:
    def decode(tensors: list[Any], **kwargs: Any) -> Any:
        calls.append(len(tensors))
        return torchvision.io.decode_jpeg(tensors, **kwargs)
    return decode


def test_a_header_claiming_billions_of_pixels_is_never_decoded_on_the_device() -> None:
    bomb = _with_size(encode(make_image(0), "JPEG"), 60000, 60000)
    calls: list[int] = []
    got = JpegBatchDecoder(RECIPE, "cpu", draft_size=40, decode=_recording_decode(calls))([bomb])
    assert got == [None] and calls == []  # declined by its header, before any decode


def test_a_header_whose_size_lies_is_left_to_pillow(tmp_path: Path) -> None:
    """A frame header that does not match the scan: whatever the decoder makes of it, a
    tensor of another shape than the header's is not used."""
    liar = _with_size(encode(make_image(1), "JPEG", quality=90), 40, 41)
    (tmp_path / "liar.jpg").write_bytes(liar)
    (tmp_path / "bomb.jpg").write_bytes(_with_size(encode(make_image(2), "JPEG"), 60000, 60000))
    files = [tmp_path / "liar.jpg", tmp_path / "bomb.jpg"]
    emb, _ = twin()
    got = ImageSearchIndex(embedder=emb, store=InMemoryStore()).add_many(files)
    want = ImageSearchIndex(embedder=plain(), store=InMemoryStore()).add_many(files)
    assert got.added == want.added
    assert [(f.source, f.reason) for f in got.failed] == [(f.source, f.reason) for f in want.failed]
    assert [Path(f.source).name for f in got.failed] == ["bomb.jpg"] and "decompression bomb" in got.failed[0].reason


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_orientation_out_of_range_is_ignored_as_pillow_ignores_it(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(make_image(3, (96, 80)), "JPEG", quality=95, exif=exif.tobytes())
    got = JpegBatchDecoder(RECIPE, "cpu", draft_size=40)([data])[0]
    assert got is not None and tuple(got.shape) == (32, 32, 3)


def test_a_broken_exif_block_does_not_make_a_good_picture_fail(tmp_path: Path) -> None:
    good = encode(make_image(4), "JPEG", quality=95)
    # an APP1 "Exif" segment of garbage right after SOI
    garbage = b"Exif\x00\x00" + b"\x4d\x4d\x00\x2a\xff\xff\xff\xff" + b"\x00" * 20
    broken = good[:2] + b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage + good[2:]
    (tmp_path / "exif.jpg").write_bytes(broken)
    emb, recording = twin()
    report = ImageSearchIndex(embedder=emb, store=InMemoryStore()).add_many([tmp_path / "exif.jpg"])
    assert len(report.added) == 1 and not report.failed
    assert recording.inner.taken == 1


def test_bytes_after_the_end_marker_are_left_to_pillow_which_reads_the_picture(tmp_path: Path) -> None:
    padded = encode(make_image(5), "JPEG", quality=95) + b"\x00trailing" * 1000  # 9 kB after EOI
    (tmp_path / "padded.jpg").write_bytes(padded)
    emb, recording = twin()
    report = ImageSearchIndex(embedder=emb, store=InMemoryStore()).add_many([tmp_path / "padded.jpg"])
    assert len(report.added) == 1 and not report.failed
    assert recording.calls == [1] and recording.inner.declined == 1  # Pillow's path took it


def test_a_jpeg_named_png_and_a_png_named_jpeg_go_where_their_bytes_say(tmp_path: Path) -> None:
    (tmp_path / "really-jpeg.png").write_bytes(encode(make_image(6), "JPEG"))
    (tmp_path / "really-png.jpg").write_bytes(encode(make_image(7), "PNG"))
    emb, recording = twin()
    report = ImageSearchIndex(embedder=emb, store=InMemoryStore()).add_many(sorted(tmp_path.iterdir()))
    assert len(report.added) == 2 and not report.failed
    assert recording.calls == [1] and recording.inner.taken == 1
