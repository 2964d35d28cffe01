"""add_many on Ray (issue #18): images/s on a Ray cluster against in-process ``add_many`` on
this machine, side by side in one run (the ratio is what Ray's scheduling costs here).

    python benchmarks/ray_scaling.py --n 200 --embedder fake                  # the overhead
    python benchmarks/ray_scaling.py --n 2000 --embedder resnet50-random      # a model
    RAY_ADDRESS=auto python benchmarks/ray_scaling.py --images /nfs/photos --n 100000 \\
        --embedder resnet50 --workers 8 --gpus-per-worker 1                   # a real cluster

Each round indexes the same ``--n`` images into a fresh LocalStore twice: in process
(threads, or ``--processes`` on a GPU) and with ``engine=RayEngine(...)``; the images are
generated JPEGs (``--size``) unless ``--images`` names a folder every node sees. The Ray
cluster is started once, before the rounds (``ray.init(num_cpus=...)`` locally, or the one
``RAY_ADDRESS`` names), so its start-up is not in the figures; each Ray run still starts
its own model actors (one model load each), which is in them, as it is for a user. img/s
is the median over ``--rounds`` (range in brackets). JSON: benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lookalike import ImageSearchIndex, sources  # noqa: E402
from lookalike.embedders._calibrate import describe_cpu  # noqa: E402
from lookalike.ray_engine import RayEngine  # noqa: E402
from lookalike.registry import make_model  # noqa: E402
from lookalike.stores import LocalStore  # noqa: E402
from lookalike.testing import make_images  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def run(images: list[Path], args: argparse.Namespace, engine: RayEngine | None, where: Path) -> float:
    """Seconds for one add_many of ``images`` into a new store."""
    embedder = make_model(args.embedder, device=args.device)
    with ImageSearchIndex(embedder, LocalStore(where), batch_size=args.batch_size,
                          processes=args.processes) as index:
        started = time.perf_counter()
        report = index.add_many(images, engine=engine)
        seconds = time.perf_counter() - started
        assert len(report.added) == len(images), report
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--images", type=Path, default=None, help="a folder of images (default: generated)")
    parser.add_argument("--size", type=int, default=256, help="generated images: width and height")
    parser.add_argument("--embedder", default="fake")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", action="store_true", help="in process: decode in processes")
    parser.add_argument("--workers", type=int, default=None, help="Ray model actors")
    parser.add_argument("--gpus-per-worker", type=float, default=None)
    parser.add_argument("--cpus", type=int, default=None, help="local cluster CPUs (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    if args.images is not None:
        images = sorted(sources.from_dir(args.images))[: args.n]
    else:
        images = make_images(work / "images", args.n, size=(args.size, args.size))
    if not os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    engine = RayEngine(workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    local_s: list[float] = []
    ray_s: list[float] = []
    for r in range(args.rounds):  # alternate, so that noise on the shared machine hits both
        local_s.append(run(images, args, None, work / f"local{r}.lookalike"))
        ray_s.append(run(images, args, engine, work / f"ray{r}.lookalike"))
        print(f"round {r + 1}: in process {len(images) / local_s[-1]:.1f} img/s, "
              f"ray {len(images) / ray_s[-1]:.1f} img/s", flush=True)

    def rates(seconds: list[float]) -> dict[str, float]:
        per = sorted(len(images) / s for s in seconds)
        return {"median": round(statistics.median(per), 2), "min": round(per[0], 2), "max": round(per[-1], 2)}

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    resources = ray.cluster_resources()
    result: dict[str, Any] = {
        "n": len(images), "embedder": args.embedder, "batch_size": args.batch_size, "rounds": args.rounds,
        "images": str(args.images) if args.images else f"generated {args.size}x{args.size} JPEGs",
        "in_process": {**rates(local_s), "processes": args.processes},
        "ray": {**rates(ray_s), "workers": engine.workers, "gpus_per_worker": engine.gpus_per_worker,
                "cluster": {k: resources[k] for k in ("CPU", "GPU") if k in resources},
                "address": os.environ.get("RAY_ADDRESS") or "local"},
        "ray_over_in_process": round(statistics.median(a / b for a, b in zip(local_s, ray_s)), 3),
        "machine": {"cpu": describe_cpu().model, "cpu_count": os.cpu_count(),
                    "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
                    "load_average": os.getloadavg(), "python": platform.python_version(),
                    "ray": ray.__version__},
    }
    print(json.dumps(result, indent=2))
    out = args.out or RESULTS / f"ray_scaling-{args.embedder}-n{len(images)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    ray.shutdown()


if __name__ == "__main__":
    main()
