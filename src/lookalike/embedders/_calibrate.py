"""``precision="auto"`` on the CPU: chosen by measuring, not by a CPU flag.

A CPU with native bf16 (AVX512-BF16, AMX-BF16) may still run a model slower in bf16 than in
fp32 (AVX512-BF16 without AMX does on the figures of docs/performance.md, "Precision chosen
by measurement"). So on such a CPU the first load times a few forward passes of each
candidate and keeps the fastest: fp32 unless bf16 is faster by more than
:data:`BF16_MARGIN` (fp32 is exact). The choice is cached per CPU, model, torch version,
threads, streams and batch in ``precision.json`` of the cache directory, so it is paid once.
A CPU without native bf16 gets fp32 at once (emulated bf16 is never faster).

``LOOKALIKE_PRECISION`` (``auto``, ``fp32``, ``bf16``, ``fp16``) overrides ``"auto"``; an
explicit ``precision=`` argument overrides both. This module imports without torch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._cache import cache_root
from ..errors import ConfigurationError

log = logging.getLogger(__name__)

ENV_PRECISION = "LOOKALIKE_PRECISION"
BF16_MARGIN = 1.10  #: bf16 is chosen only when fp32 takes more than this times as long
ROUNDS = 2  #: timed passes per candidate, alternating, after one untimed warm-up each
CACHE_FORMAT = 1  #: bump when a cached choice would no longer be valid


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
    """The cached choices; empty where the file is missing, unreadable or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
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


def measure(run: Callable[[str], None], candidates: tuple[str, ...],
            clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Seconds of the fastest of :data:`ROUNDS` timed ``run(precision)`` per candidate,
    after one untimed warm-up each; the candidates alternate, so a load that comes and
    goes falls on each of them alike."""
    for precision in candidates:
        run(precision)
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(ROUNDS):
        for precision in candidates:
            start = clock()
            run(precision)
            best[precision] = min(best[precision], clock() - start)
    return best


def pick(seconds: Mapping[str, float]) -> str:
    """fp32, unless bf16 was measured faster by more than :data:`BF16_MARGIN`."""
    bf16 = seconds.get("bf16")
    if bf16 is not None and seconds["fp32"] > BF16_MARGIN * bf16:
        return "bf16"
    return "fp32"


def choose_cpu_precision(
    run: Callable[[str], None], *, cpu: CpuDescription, identity: str, torch_version: str,
    threads: int, streams: int, batch: int, path: Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> str:
    """The precision ``"auto"`` means on this CPU for this model: from the cache, else
    measured with ``run(precision)`` (one forward pass) and cached."""
    if not cpu.native_bf16:
        return "fp32"
    path = cache_path() if path is None else path
    key = cache_key(cpu, identity, torch_version, threads, streams, batch)
    entry = read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16"):
        return str(entry["precision"])
    started = clock()
    try:
        seconds = measure(run, ("fp32", "bf16"), clock)
    except Exception as exc:  # e.g. an operator with no bf16 kernel: fp32, and the model's own
        # errors (if any) surface on first use as they would have
        log.warning("lookalike: precision auto could not time bf16 against fp32 (%s); using fp32", exc)
        return "fp32"
    took = clock() - started
    choice = pick(seconds)
    log.info("lookalike: precision auto -> %s on %s (%s): %s; measured in %.1f s", choice, cpu.model,
             cpu.bf16_class, ", ".join(f"{p} {s * 1000:.0f} ms" for p, s in seconds.items()), took)
    write_cache(path, key, {"precision": choice, "seconds": seconds, "calibration_s": took, "cpu": cpu.model,
                            "bf16_class": cpu.bf16_class, "identity": identity, "torch": torch_version,
                            "threads": threads, "streams": streams, "batch": batch})
    return choice
