"""``lookalike dupes``: groups of near-duplicate images in an index, and what to do with them.

Nothing on disk changes unless ``--move-to DIR`` *and* ``--apply`` are given: then every
image of a group but its representative is moved (never deleted, never overwriting a
file) into ``DIR`` and its record removed from the index.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import registry
from ._options import add_store_option
from .errors import ConfigurationError, quote_name

if TYPE_CHECKING:
    from .index import ImageSearchIndex

__all__ = ["add_command", "cmd_dupes"]


def add_command(subparsers: Any) -> None:
    """Register the ``dupes`` subcommand on the main parser's subparsers."""
    p = subparsers.add_parser(
        "dupes",
        help="find groups of near-duplicate images in the index",
        description="Group the stored images that are near-duplicates of each other (re-saved, resized, "
        "cropped, recompressed, brightened, watermarked, slightly rotated): pairs whose cosine "
        "similarity is at least the threshold, joined into groups (connected components), each led by "
        "its representative. Uses the stored vectors only: no model runs. Nothing is moved or deleted "
        "unless --move-to DIR and --apply are both given.",
    )
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="cosine similarity from which two images are duplicates (default: the one "
                   "calibrated for the store's model; 0.90 with a warning for a model without one)")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help="only images whose metadata matches, as in 'lookalike search'")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--report", metavar="FILE", default=None,
                   help="write a self-contained HTML page: each group as a row of thumbnails with scores")
    p.add_argument("--move-to", metavar="DIR", default=None,
                   help="plan to move every image of a group but its representative into DIR (created if "
                   "missing; an existing file there is never overwritten) and drop its record; a dry run "
                   "that only prints the plan unless --apply is given")
    p.add_argument("--apply", action="store_true", help="with --move-to: really move the files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_store_option(p)
    p.set_defaults(func=cmd_dupes)


def _filter(pairs: list[str]) -> dict[str, list[str]] | None:
    from .cli import _parse_pairs

    flt: dict[str, list[str]] = {}
    for key, value in _parse_pairs(pairs, "--filter"):
        values = flt.setdefault(key, [])
        values += [v for v in value.split(",") if v not in values]
    return flt or None


def cmd_dupes(args: argparse.Namespace) -> int:
    from .cli import _print_json
    from .duplicates import UncalibratedThresholdWarning

    if args.apply and not args.move_to:
        raise ConfigurationError("--apply needs --move-to DIR (the folder the duplicates are moved to)")
    target = _check_target(args.move_to) if args.move_to else None
    with registry.open_index(args.store, model=False) as index:
        if index.schema is None:
            raise ConfigurationError(f"{index.store!r} holds no images yet: run 'lookalike index' first")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UncalibratedThresholdWarning)
            groups = index.find_duplicates(args.threshold, filter=_filter(args.filter),
                                           progress=not args.quiet and not args.json)
        for w in caught:
            print(f"lookalike: warning: {w.message}", file=sys.stderr)
        moves = _plan(groups, target) if target is not None else []
        planned = len(moves)
        failed = _apply(moves, index) if args.apply else 0
    if args.report:
        from .eval.duplicates_report import write_html

        path = write_html(groups, args.report, notes=(f"store: {args.store or 'default'}",))
        if not args.json:
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        data = groups.to_dict()
        if target is not None:
            data["moves"] = [{"id": i, "from": s, "to": d, "done": args.apply} for i, s, d in moves]
        _print_json(data)
    else:
        _print_text(groups, moves, args.apply, planned if target is not None else None)
    return 1 if failed else 0


def _check_target(text: str) -> Path:
    target = Path(text).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigurationError(f"--move-to {quote_name(text)} is a file, not a folder")
    return target


def _plan(groups: Any, target: Path) -> list[tuple[str, str, str]]:
    """(id, source, destination) for every duplicate with a file; names made unique in ``target``."""
    moves = []
    taken: set[str] = set()
    kept = {os.path.realpath(g.representative.path) for g in groups if g.representative.path}
    for group in groups:
        for hit in group.duplicates:
            if hit.path is None or os.path.realpath(hit.path) in kept:  # no file, or the kept file itself
                continue
            name = Path(hit.path).name
            stem, suffix = os.path.splitext(name)
            n = 1
            while name in taken or (target / name).exists() or os.path.lexists(target / name):
                name = f"{stem}-{n}{suffix}"
                n += 1
            taken.add(name)
            moves.append((hit.id, hit.path, str(target / name)))
    return moves


def _apply(moves: list[tuple[str, str, str]], index: ImageSearchIndex) -> int:
    """Move the files (never overwriting) and drop their records; return how many failed.

    The failed ones are taken out of ``moves``, so what is printed afterwards is what moved.
    """
    failed = 0
    done = []
    for rid, source, dest in moves:
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.lexists(dest):
                raise FileExistsError(f"{dest} exists")
            shutil.move(source, dest)
        except OSError as exc:
            failed += 1
            reason = exc.strerror or str(exc)
            print(f"lookalike: error: cannot move {quote_name(source)}: {reason}", file=sys.stderr)
            continue
        index.delete([rid])
        done.append((rid, source, dest))
    moves[:] = done
    return failed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_text(groups: Any, moves: list[tuple[str, str, str]], applied: bool, planned: int | None) -> None:
    for number, group in enumerate(groups, 1):
        print(f"# group {number}: {len(group)} images")
        for i, hit in enumerate(group):
            mark = "keep" if i == 0 else f"{hit.score:.4f}"
            print(f"  {mark:>6}  {quote_name(hit.path or hit.id)}")
    extra = sum(len(g) - 1 for g in groups)
    print(f"{_count(len(groups), 'group')}, {_count(extra, 'duplicate')} beyond the first of each group "
          f"(threshold {groups.threshold:.3f})")
    if planned is None:
        return
    if applied:
        print(f"moved {_count(len(moves), 'file')}" + (f" of {planned}" if len(moves) != planned else "")
              + ("" if not moves else ":"))
    else:
        print(f"would move (dry run; add --apply to move) {_count(len(moves), 'file')}" + ("" if not moves else ":"))
    for _, source, dest in moves:
        print(f"  {quote_name(source)} -> {quote_name(dest)}")
