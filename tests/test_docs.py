"""Docs stay honest: the CLI reference matches --help, links resolve, every command is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "cli_reference.py"), "--check"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


def test_every_command_has_help_and_a_docs_section() -> None:
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    choices_help = {a.dest: a.help for a in next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction))._choices_actions}
    for name in commands:
        assert choices_help.get(name), f"command {name!r} has no one-line help"
        assert f"### `lookalike {name}`" in cli_doc


@pytest.mark.parametrize("doc", sorted(p.name for p in (ROOT / "docs").glob("*.md")) + ["../README.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = (ROOT / "docs" / doc).resolve()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


def test_changelog_has_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert "Keep a Changelog" in text


PROJECT = "https://github.com/lookalike/lookalike"


def _readme_targets() -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())


def test_readme_links_are_absolute_for_pypi() -> None:
    """PyPI renders README.md away from the repository: relative links and images break there."""
    targets = _readme_targets()
    assert targets
    for target in targets:
        assert target.startswith(("https://", "#")), f"README.md links to relative {target!r}"


def test_readme_links_into_the_project_name_files_that_exist() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert any("notebook-results.png" in i for i in images)
    for target in _readme_targets():
        if not target.startswith(PROJECT + "/"):
            continue
        kind, branch, path = target[len(PROJECT) + 1 :].split("#")[0].split("/", 2)
        assert (kind, branch) in {("blob", "main"), ("tree", "main"), ("raw", "main")}, target
        assert (ROOT / path).exists(), f"README.md links to missing {path}"
        assert (kind == "raw") == (target in images), f"images need raw/ URLs, pages blob/: {target}"


def test_readme_documents_cpu_torch_and_every_extra() -> None:
    import tomllib

    text = (ROOT / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in extras:
        assert f"[{extra}]" in text or f"[all,{extra}" in text or f",{extra}]" in text, extra
    assert '"lookalike[ann]"' in text and "`[dev]`" in text and "`[bench]`" in text


def test_project_urls_for_pypi() -> None:
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert {"Homepage", "Source", "Issues", "Documentation", "Changelog"} <= set(urls)
    assert all(url.startswith(PROJECT) for url in urls.values())
    assert urls["Issues"] == PROJECT + "/issues"


def test_help_points_to_docs_that_pip_users_can_reach() -> None:
    help_text = build_parser().format_help()
    url = re.search(r"https://\S+", help_text)
    assert url is not None and url.group(0).startswith(PROJECT + "/blob/main/docs/")
    assert (ROOT / url.group(0).split("/blob/main/", 1)[1]).exists()


def test_architecture_names_only_what_exists() -> None:
    """docs/architecture.md is the map: every module, file and dotted name it gives exists."""
    import importlib
    import re

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    src = ROOT / "src" / "lookalike"
    names = set(re.findall(r"`(lookalike(?:\.\w+)+)`", text))
    names |= {f"lookalike.{n}" for n in re.findall(r"`(_\w+\.\w+(?:\.\w+)?)(?:\(\))?`", text) if not n.endswith(".py")}
    assert len(names) > 10
    for name in sorted(names):
        module, attrs = name, []
        while True:
            try:
                obj = importlib.import_module(module)
                break
            except ImportError:
                module, _, attr = module.rpartition(".")
                attrs.insert(0, attr)
                assert module, f"docs/architecture.md names {name}, which does not exist"
        for attr in attrs:
            assert hasattr(obj, attr), f"docs/architecture.md names {name}, which does not exist"
            obj = getattr(obj, attr)
    files = set(re.findall(r"`((?:stores|serve|embedders)/[\w/]+\.py|_\w+\.py|\w+\.py)`", text))
    for file in sorted(files):
        hits = [p for p in src.rglob(Path(file).name) if p.as_posix().endswith(file)]
        assert hits, f"docs/architecture.md names {file}, which is not in src/lookalike"
    for module in re.findall(r"`(_\w+)`", text):  # LocalStore's modules: stores/local/_x.py
        if not any(src.rglob(f"{module}.py")):
            raise AssertionError(f"docs/architecture.md names {module}, which is no module")
