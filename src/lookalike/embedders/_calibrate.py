"""``precision="auto"`` on the CPU: chosen by measuring, not by a CPU flag.

A CPU with native bf16 (AVX512-BF16, AMX-BF16) may still run a model slower in bf16 than in
fp32 (CLIP ViT-B-32 on AVX512-BF16 without AMX runs 3-4x slower; ResNet50 on the same CPU
twice as fast: docs/performance.md, "Precision chosen by measurement"). So on such a CPU the
first load times the pass ``add_many`` runs (its batch, its streams, inference mode) in each
candidate and keeps bf16 only when it is faster by more than :data:`BF16_MARGIN` on both
the wall clock and the process's CPU time (fp32 is exact, and is the answer whenever the
measurement is in doubt). The choice is cached per CPU, model, torch version, threads,
streams and batch in ``precision.json`` of the cache directory, so it is paid once. A CPU
without native bf16 gets fp32 at once (emulated bf16 is never faster).

``LOOKALIKE_PRECISION`` (``auto``, ``fp32``, ``bf16``, ``fp16``) overrides ``"auto"``; an
explicit ``precision=`` argument overrides both. This module imports without torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._cache import cache_root
from ..errors import ConfigurationError

log = logging.getLogger(__name__)

ENV_PRECISION = "LOOKALIKE_PRECISION"
BF16_MARGIN = 1.20  #: bf16 is chosen only when fp32 takes more than this times as long, on both clocks
ROUNDS = 3  #: at most this many timed rounds (one pass of each candidate) after the warm-up round
BUDGET_S = 2.0  #: no timed round starts once the measurement has run this long (wall clock)
CACHE_FORMAT = 2  #: bump when a cached choice would no longer be valid (2: timed in add_many's pass)


@dataclass(frozen=True)
class CpuDescription:
    """What the choice depends on: the CPU's model name and its bf16 class."""

    model: str
    bf16_class: str  #: ``"amx_bf16"``, ``"avx512_bf16"`` or ``"none"``

    @property
    def native_bf16(self) -> bool:
        return self.bf16_class != "none"


def describe_cpu(cpuinfo: str = "/proc/cpuinfo") -> CpuDescription:
    """This machine's CPU (model name and bf16 class); ``"unknown"``/``"none"`` where
    ``cpuinfo`` cannot be read (other systems than Linux)."""
    model, flags = "unknown", set[str]()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model != "unknown" and flags:
                    break
    except OSError:
        pass
    bf16_class = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "none"
    return CpuDescription(model, bf16_class)


def env_precision(choices: tuple[str, ...]) -> str | None:
    """``$LOOKALIKE_PRECISION``, checked; ``None`` where unset or empty."""
    value = os.environ.get(ENV_PRECISION, "").strip().lower()
    if not value:
        return None
    if value not in choices:
        raise ConfigurationError(f"{ENV_PRECISION}={os.environ[ENV_PRECISION]!r}: must be one of {choices}")
    return value


def cache_path() -> Path:
    """``precision.json`` in ``$LOOKALIKE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lookalike``,
    else ``~/.cache/lookalike`` (the ONNX exports' cache directory's parent)."""
    return cache_root() / "precision.json"


def cache_key(cpu: CpuDescription, identity: str, torch_version: str, threads: int, streams: int,
              batch: int) -> str:
    return json.dumps([CACHE_FORMAT, cpu.model, cpu.bf16_class, identity, torch_version, threads, streams, batch])


def read_cache(path: Path) -> dict[str, Any]:
    """The cached choices; empty where the file is missing, unreadable or corrupt (nested
    past the parser's recursion limit included)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, key: str, entry: Mapping[str, Any]) -> None:
    """Add ``entry`` under ``key``, atomically (a temporary file renamed over the old one);
    a cache that cannot be written is skipped with a debug log, never an error."""
    data = read_cache(path)
    data[key] = dict(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("lookalike: cannot write the precision cache %s: %s", path, exc)


@dataclass(frozen=True)
class Timing:
    """Seconds of one pass (or the fastest of several) on both clocks."""

    wall: float
    cpu: float  #: CPU time of the whole process: not inflated by other processes on the host

    def __truediv__(self, images: int) -> Timing:
        return Timing(self.wall / images, self.cpu / images)


@dataclass(frozen=True)
class Measurement:
    """What :func:`measure` saw: each candidate's warm-up pass (timed, but a choice of bf16
    never rests on it) and, over ``rounds`` timed rounds, its fastest pass on each clock."""

    warm_up: dict[str, Timing]
    best: dict[str, Timing]
    rounds: int


def _faster(fast: Timing, slow: Timing, margin: float) -> bool:
    """``fast`` beat ``slow`` by more than ``margin`` on both clocks; never on times that
    cannot be right (zero, negative or not finite: a coarse or broken clock)."""
    times = (fast.wall, fast.cpu, slow.wall, slow.cpu)
    if not all(0 < t < math.inf for t in times):
        return False
    return slow.wall > margin * fast.wall and slow.cpu > margin * fast.cpu


def measure(run: Callable[[str], None], candidates: tuple[str, ...],
            clock: Callable[[], float] = time.perf_counter,
            cpu_clock: Callable[[], float] = time.process_time) -> Measurement:
    """Time ``run(precision)`` for each candidate (fp32 and bf16, in that order): one warm-up round
    (oneDNN creates its kernels on a first pass), then up to :data:`ROUNDS` timed rounds,
    the candidates alternating in order from one round to the next so that a load that comes
    and goes falls on each of them alike. Each clock keeps its fastest pass per candidate.

    Stops early, always on the safe side (fp32): after the warm-ups when they alone outran
    :data:`BUDGET_S` and bf16's was no faster than fp32's (a large model whose bf16 pass is
    slow is not run again); after a timed round when the budget is spent or bf16's best is
    not faster than fp32's in CPU time.
    """
    started = clock()
    warm_up: dict[str, Timing] = {}
    best: dict[str, Timing] = {}
    rounds = 0
    for round_ in range(1 + ROUNDS):
        for precision in candidates if round_ % 2 == 0 else candidates[::-1]:
            wall, cpu = clock(), cpu_clock()
            run(precision)
            timing = Timing(clock() - wall, cpu_clock() - cpu)
            if round_ == 0:
                warm_up[precision] = timing
            else:
                old = best.get(precision, timing)
                best[precision] = Timing(min(old.wall, timing.wall), min(old.cpu, timing.cpu))
        rounds = round_
        spent = clock() - started > BUDGET_S
        if round_ == 0:
            if spent and not _faster(warm_up["bf16"], warm_up["fp32"], 1.0):
                break
        elif spent or best["bf16"].cpu >= best["fp32"].cpu:
            break
    return Measurement(warm_up, best, rounds)


def pick(measurement: Measurement) -> str:
    """fp32, unless a timed round found bf16 faster by more than :data:`BF16_MARGIN` on the
    wall clock and in CPU time alike (a loaded host inflates the wall time of whichever pass
    it falls on, but not its CPU time; contention for the cores shows in the wall time only)."""
    best = measurement.best
    if "bf16" in best and "fp32" in best and _faster(best["bf16"], best["fp32"], BF16_MARGIN):
        return "bf16"
    return "fp32"


def choose_cpu_precision(
    run: Callable[[str], None], *, cpu: CpuDescription, identity: str, torch_version: str,
    threads: int, streams: int, batch: int, images: int = 1, path: Path | None = None,
    clock: Callable[[], float] = time.perf_counter, cpu_clock: Callable[[], float] = time.process_time,
) -> str:
    """The precision ``"auto"`` means on this CPU for this model: from the cache, else
    measured with ``run(precision)`` (one pass of ``images`` images, as ``add_many`` runs
    them) and cached."""
    if not cpu.native_bf16:
        return "fp32"
    path = cache_path() if path is None else path
    key = cache_key(cpu, identity, torch_version, threads, streams, batch)
    entry = read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16"):
        return str(entry["precision"])
    started, started_cpu = clock(), cpu_clock()
    try:
        measured = measure(run, ("fp32", "bf16"), clock, cpu_clock)
    except Exception as exc:  # e.g. an operator with no bf16 kernel: fp32, and the model's own
        # errors (if any) surface on first use as they would have
        log.warning("lookalike: precision auto could not time bf16 against fp32 (%s); using fp32", exc)
        return "fp32"
    took, took_cpu = clock() - started, cpu_clock() - started_cpu
    choice = pick(measured)
    per_image = {p: t / images for p, t in (measured.best or measured.warm_up).items()}
    log.info("lookalike: precision auto -> %s on %s (%s): per image %s (%s); measured in %.1f s "
             "(CPU %.1f s)", choice,
             cpu.model, cpu.bf16_class,
             ", ".join(f"{p} {t.wall * 1000:.0f} ms (CPU {t.cpu * 1000:.0f} ms)" for p, t in per_image.items()),
             f"fastest of {measured.rounds} timed rounds" if measured.rounds else "warm-up passes only", took, took_cpu)
    write_cache(path, key, {
        "precision": choice, "per_image_s": {p: asdict(t) for p, t in per_image.items()},
        "warm_up_s": {p: asdict(t) for p, t in measured.warm_up.items()}, "rounds": measured.rounds,
        "images_per_pass": images, "calibration_s": took, "calibration_cpu_s": took_cpu, "cpu": cpu.model, "bf16_class": cpu.bf16_class,
        "identity": identity, "torch": torch_version, "threads": threads, "streams": streams, "batch": batch,
    })
    return choice
