"""precision="auto" on the CPU: chosen by a short measurement, cached, overridable (#20).

Every timing here comes from a fake clock: no test depends on how fast this machine is.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lookalike import ConfigurationError
from lookalike.embedders import _calibrate
from lookalike.embedders._calibrate import CpuDescription, choose_cpu_precision, describe_cpu

AVX512 = CpuDescription("AMD EPYC 9654 96-Core Processor", "avx512_bf16")
AMX = CpuDescription("Intel(R) Xeon(R) Platinum 8480+", "amx_bf16")
LAPTOP = CpuDescription("Intel(R) Core(TM) i7-8550U", "none")


class FakeTimedModel:
    """``run(precision)`` advances a fake clock by that precision's cost and records the call."""

    def __init__(self, **seconds: float) -> None:
        self.seconds, self.now = seconds, 0.0
        self.calls: list[str] = []

    def run(self, precision: str) -> None:
        self.calls.append(precision)
        self.now += self.seconds[precision]

    def clock(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def auto_means_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/conftest.py fixes what "auto" means for the rest of the suite; here it is measured."""
    monkeypatch.delenv("LOOKALIKE_PRECISION", raising=False)


def _choose(model: FakeTimedModel, path: Path, cpu: CpuDescription = AVX512, **key: Any) -> str:
    args: dict[str, Any] = dict(identity="m:v1", torch_version="2.5.1", threads=2, streams=2, batch=8)
    args.update(key)
    return choose_cpu_precision(model.run, cpu=cpu, path=path, clock=model.clock, **args)


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [
    (1.0, 0.5, "bf16"),   # bf16 twice as fast (AMX-like)
    (1.0, 0.89, "bf16"),  # just past the 10% margin
    (1.0, 0.95, "fp32"),  # faster, but not clearly: fp32 is exact
    (1.0, 1.4, "fp32"),   # AVX512-BF16 without AMX: bf16 slower
])
def test_the_faster_precision_is_chosen_with_a_margin_for_fp32(
    tmp_path: Path, fp32: float, bf16: float, expected: str
) -> None:
    model = FakeTimedModel(fp32=fp32, bf16=bf16)
    assert _choose(model, tmp_path / "p.json") == expected
    # one warm-up each, then ROUNDS alternating timed passes
    assert model.calls == ["fp32", "bf16"] + ["fp32", "bf16"] * _calibrate.ROUNDS


def test_the_fastest_round_counts_so_a_passing_load_does_not_decide() -> None:
    costs = iter([9.0, 9.0, 5.0, 1.0, 1.0, 0.75])  # warm-ups, a loaded round, a quiet one
    now = [0.0]

    def run(precision: str) -> None:
        now[0] += next(costs)

    seconds = _calibrate.measure(run, ("fp32", "bf16"), lambda: now[0])
    assert seconds == {"fp32": 1.0, "bf16": 0.75}


def test_no_native_bf16_is_fp32_without_timing_anything(tmp_path: Path) -> None:
    model = FakeTimedModel(fp32=1.0, bf16=0.1)
    assert _choose(model, tmp_path / "p.json", cpu=LAPTOP) == "fp32"
    assert model.calls == []
    assert not (tmp_path / "p.json").exists()


def test_the_choice_is_cached_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "precision.json"
    assert _choose(FakeTimedModel(fp32=1.0, bf16=0.5), path) == "bf16"
    again = FakeTimedModel(fp32=1.0, bf16=2.0)  # would pick fp32 if it measured
    assert _choose(again, path) == "bf16"
    assert again.calls == []
    entry = next(iter(json.loads(path.read_text()).values()))
    assert entry["precision"] == "bf16" and entry["bf16_class"] == "avx512_bf16"
    assert entry["seconds"] == {"fp32": 1.0, "bf16": 0.5}
    assert entry["calibration_s"] == (1.0 + 0.5) * (1 + _calibrate.ROUNDS)  # warm-ups + rounds, fake clock
    assert [p.name for p in path.parent.iterdir()] == ["precision.json"]  # no temporary left


@pytest.mark.parametrize("change", [
    {"cpu": AMX}, {"cpu": CpuDescription("AMD EPYC 7B13", "avx512_bf16")}, {"identity": "m:v2"},
    {"torch_version": "2.6.0"}, {"threads": 4}, {"streams": 1}, {"batch": 16},
])
def test_the_cache_is_keyed_by_cpu_model_torch_threads_streams_and_batch(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    path = tmp_path / "precision.json"
    assert _choose(FakeTimedModel(fp32=1.0, bf16=0.5), path) == "bf16"
    other = FakeTimedModel(fp32=1.0, bf16=2.0)
    assert _choose(other, path, **change) == "fp32"
    assert other.calls  # a miss: measured again
    assert len(json.loads(path.read_text())) == 2  # both choices kept
    assert _choose(FakeTimedModel(fp32=1.0, bf16=2.0), path) == "bf16"  # the first still a hit


@pytest.mark.parametrize("content", [
    b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b"",
    b'{"x": 1}',  # well-formed, but no entry for this key
])
def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "precision.json"
    path.write_bytes(content)
    model = FakeTimedModel(fp32=1.0, bf16=0.5)
    assert _choose(model, path) == "bf16"
    assert model.calls
    assert any(v["precision"] == "bf16" for v in json.loads(path.read_text()).values() if isinstance(v, dict))


def test_a_cached_entry_with_a_bogus_choice_is_measured_again(tmp_path: Path) -> None:
    path = tmp_path / "precision.json"
    _choose(FakeTimedModel(fp32=1.0, bf16=0.5), path)
    data = json.loads(path.read_text())
    for entry in data.values():
        entry["precision"] = "fp64"
    path.write_text(json.dumps(data))
    model = FakeTimedModel(fp32=1.0, bf16=2.0)
    assert _choose(model, path) == "fp32" and model.calls


def test_a_pass_that_fails_gives_fp32_not_an_error(tmp_path: Path) -> None:
    def run(precision: str) -> None:
        if precision == "bf16":
            raise RuntimeError("no bf16 kernel for this operator")

    path = tmp_path / "precision.json"
    assert choose_cpu_precision(run, cpu=AVX512, identity="m:v1", torch_version="2.5.1", threads=2,
                                streams=2, batch=8, path=path) == "fp32"
    assert not path.exists()  # not cached: a later torch may have the kernel


def test_an_unwritable_cache_is_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    model = FakeTimedModel(fp32=1.0, bf16=0.5)
    assert _choose(model, tmp_path / "precision.json") == "bf16"
    assert not (tmp_path / "precision.json").exists()


def test_an_unreadable_cache_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "precision.json"
    _choose(FakeTimedModel(fp32=1.0, bf16=0.5), path)
    real = Path.read_text

    def eio(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == path:
            raise OSError(5, "Input/output error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", eio)
    model = FakeTimedModel(fp32=1.0, bf16=2.0)
    assert _choose(model, path) == "fp32" and model.calls


def test_cache_path_follows_lookalike_cache_dir_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "mine"))
    assert _calibrate.cache_path() == tmp_path / "mine" / "precision.json"
    monkeypatch.delenv("LOOKALIKE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _calibrate.cache_path() == tmp_path / "xdg" / "lookalike" / "precision.json"


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "amx_bf16"),
    ("fpu sse avx2 avx512f avx512_bf16", "avx512_bf16"),
    ("fpu sse avx2", "none"),
])
def test_describe_cpu_reads_the_model_name_and_bf16_class(tmp_path: Path, flags: str, expected: str) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU 9000\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nmodel name\t: Some CPU 9000\nflags\t\t: {flags}\n")
    assert describe_cpu(str(info)) == CpuDescription("Some CPU 9000", expected)


def test_describe_cpu_without_cpuinfo(tmp_path: Path) -> None:
    assert describe_cpu(str(tmp_path / "absent")) == CpuDescription("unknown", "none")


# -- the runner: TorchEmbedder ------------------------------------------------------------

torch = pytest.importorskip("torch")


def _tiny(**kwargs: Any) -> Any:
    from lookalike.embedders._torch import TorchEmbedder
    from lookalike.preprocess import ImagePreprocess

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    return TorchEmbedder(net, ImagePreprocess(32, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), dim=4, identity="tiny:v1", device="cpu", **kwargs)


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("calibrated, but it must not")


def test_auto_measures_both_precisions_on_the_model_and_shows_the_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_calibrate, "describe_cpu", lambda: AVX512)
    seen: list[str] = []

    def fake_measure(run: Callable[[str], None], candidates: tuple[str, ...], clock: Any) -> dict[str, float]:
        for precision in candidates:
            run(precision)  # the real pass, on the tiny model: it must run in each precision
            seen.append(precision)
        return {"fp32": 1.0, "bf16": 0.5}

    monkeypatch.setattr(_calibrate, "measure", fake_measure)
    emb = _tiny(precision="auto", streams=2)
    assert "precision='auto'" in repr(emb)
    emb.load()
    assert seen == ["fp32", "bf16"]
    assert emb.precision == "bf16" and "precision='bf16'" in repr(emb)
    cached = json.loads(_calibrate.cache_path().read_text())
    (entry,) = [v for v in cached.values() if v["identity"] == "tiny:v1" and v["streams"] == 2]
    assert entry["precision"] == "bf16" and entry["batch"] == emb.batch_size
    # a second embedder of the same model on the same CPU takes the cached choice
    monkeypatch.setattr(_calibrate, "measure", _never)
    again = _tiny(precision="auto", streams=2)
    again.load()
    assert again.precision == "bf16"


def test_auto_without_native_bf16_is_fp32_and_times_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_calibrate, "describe_cpu", lambda: LAPTOP)
    monkeypatch.setattr(_calibrate, "measure", _never)
    emb = _tiny(precision="auto")
    emb.load()
    assert emb.precision == "fp32"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_never_calibrates_nor_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    monkeypatch.setattr(_calibrate, "describe_cpu", lambda: AVX512)
    monkeypatch.setattr(_calibrate, "choose_cpu_precision", _never)
    monkeypatch.setenv("LOOKALIKE_PRECISION", "fp32" if precision == "bf16" else "bf16")
    emb = _tiny(precision=precision)
    emb.load()
    assert emb.precision == precision


@pytest.mark.parametrize("value", ["fp32", "bf16", "BF16 "])
def test_lookalike_precision_overrides_auto(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setattr(_calibrate, "describe_cpu", lambda: AVX512)
    monkeypatch.setattr(_calibrate, "choose_cpu_precision", _never)
    monkeypatch.setenv("LOOKALIKE_PRECISION", value)
    emb = _tiny(precision="auto")
    emb.load()
    assert emb.precision == value.strip().lower()


def test_lookalike_precision_auto_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_calibrate, "describe_cpu", lambda: AVX512)
    monkeypatch.setattr(_calibrate, "measure", lambda run, candidates, clock: {"fp32": 1.0, "bf16": 3.0})
    monkeypatch.setenv("LOOKALIKE_PRECISION", "auto")
    emb = _tiny(precision="auto", streams=1)
    emb.load()
    assert emb.precision == "fp32"


@pytest.mark.parametrize("value", ["fp64", "fast"])
def test_a_bad_lookalike_precision_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LOOKALIKE_PRECISION", value)
    emb = _tiny(precision="auto")
    with pytest.raises(ConfigurationError, match=f"LOOKALIKE_PRECISION='{value}'"):
        emb.load()


def test_lookalike_precision_fp16_on_cpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_PRECISION", "fp16")
    with pytest.raises(ConfigurationError, match="needs a CUDA device"):
        _tiny(precision="auto").load()
