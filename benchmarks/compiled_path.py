"""Compiled and int8 forward paths against the eager bf16 production path on CPU (#7).

For ResNet50 (torchvision, random weights, fc = Identity) and EfficientNet-Lite0 (the
real offline weights, built exactly as ``EfficientNetLite0Embedder`` builds them), in one
process, interleaving all variants over ``--rounds`` rounds:

* ``eager_fp32`` / ``eager_bf16``: ``torch.inference_mode`` (+ ``torch.autocast("cpu",
  bfloat16)``), channels_last; ``eager_bf16`` is the production path and the baseline.
* ``compile_fp32`` / ``compile_bf16``: ``torch.compile`` (inductor) with
  ``freezing=True`` (constant-folds BN and weights, prepacks oneDNN weights);
  ``compile_bf16_nofreeze``: the same without freezing.
* ``ort_fp32``: ONNX Runtime (CPU EP) on a ``torch.onnx.export`` of the model;
  ``ort_int8``: that model after ``quant_pre_process`` and ``quantize_static`` (QDQ,
  per-channel s8 weights, u8 activations, MinMax calibration on ``--calib-images`` real
  images preprocessed like the model expects).
* ``pt2e_int8`` / ``pt2e_int8_bf16``: PyTorch 2 export quantization (torchao's
  ``prepare_pt2e`` / ``convert_pt2e`` with ``X86InductorQuantizer``, the route that left
  ``torch.ao.quantization`` for torchao), then ``torch.compile`` with freezing; the
  ``_bf16`` one runs the non-quantized ops under bf16 autocast. The graph is captured with
  ``torch.export.export(..., strict=True)`` (see ``pt2e_quantize``). With torch 2.14.1 and
  torchao 0.18.0 the compile step fails (torchao's freezing pattern emits
  ``onednn.qconv_prepack``, which has no fake/meta kernel in torch 2.14); the error is
  recorded. ``pt2e_int8_lowered`` runs the same quantized graph through torchao's
  ``lower_pt2e_quantized_to_x86`` instead (oneDNN int8 convolutions, no inductor codegen).

Throughput is forward-only on a random batch (``--batch`` x 3 x 224 x 224, channels_last
for torch, the same values as a contiguous NCHW array for ONNX Runtime), run for at least
``--min-seconds`` per variant per round after one untimed call. img/s is reported per round
and as the median; ratios to ``eager_bf16`` are computed within each round, then the median
taken. Start-up costs: the first call of a compiled model (compilation, with a fresh
inductor cache unless ``--warm-cache``), export / quantization / ORT session creation.

Quality (EfficientNet-Lite0 only; ResNet50 has random weights here): the reverse_image_search
set (train/ = 1,000 gallery images in 100 classes, test/ = 100 queries) is preprocessed once
with the embedder's own preprocessing and the same tensors go through every variant
(batches of ``--batch``, the last one padded); hit ratio@10 (exact cosine, same class =
relevant) and the cosine of each image's vector with its ``eager_fp32`` vector. Example::

    .venv/bin/python benchmarks/compiled_path.py --dataset ../shared/datasets/reverse_image_search
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MODELS = ("resnet50", "efficientnet_lite0")
VARIANTS = (
    "eager_fp32", "eager_bf16", "compile_fp32", "compile_bf16", "compile_bf16_nofreeze",
    "ort_fp32", "ort_int8", "pt2e_int8_lowered", "pt2e_int8", "pt2e_int8_bf16",
)
BASELINE = "eager_bf16"
REFERENCE = "eager_fp32"


def _err(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {exc}"[:2000] + "\n" + "".join(tb[-3:])[-2000:]


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- models and data


def build_model(name: str) -> tuple[Any, Any]:
    """(eval module, ImagePreprocess) for ``name``, modules in channels_last."""
    import torch

    if name == "resnet50":
        import torchvision

        from lookalike.embedders.torchvision import imagenet_preprocess

        model = torchvision.models.resnet50(weights=None)
        model.fc = torch.nn.Identity()
        preprocess = imagenet_preprocess(256, 224)  # bilinear, ImageNet mean/std
    elif name == "efficientnet_lite0":

        from lookalike.embedders.efficientnet_lite import EfficientNetLite0Embedder

        emb = EfficientNetLite0Embedder(device="cpu", precision="fp32")
        emb.load()  # builds the module (eval, channels_last) on the CPU
        model, preprocess = emb._module, emb.spec.preprocess
    else:
        raise ValueError(name)
    model = model.eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, preprocess


def load_tensors(paths: list[Path], preprocess: Any) -> Any:
    """Stack ``preprocess(load_image(p))`` for every path: ``(n, 3, H, W)`` float32, NCHW."""
    import torch

    from lookalike.images import load_image

    return torch.stack([preprocess(load_image(p, min_size=preprocess.resize)) for p in paths])


def batches(x: Any, batch: int) -> list[Any]:
    """``x`` split into batches of exactly ``batch`` rows (the last padded with row 0)."""
    import torch

    out = []
    for start in range(0, x.shape[0], batch):
        chunk = x[start : start + batch]
        if chunk.shape[0] < batch:
            pad = x[:1].expand(batch - chunk.shape[0], *x.shape[1:])
            chunk = torch.cat([chunk, pad])
        out.append(chunk.contiguous())
    return out


# ---------------------------------------------------------------- variants


class Variant:
    """A forward path: ``fn(torch_batch_channels_last, numpy_batch_nchw) -> (n, d)`` features."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fn: Callable[[Any, Any], Any] | None = None
        self.startup: dict[str, Any] = {}
        self.error: str | None = None
        self.rounds: list[float] = []

    def __call__(self, xt: Any, xn: Any) -> Any:
        assert self.fn is not None
        return self.fn(xt, xn)


def _torch_fn(module: Any, bf16: bool, grad_mode: str = "inference") -> Callable[[Any, Any], Any]:
    import contextlib

    import torch

    def fn(xt: Any, xn: Any) -> Any:
        grad = torch.inference_mode() if grad_mode == "inference" else torch.no_grad()
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with grad, amp:
            return module(xt)

    return fn


def _first_calls(v: Variant, xt: Any, xn: Any, n: int = 3) -> None:
    """Time the first ``n`` calls (compilation, oneDNN primitive creation, ORT arena...)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        v(xt, xn)
        times.append(time.perf_counter() - t)
    v.startup["first_calls_s"] = times


def build_variants(
    name: str, model: Any, calib: list[Any], xt: Any, xn: Any, args: argparse.Namespace,
    workdir: Path,
) -> list[Variant]:
    import torch

    variants: list[Variant] = []
    wanted = [v for v in args.variants.split(",") if v]
    onnx_path = workdir / f"{name}_fp32.onnx"
    converted: Any = None  # the PT2E-converted graph, shared by the pt2e variants
    pt2e_info: dict[str, Any] = {}
    for vname in wanted:
        v = Variant(vname)
        variants.append(v)
        _log(f"[{name}] building {vname} ...")
        t0 = time.perf_counter()
        try:
            if vname in ("eager_fp32", "eager_bf16"):
                v.fn = _torch_fn(model, bf16=vname.endswith("bf16"))
            elif vname.startswith("compile_"):
                if args.skip_compile:
                    raise RuntimeError("skipped (--skip-compile)")
                freezing = not vname.endswith("nofreeze")
                compiled = torch.compile(copy.deepcopy(model), options={"freezing": freezing})
                v.startup["freezing"] = freezing
                v.fn = _torch_fn(compiled, bf16="bf16" in vname)
            elif vname.startswith("ort_"):
                if args.skip_onnx:
                    raise RuntimeError("skipped (--skip-onnx)")
                path = onnx_path
                if not onnx_path.exists():
                    v.startup["export_s"] = export_onnx(model, xt, onnx_path)
                    v.startup["onnx_mib"] = onnx_path.stat().st_size / 2**20
                if vname == "ort_int8":
                    path = workdir / f"{name}_int8_qdq.onnx"
                    v.startup.update(quantize_onnx(onnx_path, path, calib, workdir))
                    v.startup["onnx_mib"] = path.stat().st_size / 2**20
                v.fn, v.startup["session_create_s"] = ort_session(path)
            elif vname.startswith("pt2e_"):
                if args.skip_pt2e:
                    raise RuntimeError("skipped (--skip-pt2e)")
                if converted is None:
                    converted, pt2e_info = pt2e_quantize(model, calib, xt, not args.pt2e_nonstrict)
                    v.startup["pt2e_built_here"] = True
                v.startup.update(pt2e_info)
                if vname == "pt2e_int8_lowered":
                    # torchao's own x86 lowering: freezing passes + constant folding into
                    # onednn qconv ops, run as an FX graph (no inductor code generation)
                    from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86

                    t = time.perf_counter()
                    with torch.no_grad():
                        lowered = lower_pt2e_quantized_to_x86(copy.deepcopy(converted), (xt,))
                    v.startup["lower_s"] = time.perf_counter() - t
                    v.startup["onednn_qconv_nodes"] = sum(
                        1 for n in lowered.graph.nodes if "qconv" in str(n.target))
                    v.fn = _torch_fn(lowered, bf16=False, grad_mode="no_grad")
                else:
                    compiled = torch.compile(copy.deepcopy(converted), options={"freezing": True})
                    v.fn = _torch_fn(compiled, bf16=vname.endswith("bf16"), grad_mode="no_grad")
            else:
                raise ValueError(f"unknown variant {vname!r}; known: {', '.join(VARIANTS)}")
            v.startup["build_s"] = time.perf_counter() - t0
            _first_calls(v, xt, xn)
            v.startup["total_to_steady_s"] = time.perf_counter() - t0
            _log(f"[{name}] {vname}: start-up {json.dumps(v.startup)}")
        except Exception as exc:  # record and go on
            v.error = _err(exc)
            v.fn = None
            _log(f"[{name}] {vname} FAILED: {v.error.splitlines()[0]}")
    return variants


def export_onnx(model: Any, xt: Any, path: Path) -> float:
    import torch

    t = time.perf_counter()
    example = (xt.contiguous(),)
    try:
        torch.onnx.export(model, example, str(path), dynamo=True, input_names=["input"],
                          output_names=["features"], external_data=False)
    except Exception as exc:
        _log(f"dynamo ONNX export failed ({type(exc).__name__}: {str(exc)[:200]}); trying dynamo=False")
        torch.onnx.export(model, example, str(path), dynamo=False, input_names=["input"],
                          output_names=["features"], opset_version=17)
    return time.perf_counter() - t


def ort_session(path: Path) -> tuple[Callable[[Any, Any], Any], float]:
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t = time.perf_counter()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - t
    in_name = sess.get_inputs()[0].name

    def fn(xt: Any, xn: Any) -> Any:
        return sess.run(None, {in_name: xn})[0]

    return fn, created


def quantize_onnx(src: Path, dst: Path, calib: list[Any], workdir: Path) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    info: dict[str, Any] = {}
    pre = workdir / (src.stem + "_pre.onnx")
    t = time.perf_counter()
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    info["quant_pre_process_s"] = time.perf_counter() - t

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": b.numpy()} for b in calib])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    import onnx

    in_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    if in_name != "input":
        raise RuntimeError(f"unexpected ONNX input name {in_name!r}")
    t = time.perf_counter()
    quantize_static(
        str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    info["quantize_static_s"] = time.perf_counter() - t
    info["calib_batches"] = len(calib)
    return info


def pt2e_quantize(model: Any, calib: list[Any], xt: Any, strict: bool) -> tuple[Any, dict[str, Any]]:
    import torch
    import torchao
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # strict=True: the default non-strict export of torch 2.14 leaves out the
    # ``source_fn_stack`` metadata that X86InductorQuantizer's pattern matching reads, so
    # the quantizer either fails (ResNet50: "Input partition has more than one output
    # node", shared ReLU modules) or annotates nothing (EfficientNet-Lite0 stays fp32).
    info: dict[str, Any] = {"torchao": torchao.__version__, "export_strict": strict}
    t = time.perf_counter()
    exported = torch.export.export(copy.deepcopy(model), (xt,), strict=strict).module()
    info["export_s"] = time.perf_counter() - t
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    t = time.perf_counter()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for b in calib:
            prepared(b.contiguous(memory_format=torch.channels_last))
    info["prepare_calibrate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    converted = convert_pt2e(prepared)
    info["convert_s"] = time.perf_counter() - t
    info["calib_batches"] = len(calib)
    info["dequantize_per_channel_nodes"] = sum(
        1 for n in converted.graph.nodes if "dequantize_per_channel" in str(n.target))
    if not info["dequantize_per_channel_nodes"]:
        raise RuntimeError(f"PT2E quantized no weights (export strict={strict}): {info}")
    return converted, info


# ---------------------------------------------------------------- measurement


def time_variant(v: Variant, xt: Any, xn: Any, batch: int, min_seconds: float) -> float:
    v(xt, xn)  # untimed: caches after switching variants
    n = 0
    t = time.perf_counter()
    while True:
        v(xt, xn)
        n += 1
        elapsed = time.perf_counter() - t
        if n >= 3 and elapsed >= min_seconds:
            return n * batch / elapsed


def features(v: Variant, x: Any, batch: int) -> Any:
    """L2-normalised float32 numpy features of all rows of ``x`` (NCHW float32)."""
    import torch

    out = []
    for b in batches(x, batch):
        bt = b.contiguous(memory_format=torch.channels_last)
        y = v(bt, b.numpy())
        y = y.float().numpy() if isinstance(y, torch.Tensor) else np.asarray(y, dtype=np.float32)
        out.append(y.reshape(y.shape[0], -1))
    f = np.concatenate(out)[: x.shape[0]].astype(np.float32)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def hit_ratio(gallery: Any, queries: Any, gl: Any, ql: Any, k: int = 10) -> float:
    top = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :k]
    return float((gl[top] == ql[:, None]).mean())


def machine_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    info["cpu_flags"] = sorted(flags & {"amx_bf16", "amx_int8", "amx_tile",
                                                        "avx512_bf16", "avx512_vnni", "avx512f"})
                    break
    except OSError:
        pass
    for mod in ("torchvision", "onnxruntime", "onnx", "onnxscript", "torchao"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as exc:
            info[mod] = f"unavailable: {type(exc).__name__}"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "reverse_image_search")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-seconds", type=float, default=4.0, help="timed seconds per variant per round")
    ap.add_argument("--calib-images", type=int, default=100, help="real images for int8 calibration")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-onnx", action="store_true")
    ap.add_argument("--skip-pt2e", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--pt2e-nonstrict", action="store_true",
                    help="export non-strictly for PT2E (torch's default; fails with torchao 0.18 on torch 2.14)")
    ap.add_argument("--warm-cache", action="store_true", help="reuse the default inductor cache (start-up then is not cold)")
    ap.add_argument("--workdir", type=Path, default=None, help="where ONNX files go (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "compiled_path.json")
    args = ap.parse_args()

    if not args.warm_cache:  # cold start-up: a fresh inductor cache, set before torch loads
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    import torch

    torch.manual_seed(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="compiled-path-"))
    workdir.mkdir(parents=True, exist_ok=True)
    gallery = sorted((args.dataset / "train").glob("*/*.JPEG"))
    queries = sorted((args.dataset / "test").glob("*/*.JPEG"))
    if not gallery or not queries:
        raise SystemExit(f"no images under {args.dataset}/train and /test")
    # calibration: spread over the gallery's classes (one per class for 100 of 1,000)
    step = max(1, len(gallery) // max(1, args.calib_images))
    calib_paths = gallery[::step][: args.calib_images]

    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "loadavg_start": list(os.getloadavg()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
        "baseline": BASELINE, "models": {},
    }
    _log(json.dumps(out["machine"]))
    for name in [m for m in args.models.split(",") if m]:
        res: dict[str, Any] = {}
        out["models"][name] = res
        t = time.perf_counter()
        model, preprocess = build_model(name)
        calib = batches(load_tensors(calib_paths, preprocess), args.batch)
        res["calibration_images"] = len(calib_paths)
        res["model_build_and_calib_load_s"] = time.perf_counter() - t
        xt = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        xn = np.ascontiguousarray(xt.numpy())  # NCHW, same values
        variants = build_variants(name, model, calib, xt, xn, args, workdir)
        live = [v for v in variants if v.fn is not None]
        for r in range(args.rounds):
            for v in live:
                if v.fn is None:
                    continue
                try:
                    v.rounds.append(time_variant(v, xt, xn, args.batch, args.min_seconds))
                except Exception as exc:
                    v.error, v.fn = _err(exc), None
                    continue
            _log(f"[{name}] round {r + 1}: " + ", ".join(
                f"{v.name} {v.rounds[-1]:.1f}" for v in live if v.rounds and len(v.rounds) == r + 1) + " img/s")
        base = next((v for v in variants if v.name == BASELINE and v.rounds), None)
        for v in variants:
            entry: dict[str, Any] = {"startup": v.startup}
            if v.error:
                entry["error"] = v.error
            if v.rounds:
                entry["img_per_s_rounds"] = v.rounds
                entry["img_per_s_median"] = statistics.median(v.rounds)
                if base is not None and len(base.rounds) == len(v.rounds):
                    ratios = [a / b for a, b in zip(v.rounds, base.rounds)]
                    entry["ratio_to_eager_bf16_rounds"] = ratios
                    entry["ratio_to_eager_bf16_median"] = statistics.median(ratios)
            res.setdefault("variants", {})[v.name] = entry
        if name == "efficientnet_lite0" and not args.skip_quality:
            res["quality"] = quality(variants, gallery, queries, preprocess, args.batch)
        del model, variants, live
        torch._dynamo.reset()

    out["loadavg_end"] = list(os.getloadavg())
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    summary(out)
    _log(f"wrote {args.json}")


def quality(variants: list[Variant], gallery: list[Path], queries: list[Path], preprocess: Any,
            batch: int) -> dict[str, Any]:
    t = time.perf_counter()
    xg, xq = load_tensors(gallery, preprocess), load_tensors(queries, preprocess)
    gl = np.array([p.parent.name for p in gallery])
    ql = np.array([p.parent.name for p in queries])
    q: dict[str, Any] = {"preprocess_s": time.perf_counter() - t, "gallery": len(gallery),
                         "queries": len(queries), "k": 10}
    _log(f"quality: preprocessed {len(gallery)} + {len(queries)} images in {q['preprocess_s']:.1f} s")
    vecs: dict[str, tuple[Any, Any]] = {}
    for v in variants:
        if v.fn is None:
            continue
        t = time.perf_counter()
        try:
            vecs[v.name] = (features(v, xg, batch), features(v, xq, batch))
        except Exception as exc:
            q[v.name] = {"error": _err(exc)}
            continue
        g, qq = vecs[v.name]
        q[v.name] = {"hit_ratio_at_10": hit_ratio(g, qq, gl, ql), "embed_s": time.perf_counter() - t}
    if REFERENCE in vecs:
        g0, q0 = vecs[REFERENCE]
        ref_hr = q[REFERENCE]["hit_ratio_at_10"]
        for name, (g1, q1) in vecs.items():
            cos = np.concatenate([(g0 * g1).sum(1), (q0 * q1).sum(1)])
            q[name].update({
                "mean_cosine_vs_fp32": float(cos.mean()), "min_cosine_vs_fp32": float(cos.min()),
                "hit_ratio_delta_vs_fp32": q[name]["hit_ratio_at_10"] - ref_hr,
                "hit_ratio_gallery_variant_queries_fp32": hit_ratio(g1, q0, gl, ql),
            })
    for name in vecs:
        _log(f"quality {name}: {json.dumps({k: v for k, v in q[name].items() if k != 'embed_s'})}")
    return q


def summary(out: dict[str, Any]) -> None:
    for name, res in out["models"].items():
        _log(f"\n{name}: variant | img/s median (rounds) | ratio to {BASELINE} median | start-up to steady")
        for vname, e in res.get("variants", {}).items():
            if "img_per_s_median" not in e:
                _log(f"  {vname:24s} FAILED/SKIPPED: {e.get('error', '').splitlines()[0] if e.get('error') else ''}")
                continue
            rounds = "/".join(f"{r:.1f}" for r in e["img_per_s_rounds"])
            ratio = e.get("ratio_to_eager_bf16_median", float("nan"))
            _log(f"  {vname:24s} {e['img_per_s_median']:7.1f} ({rounds}) | x{ratio:.2f} | "
                 f"{e['startup'].get('total_to_steady_s', float('nan')):.1f} s")
        for vname, qv in res.get("quality", {}).items():
            if isinstance(qv, dict) and "hit_ratio_at_10" in qv:
                _log(f"  quality {vname:24s} hit@10 {qv['hit_ratio_at_10']:.3f} "
                     f"mean cos vs fp32 {qv.get('mean_cosine_vs_fp32', float('nan')):.5f} "
                     f"min {qv.get('min_cosine_vs_fp32', float('nan')):.4f}")


if __name__ == "__main__":
    main()
