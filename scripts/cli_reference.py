"""Regenerate the reference part of docs/cli.md from the CLI's own --help texts.

    .venv/bin/python scripts/cli_reference.py          # rewrite docs/cli.md in place
    .venv/bin/python scripts/cli_reference.py --check  # exit 1 if docs/cli.md is stale

The test suite runs the check, so the documented options never drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lookalike.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BEGIN = "<!-- BEGIN GENERATED REFERENCE: scripts/cli_reference.py -->"
END = "<!-- END GENERATED REFERENCE -->"


def reference() -> str:
    parser = build_parser()
    parser.prog = "lookalike"
    parts = ["```text", _help(parser), "```"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        parts += ["", f"### `lookalike {name}`", "", "```text", _help(sub), "```"]
    return "\n".join(parts)


def _help(parser: argparse.ArgumentParser) -> str:
    import os

    os.environ["COLUMNS"] = "100"
    text = parser.format_help().rstrip()
    # the default store path depends on the user's home: show the documented form
    from lookalike.registry import default_store_path

    return text.replace(str(default_store_path()), "~/.local/share/lookalike/index.lookalike")


def render(current: str) -> str:
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{reference()}\n{END}{tail}"


def main() -> int:
    check = "--check" in sys.argv[1:]
    current = DOC.read_text()
    updated = render(current)
    if check:
        if updated != current:
            print(f"{DOC} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
