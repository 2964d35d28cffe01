"""Hostile inputs to the calibration of ``precision="auto"`` (#20 part 3): whatever is in
the cache file or comes back from the clocks, loading a model never fails because of it
and bf16 is never chosen on evidence that does not hold. Fake clocks only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lookalike.embedders import _calibrate
from lookalike.embedders._calibrate import CpuDescription, choose_cpu_precision

AVX512 = CpuDescription("AMD EPYC 9654 96-Core Processor", "avx512_bf16")


class Fake:
    """Both clocks advance by the precision's cost per pass."""

    def __init__(self, **costs: float) -> None:
        self.costs, self.now, self.calls = costs, 0.0, list[str]()

    def run(self, precision: str) -> None:
        self.calls.append(precision)
        self.now += self.costs[precision]

    def clock(self) -> float:
        return self.now


def _choose(model: Fake, path: Path) -> str:
    return choose_cpu_precision(model.run, cpu=AVX512, identity="m:v1", torch_version="2.5.1", threads=2,
                                streams=2, batch=8, images=8, path=path, clock=model.clock,
                                cpu_clock=model.clock)


@pytest.mark.parametrize("content", [
    "[" * 100_000 + "]" * 100_000,  # nested past the parser's recursion limit
    '{"k": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "\x00" * 64,
    '{"a": NaN}',
    "1e999999",
    '"just a string"',
])
def test_a_hostile_cache_file_is_measured_again_and_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / "precision.json"
    path.write_text(content)
    model = Fake(fp32=1.0, bf16=2.0)
    assert _choose(model, path) == "fp32" and model.calls
    data = json.loads(path.read_text())
    assert [entry["precision"] for entry in data.values() if isinstance(entry, dict)] == ["fp32"]


@pytest.mark.parametrize("entry", [
    {"precision": ["bf16"]}, {"precision": {"bf16": 1}}, {"precision": None}, {"precision": "BF16"},
    ["bf16"], "bf16", 1, None,
])
def test_a_cache_entry_of_the_wrong_shape_is_measured_again(tmp_path: Path, entry: Any) -> None:
    path = tmp_path / "precision.json"
    _choose(Fake(fp32=1.0, bf16=2.0), path)
    (key,) = json.loads(path.read_text())
    path.write_text(json.dumps({key: entry}))
    model = Fake(fp32=1.0, bf16=2.0)
    assert _choose(model, path) == "fp32" and model.calls


@pytest.mark.parametrize(("fp32", "bf16"), [
    (0.0, 0.0),    # a clock too coarse to see either pass
    (-1.0, -2.0),  # a clock that went backwards
    (0.5, 0.0),    # bf16's pass unseen by the clock: no evidence
    (float("inf"), 0.1),
    (float("nan"), 0.1),
    (0.1, float("nan")),
])
def test_degenerate_timings_never_pick_bf16_on_no_evidence(tmp_path: Path, fp32: float, bf16: float) -> None:
    measured = _calibrate.Measurement({}, {"fp32": _calibrate.Timing(fp32, fp32),
                                            "bf16": _calibrate.Timing(bf16, bf16)}, 1)
    assert _calibrate.pick(measured) == "fp32"


def test_a_pass_that_raises_midway_through_the_rounds_is_fp32_and_not_cached(tmp_path: Path) -> None:
    calls = []

    def run(precision: str) -> None:
        calls.append(precision)
        if len(calls) == 3:
            raise MemoryError("out of memory in the second bf16 pass")

    path = tmp_path / "precision.json"
    assert choose_cpu_precision(run, cpu=AVX512, identity="m:v1", torch_version="2.5.1", threads=2, streams=2,
                                batch=8, path=path, clock=lambda: 0.0, cpu_clock=lambda: 0.0) == "fp32"
    assert not path.exists()
