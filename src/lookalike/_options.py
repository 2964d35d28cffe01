"""The command-line options shared by every command that opens an index or runs a model
(``index``, ``search``, ``serve``, ``eval``): one spelling, one default, one help text.
:func:`model_options` turns them into the keyword arguments of
:func:`lookalike.registry.open_index` and :func:`lookalike.registry.make_model`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .errors import ConfigurationError
from .registry import EMBEDDERS, JPEG_DECODES, RUNTIMES, default_store_path

__all__ = [
    "add_batch_size_option",
    "add_model_options",
    "add_store_option",
    "check_calibration",
    "check_jpeg_decode",
    "model_options",
    "positive_int",
]


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``--batch-size 0`` is a usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="SPEC",
        default=None,
        help="index location: a file path, memory:, or tencent://HOST:PORT/DB/COLLECTION "
        f"(default: $LOOKALIKE_STORE or {default_store_path()})",
    )


def add_batch_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size", type=positive_int, default=None, metavar="N",
        help="images per embedding batch (default 32, or 128 when decoding in processes)",
    )


class _Runtime(argparse.Action):
    """``--runtime RUNTIME``, and ``--onnx fp32|int8``, its older spelling (``onnx-`` + the
    value): kept or appended (``eval``), remembering which spelling the user typed."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
        values: str | Sequence[Any] | None, option_string: str | None = None,
    ) -> None:
        runtime = f"onnx-{values}" if option_string == "--onnx" else str(values)
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*current, runtime] if isinstance(current, list) else runtime)
        namespace.runtime_spelling = option_string


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    compare: bool = False,
    spelling: str = "--runtime",
    embedder_default: str = "the one that built the store, else resnet50; efficientnet-lite0 works offline",
    calibration_advice: str = "pass the same folder to later commands to reuse the quantized model",
) -> None:
    """--embedder, --device, --precision, --streams, --runtime (alias --onnx), --calibration,
    --jpeg-decode.
    ``compare``: --embedder and --runtime may be repeated (``eval`` compares them).
    ``spelling``: how messages name the runtime option unless the user typed one: the
    commands that taught ``--onnx`` in 0.1 (index, search, serve) keep saying it."""
    parser.set_defaults(runtime_spelling=spelling)
    repeat = "; repeat to compare several in one table" if compare else ""
    parser.add_argument(
        "--embedder", metavar="NAME", default=[] if compare else None, action="append" if compare else "store",
        help=f"{', '.join(EMBEDDERS)}, resnet50:WEIGHTS.pth, torchvision:ARCH[:WEIGHTS] or "
        f"clip:MODEL[:WEIGHTS] (open_clip; searches by text too){repeat} "
        f"(default: {embedder_default})",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="model precision (default: auto = $LOOKALIKE_PRECISION if set, else fp16 on CUDA, and on a CPU "
        "fp32 or bf16, whichever a short timing on the model found faster, cached)",
    )
    parser.add_argument(
        "--streams", type=int, metavar="N", default=None,
        help="CPU: forward passes run side by side in N threads, each with its share of torch's "
        "threads (default: 2 when torch has 2 or more threads; 1 turns this off)",
    )
    parser.add_argument(
        "--runtime", default=[] if compare else "torch", choices=list(RUNTIMES), action=_Runtime,
        help="what runs the model: torch (default), or ONNX Runtime on the CPU ([onnx] extra, the "
        "model exported once into $LOOKALIKE_CACHE_DIR): onnx-fp32, or onnx-int8 with --calibration"
        + ("; repeat to compare them, one row per embedder and runtime" if compare else ""),
    )
    parser.add_argument("--onnx", dest="runtime", choices=["fp32", "int8"], action=_Runtime,
                        help=argparse.SUPPRESS)  # 0.1's spelling of --runtime onnx-fp32/onnx-int8
    parser.add_argument(
        "--calibration", metavar="DIR", default=None,
        help=f"images for --runtime onnx-int8 to calibrate on (up to 100, spread over the folder); "
        f"{calibration_advice}",
    )
    parser.add_argument(
        "--jpeg-decode", choices=list(JPEG_DECODES), default="cpu",
        help="where indexing decodes JPEG files for a torch model (resnet50, efficientnet-lite0, "
        "torchvision:, clip:): cpu (default), with Pillow; gpu, on the CUDA device the model runs on "
        "(other files still go through Pillow; needs --runtime torch); auto: the GPU where that can "
        "run, else the CPU. Query images are always decoded with Pillow",
    )


def check_calibration(args: argparse.Namespace, runtimes: Sequence[str]) -> None:
    """Refuse ``--calibration`` when no runtime of ``runtimes`` is ``onnx-int8``, naming the
    option as the user knows it."""
    if args.calibration and "onnx-int8" not in runtimes:
        first, other = ("--onnx int8", "--runtime onnx-int8")
        if getattr(args, "runtime_spelling", "--runtime") == "--runtime":
            first, other = other, first
        raise ConfigurationError(f"--calibration is only used with {first} ({other})")


def check_jpeg_decode(args: argparse.Namespace, runtimes: Sequence[str]) -> None:
    """Refuse ``--jpeg-decode gpu`` with an ONNX runtime among ``runtimes`` (``eval``
    compares several: refused before the first row runs, not at the ONNX one)."""
    onnx = [runtime for runtime in runtimes if RUNTIMES.get(runtime)]
    if args.jpeg_decode == "gpu" and onnx:
        spelling = getattr(args, "runtime_spelling", "--runtime")
        named = f"--onnx {onnx[0].removeprefix('onnx-')}" if spelling == "--onnx" else f"--runtime {onnx[0]}"
        raise ConfigurationError(f"--jpeg-decode gpu needs --runtime torch on CUDA; {named} runs on the CPU")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The shared model options of ``args`` as keyword arguments of
    :func:`~lookalike.registry.open_index` (``--runtime``: a single one)."""
    check_calibration(args, [args.runtime])
    check_jpeg_decode(args, [args.runtime])
    return {
        "device": args.device,
        "precision": args.precision,
        "streams": args.streams,
        "runtime": args.runtime,
        "calibration": args.calibration,
        "jpeg_decode": args.jpeg_decode,
    }
