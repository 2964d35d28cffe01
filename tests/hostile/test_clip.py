"""Hostile input for search by text (#17): huge and odd texts, a checkpoint file that is a
pickle bomb, config paths that do not exist."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.errors import ConfigurationError, ModelLoadError

from ..conftest import TINY_CLIP

pytest.importorskip("torch")
pytest.importorskip("open_clip", reason="the [clip] extra (open-clip-torch) is not installed")

from lookalike.embedders.clip import ClipEmbedder  # noqa: E402


@pytest.fixture(scope="module")
def clip(tiny_clip_config: Path) -> ClipEmbedder:
    return ClipEmbedder(TINY_CLIP, None, device="cpu", streams=1)


def test_odd_texts_give_unit_vectors(clip: ClipEmbedder) -> None:
    texts = ["\x00", "a\nb\tc\r\n", "🚲" * 50, "\u202eevil", "   a   ", "<script>alert(1)</script>", "ß" * 3]
    vectors = clip.embed_text(texts)
    assert vectors.shape == (len(texts), clip.dim) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_huge_text_is_cut_at_the_context_length_without_hanging(clip: ClipEmbedder) -> None:
    huge = "a red car on a beach " * 5_000  # 105,000 characters
    started = time.perf_counter()
    vector = clip.embed_text([huge])
    assert time.perf_counter() - started < 30
    np.testing.assert_allclose(vector, clip.embed_text([huge[:2000]]), atol=1e-6)  # only the first tokens count


def test_a_checkpoint_that_is_a_pickle_bomb_is_refused_unrun(tiny_clip_config: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Bomb:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Bomb()}))
    with pytest.raises(ModelLoadError, match="evil.pt"):
        ClipEmbedder(TINY_CLIP, path, device="cpu").load()
    assert not marker.exists()


def test_an_empty_or_truncated_checkpoint_is_a_model_load_error(tiny_clip_config: Path, tmp_path: Path) -> None:
    import torch

    good = tmp_path / "good.pt"
    torch.save({"a": torch.zeros(3)}, good)
    for name, data in (("empty.pt", b""), ("cut.pt", good.read_bytes()[:40])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelLoadError, match=name):
            ClipEmbedder(TINY_CLIP, tmp_path / name, device="cpu").load()


def test_a_configs_path_that_does_not_exist_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOKALIKE_CLIP_CONFIGS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigurationError, match="LOOKALIKE_CLIP_CONFIGS names .*nowhere.*does not exist"):
        ClipEmbedder("ViT-B-32")


def test_building_a_random_model_keeps_other_log_lines(tiny_clip_config: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    clip = ClipEmbedder(TINY_CLIP, None, device="cpu", streams=1)
    with caplog.at_level(logging.WARNING):
        clip.load()
        logging.getLogger().warning("another module's warning")
    messages = [r.getMessage() for r in caplog.records]
    assert "another module's warning" in messages
    assert not any("initialized randomly" in m for m in messages)  # asked for: weights=None
