"""Two revisions of lookalike side by side in one run: does a change cost speed?

Each revision is checked out into a temporary git worktree and each benchmark runs against
it with its own ``src/`` first on ``PYTHONPATH`` (and its own copy of the benchmark script),
in ABBA order round after round, so the shared machine's noise hits both alike. Prints each
figure per round, the median of the per-round ratios after/before, and writes JSON::

    .venv/bin/python benchmarks/compare_revisions.py --before cd9059b --after HEAD --rounds 2

Benchmarks (``--only`` picks some):

- ``embed``: ``embed_throughput.py`` (c) ``add_many`` img/s, ResNet50 (random weights,
  precision auto, CPU streams), ``--images`` (default: the shared set's train/ folder);
- ``store``: ``store_scale.py`` at ``--store-n`` 2048-d vectors: insert vec/s, exact and
  ANN single-query p50 ms, ANN build s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: figure name -> (benchmark, path of keys in its JSON, True when higher is better)
FIGURES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "add_many img/s": ("embed", ("c_add_many_auto", "img_per_s"), True),
    "insert vec/s": ("store", ("insert", "vectors_per_s"), True),
    "exact p50 ms": ("store", ("store_exact", "single_p50_ms"), False),
    "ann build s": ("store", ("store_build", "build_s"), False),
    "ann p50 ms": ("store", ("store_ann", "single_p50_ms"), False),
}


def cpu_class() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    kind = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16 (no AMX)" if "avx512_bf16" in flags else "no bf16"
    return f"{model}, {kind}, {platform.machine()}"


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev],
                   check=True, capture_output=True)
    return into


def run(bench: str, tree: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    env = {"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"}
    if bench == "embed":
        out = work / "embed.json"
        cmd = [sys.executable, str(tree / "benchmarks" / "embed_throughput.py"), "--images", args.images,
               "--n", str(args.embed_n), "--rounds", "1", "--skip-tutorial", "--precision", "auto",
               "--json", str(out)]
    else:
        out = tree / "benchmarks" / "results" / f"store_scale_n{args.store_n}_d2048.json"
        cmd = [sys.executable, str(tree / "benchmarks" / "store_scale.py"), "--n", str(args.store_n),
               "--dim", "2048", "--queries", "200", "--skip", "faiss", "--workdir", str(work / "store")]
    done = subprocess.run(cmd, cwd=tree, env={**_inherited(), **env}, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"{bench} failed on {tree}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _inherited() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}


def dig(data: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return float(data) if isinstance(data, (int, float)) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="git revision of the baseline")
    ap.add_argument("--after", default="HEAD", help="git revision to compare (default HEAD)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="embed,store", help="comma list of: embed, store")
    ap.add_argument("--images", default=str(ROOT.parent / "shared" / "datasets" / "reverse_image_search" / "train"))
    ap.add_argument("--embed-n", type=int, default=96)
    ap.add_argument("--store-n", type=int, default=20_000)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "compare_revisions.json")
    args = ap.parse_args()
    benches = [b for b in ("embed", "store") if b in args.only.split(",")]
    revs = {"before": args.before, "after": args.after}
    shas = {k: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", v], check=True,
                              capture_output=True, text=True).stdout.strip() for k, v in revs.items()}
    rows: dict[str, dict[str, list[float]]] = {f: {"before": [], "after": []} for f in FIGURES
                                               if FIGURES[f][0] in benches}
    with tempfile.TemporaryDirectory(prefix="lookalike-revs-") as tmp:
        if (ROOT.parent / "shared").exists():  # benchmarks find the data set at ../shared
            (Path(tmp) / "shared").symlink_to(ROOT.parent / "shared")
        trees = {k: checkout(v, Path(tmp) / k) for k, v in revs.items()}
        try:
            for r in range(args.rounds):
                order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                for bench in benches:
                    for side in order:
                        work = Path(tmp) / f"work-{side}-{bench}-{r}"
                        work.mkdir()
                        t = time.perf_counter()
                        data = run(bench, trees[side], args, work)
                        for name, (b, keys, _) in FIGURES.items():
                            value = dig(data, keys) if b == bench else None
                            if value is not None:
                                rows[name][side].append(value)
                        print(f"round {r + 1} {bench:5s} {side:6s} ({shas[side]}) "
                              f"{time.perf_counter() - t:6.1f} s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    summary: dict[str, Any] = {}
    print(f"\n{shas['before']} -> {shas['after']} on {cpu_class()}, {args.rounds} rounds (ABBA)")
    print(f"{'figure':16s} {'before (per round)':28s} {'after (per round)':28s} after/before")
    for name, sides in rows.items():
        pairs = list(zip(sides["before"], sides["after"]))
        if not pairs:
            continue
        ratio = statistics.median(a / b for b, a in pairs if b)
        better = FIGURES[name][2]
        summary[name] = {**sides, "median_ratio_after_over_before": ratio, "higher_is_better": better}
        fmt = lambda xs: ", ".join(f"{x:.4g}" for x in xs)  # noqa: E731
        print(f"{name:16s} {fmt(sides['before']):28s} {fmt(sides['after']):28s} {ratio:.3f}"
              f" ({'higher' if better else 'lower'} is better)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"before": shas["before"], "after": shas["after"], "cpu": cpu_class(),
                                     "rounds": args.rounds, "embed_n": args.embed_n, "store_n": args.store_n,
                                     "figures": summary}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
