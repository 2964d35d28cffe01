"""``lookalike eval DATASET``: retrieval quality of one or more embedders, in one table."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._checks import positive_int
from .._options import (
    add_batch_size_option,
    add_model_options,
    check_calibration,
    check_jpeg_decode,
)
from ..errors import ConfigurationError, quote_name
from ..registry import RUNTIMES, check_onnx_options, make_model, open_index
from ..sources import Item
from ..types import Text
from .datasets import load_dataset
from .evaluation import EvalReport, Query, evaluate
from .report import format_table, write_html

__all__ = ["add_command", "cmd_eval", "text_queries"]

def add_command(subparsers: Any) -> None:
    """Register the ``eval`` subcommand on the main parser's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="measure retrieval quality (mHR@k, mAP@k) on a labelled data set",
        description="Index a data set's gallery with each embedder, search with its queries and "
        "report mHR@k, Towhee-style mAP@k, standard mAP@k and recall@1 (--text-queries: search by each "
        "class name as text instead, for CLIP models). DATASET is either the "
        "Towhee layout (train/, test/, reverse_image_search.csv) or one folder per class (then "
        "--queries-per-class images per class are held out as queries, drawn with --seed).",
    )
    p.add_argument("dataset", metavar="DATASET", help="data set folder")
    p.add_argument("--store", metavar="SPEC", default=None,
                   help="store for the gallery (default: a fresh in-memory store per embedder); "
                   "a file path keeps the embeddings for the next run, one embedder only")
    p.add_argument("--refine", action="append", default=[], metavar="SPEC",
                   help="query refinement per row: none, qe or qe:top=N,alpha=A (alpha query "
                   "expansion); repeat to compare (default: none)")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--queries-per-class", type=int, default=1, metavar="N",
                   help="folder-per-class layout: images held out per class as queries (default 1)")
    p.add_argument("--seed", type=int, default=0, help="folder-per-class layout: query draw seed (default 0)")
    p.add_argument("--text-queries", action="store_true",
                   help="text-to-image retrieval: one text query per query class instead of the query images, "
                   "the class name in --text-template (needs a model with a text tower: --embedder clip...)")
    p.add_argument("--text-template", default="a photo of a {}", metavar="TEMPLATE",
                   help="--text-queries: the text of a class, {} replaced by its name with _ as spaces "
                   "(default: 'a photo of a {}')")
    add_batch_size_option(p)
    add_model_options(p, compare=True, embedder_default="efficientnet-lite0",
                      calibration_advice="use images that are not in the data set, or the figures "
                      "flatter int8")
    p.add_argument("--json", action="store_true", help="print JSON (summary and per-query rows)")
    p.add_argument("--html", metavar="FILE", default=None,
                   help="write a self-contained HTML page: table, then every query's top-k, worst first")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)


def text_queries(labels: list[str], template: str) -> list[Query]:
    """One :class:`~lookalike.Text` query per class: ``template`` with the class name (``_`` as
    spaces), relevant = the gallery images of that class."""
    if template.count("{}") != 1:
        raise ConfigurationError(f"--text-template needs exactly one {{}} for the class name, got {template!r}")
    out = []
    for label in labels:
        text = template.replace("{}", label.replace("_", " "))
        out.append(Query(Text(text), label=label, name=text))
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from ..refine import parse_refinement
    from ..stores.memory import InMemoryStore

    positive_int(args.k, "-k")
    names = args.embedder or ["efficientnet-lite0"]
    if args.store is not None and len(names) > 1:
        raise ConfigurationError("--store holds one embedder's vectors; leave it out to compare several")
    runtimes = args.runtime or ["torch"]
    check_calibration(args, runtimes)
    check_jpeg_decode(args, runtimes)
    if "onnx-int8" in runtimes:
        check_onnx_options("int8", args.calibration)
    if args.store is not None and len(runtimes) > 1:
        raise ConfigurationError("--store holds one embedder's vectors; leave it out to compare runtimes")
    refinements = [parse_refinement(s) for s in (args.refine or ["none"])]
    data = load_dataset(args.dataset, queries_per_class=args.queries_per_class, seed=args.seed)
    progress = not args.quiet and not args.json
    if progress:
        print(f"data set: {data}", file=sys.stderr)
    gallery = [Item(g.path, metadata={"label": g.label}) for g in data.gallery]
    queries = (text_queries(sorted({q.label for q in data.queries}), args.text_template) if args.text_queries
               else [Query(q.path, label=q.label, name=q.path.relative_to(data.root).as_posix())
                     for q in data.queries])
    reports: list[EvalReport] = []
    rows = [(name, runtime) for name in names for runtime in runtimes]
    for name, runtime in rows:
        onnx = RUNTIMES[runtime]
        embedder = make_model(name, device="cpu" if onnx else args.device, precision=args.precision,
                              streams=args.streams, runtime=runtime,
                              calibration=args.calibration if onnx == "int8" else None,
                              jpeg_decode=args.jpeg_decode)
        label = name if onnx is None else f"{name} {runtime}"
        store = args.store if args.store is not None else InMemoryStore()
        with open_index(store, embedder, create=True, batch_size=args.batch_size) as index:
            index.create_schema()
            added = index.add_many(gallery, progress=progress)
            for failure in added.failed:
                print(f"lookalike: skipped {quote_name(failure.source)}: {failure.reason}", file=sys.stderr)
            for refine in refinements:
                report = evaluate(index, queries, k=args.k, refine=refine, name=label, progress=progress)
                report.index_seconds = added.seconds
                reports.append(report)
    if args.json:
        json.dump({"dataset": str(data), "reports": [r.to_dict() for r in reports]}, sys.stdout,
                  indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(format_table(reports))
    if args.html:
        path = write_html(reports, args.html, title=f"lookalike eval: {data.root.name}", notes=[str(data)])
        if not args.json:
            print(f"wrote {path}")
    return 0
