"""The CUDA path (#7): graph replay equals eager, partial and mixed batches, precision
auto, and add_many end to end. Skipped on machines without a GPU (CI has none): run
``pytest tests/embedders/test_cuda.py`` on one (docs/performance.md records the run)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from lookalike import ImageSearchIndex
from lookalike.stores import InMemoryStore

from ..conftest import make_image

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _embedder(**kwargs: object) -> object:
    from lookalike.embedders import ResNet50Embedder

    return ResNet50Embedder(weights=None, device="cuda", **kwargs)  # type: ignore[arg-type]


def _pictures(n: int, offset: int = 0) -> list:
    return [make_image(offset + i, size=(320, 240)) for i in range(n)]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)  # rows are L2-normalised


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_graph_replay_matches_eager_for_full_partial_and_oversized_batches(precision: str) -> None:
    graphs, eager = _embedder(precision=precision, batch_size=16), _embedder(precision=precision, batch_size=16)
    eager.cuda_graphs = False  # type: ignore[attr-defined]
    images = _pictures(40)
    full = graphs.embed(images[:16])  # type: ignore[attr-defined]
    partial = graphs.embed(images[16:21])  # type: ignore[attr-defined]  # stale rows 5..15 in the graph's input
    mixed = graphs.embed(images)  # type: ignore[attr-defined]  # 16 + 16 + 8
    reference = eager.embed(images)  # type: ignore[attr-defined]
    assert graphs._graphs and all(g is not None for g in graphs._graphs.values())  # type: ignore[attr-defined]
    tolerance = 0.9999 if precision == "fp32" else 0.999
    assert _cosines(full, reference[:16]).min() > tolerance
    assert _cosines(partial, reference[16:21]).min() > tolerance
    assert _cosines(mixed, reference).min() > tolerance
    assert np.isfinite(mixed).all() and np.allclose(np.linalg.norm(mixed, axis=1), 1, atol=1e-4)


def test_auto_precision_is_fp16_on_cuda_and_close_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_PRECISION", raising=False)  # conftest fixes "auto" for the CPU
    auto, fp32 = _embedder(), _embedder(precision="fp32")
    images = _pictures(24)
    a, b = auto.embed(images), fp32.embed(images)  # type: ignore[attr-defined]
    assert auto.precision == "fp16" and auto.device.type == "cuda"  # type: ignore[attr-defined]
    assert auto.batch_size == 64  # type: ignore[attr-defined]
    assert _cosines(a, b).min() > 0.99


def test_concurrent_callers_get_their_own_results() -> None:
    embedder = _embedder(batch_size=8)
    sets = [_pictures(8, offset=100 * t) for t in range(4)]
    expected = [embedder.embed(s) for s in sets]  # type: ignore[attr-defined]
    got: dict[int, np.ndarray] = {}

    def work(t: int) -> None:
        for _ in range(5):
            got[t] = embedder.embed(sets[t])  # type: ignore[attr-defined]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in range(4):
        assert _cosines(got[t], expected[t]).min() > 0.9999


@pytest.mark.parametrize("processes", [True, False])
def test_add_many_on_cuda_stores_the_same_vectors_as_embed(tmp_path: Path, processes: bool) -> None:
    embedder = _embedder()
    paths = []
    for i, img in enumerate(_pictures(70)):
        paths.append(tmp_path / f"{i:03d}.jpg")
        img.save(paths[-1], quality=95)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    index = ImageSearchIndex(embedder=embedder, store=InMemoryStore(), processes=processes)  # type: ignore[arg-type]
    report = index.add_many([*paths, tmp_path / "broken.jpg"])
    assert len(report.added) == 70 and [f.source for f in report.failed] == [str(tmp_path / "broken.jpg")]
    assert (index._decoder is not None) == processes
    expected = index.embed_queries(paths)
    stored = np.stack([index.get(rid).vector for rid in report.added])
    assert _cosines(stored, expected).min() > 0.999
    index.close()


# -- the GPU pixel path (#20): decode="gpu" ----------------------------------------------
def _jpeg_files(tmp_path: Path, n: int) -> list[Path]:
    from PIL import Image

    paths = []
    for i, img in enumerate(_pictures(n)):
        paths.append(tmp_path / f"{i:03d}.jpg")
        if i % 5 == 1:  # EXIF-rotated
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(paths[-1], quality=95, exif=exif.tobytes())
        elif i % 5 == 2:  # large: Pillow decodes it at reduced scale
            img.resize((1280, 960)).save(paths[-1], quality=95)
        else:
            img.save(paths[-1], quality=95)
    return paths


def test_nvjpeg_pixels_match_the_cpu_twin_and_pillow(tmp_path: Path) -> None:
    from lookalike.embedders._jpeg import JpegBatchDecoder
    from lookalike.images import load_image
    from lookalike.preprocess import imagenet_preprocess

    recipe = imagenet_preprocess(256, 224)
    datas = [p.read_bytes() for p in _jpeg_files(tmp_path, 15)]
    gpu = JpegBatchDecoder(recipe, "cuda", draft_size=256)(datas)
    cpu = JpegBatchDecoder(recipe, "cpu", draft_size=256)(datas)
    for g, c, data in zip(gpu, cpu, datas):
        assert g is not None and c is not None and g.device.type == "cuda"
        pillow = recipe.pixels(load_image(data, min_size=256)).astype(np.int16)
        assert np.abs(g.cpu().numpy().astype(np.int16) - c.numpy().astype(np.int16)).mean() < 2.0
        assert np.abs(g.cpu().numpy().astype(np.int16) - pillow).mean() < 2.0


def test_decode_auto_on_cuda_decodes_on_the_gpu() -> None:
    auto = _embedder(decode="auto")
    assert auto.decodes_jpeg() is True  # type: ignore[attr-defined]
    # the forward pass's CUDA graph is captured before the decoder's stream starts beside it
    assert auto._graphs and all(g is not None for g in auto._graphs.values())  # type: ignore[attr-defined]
    assert _embedder().decodes_jpeg() is False  # type: ignore[attr-defined]  # the default stays "cpu"


def test_add_many_with_gpu_decode_matches_the_cpu_decode(tmp_path: Path) -> None:
    paths = _jpeg_files(tmp_path, 40)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg \xff\xd9")
    png = tmp_path / "picture.png"
    _pictures(1, offset=99)[0].save(png)
    files = [*paths[:20], tmp_path / "broken.jpg", png, *paths[20:]]
    gpu, cpu = _embedder(precision="fp32", decode="gpu"), _embedder(precision="fp32")
    got = ImageSearchIndex(embedder=gpu, store=InMemoryStore(), batch_size=16)  # type: ignore[arg-type]
    want = ImageSearchIndex(embedder=cpu, store=InMemoryStore(), batch_size=16)  # type: ignore[arg-type]
    a, b = got.add_many(files), want.add_many(files)
    assert a.added == b.added and len(a.added) == 41
    assert [(f.source, f.reason) for f in a.failed] == [(f.source, f.reason) for f in b.failed]
    assert gpu.jpeg_decoder.taken == 40  # type: ignore[attr-defined]
    va = np.stack([got.get(r).vector for r in a.added])
    vb = np.stack([want.get(r).vector for r in a.added])
    assert _cosines(va, vb).min() > 0.99


def test_cli_jpeg_decode_gpu_indexes_through_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lookalike.registry
    from lookalike.cli import main
    from lookalike.stores import LocalStore

    folder = tmp_path / "photos"
    folder.mkdir()
    _jpeg_files(folder, 12)
    _pictures(1, offset=99)[0].save(folder / "picture.png")  # left to Pillow
    built: list[ImageSearchIndex] = []
    monkeypatch.setattr(lookalike.registry, "ImageSearchIndex",
                        lambda *a, **k: built.append(ImageSearchIndex(*a, **k)) or built[-1])
    found = {}
    for decode in ("gpu", "cpu"):
        store = tmp_path / f"{decode}.lookalike"
        assert main(["index", str(folder), "--store", str(store), "--embedder", "resnet50-random",
                     "--device", "cuda", "--precision", "fp32", "--decode", "threads",
                     "--jpeg-decode", decode, "-q"]) == 0
        decoder = built[-1].embedder.jpeg_decoder  # type: ignore[attr-defined]
        assert (decoder.taken == 12) if decode == "gpu" else decoder is None
        with LocalStore(store) as opened:
            found[decode] = {r.id: r.vector for batch in opened.scan() for r in batch}
    assert sorted(found["gpu"]) == sorted(found["cpu"]) and len(found["cpu"]) == 13
    ids = sorted(found["cpu"])
    assert _cosines(np.stack([found["gpu"][i] for i in ids]), np.stack([found["cpu"][i] for i in ids])).min() > 0.99


def test_gpu_decode_memory_stays_flat_along_a_stream(tmp_path: Path) -> None:
    from lookalike.sources import Item

    paths = _jpeg_files(tmp_path, 30)
    emb = _embedder(decode="gpu")
    index = ImageSearchIndex(embedder=emb, store=InMemoryStore(), batch_size=64)  # type: ignore[arg-type]
    peaks = []
    for n in (640, 1920):  # 10 chunks, then 30
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        report = index.add_many(Item(paths[i % len(paths)], id=f"{n}-{i}") for i in range(n))
        assert len(report.added) == n
        peaks.append(torch.cuda.max_memory_allocated())
    assert peaks[1] <= peaks[0] * 1.1 + 64 * 2**20  # three times the images, the same memory
