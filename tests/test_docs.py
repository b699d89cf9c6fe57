"""The documentation cannot drift from the code: the command pages are generated from the parser
(docs/hooks/cli_reference.py, run by `mkdocs build --strict` in `make docs`), and here every
command line written in README.md and docs/ is checked against the parser, the Outputs page
against the columns predict writes, README's links against the files, and the version against
its one source."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

import nucleiseg
from nucleiseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


def load_hook():
    spec = importlib.util.spec_from_file_location("cli_reference",
                                                  DOCS / "hooks" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_generated_reference_with_every_option():
    hook = load_hook()
    markers = set()
    for page in DOCS.rglob("*.md"):
        markers |= set(hook.MARKER.findall(page.read_text()))
    commands = subparsers()
    assert set(commands) <= markers, f"no page renders {set(commands) - markers}"
    for name, parser in commands.items():
        text = hook.render(name)
        for action in parser._actions:
            for option in action.option_strings:
                assert f"{option}" in text, (name, option)
    assert all(f"`nucleiseg {name}`" in hook.render("nucleiseg") for name in commands)


def test_unknown_command_marker_is_refused():
    with pytest.raises(ValueError, match="no such command"):
        load_hook().render("segment")


def command_lines(text: str) -> list[str]:
    """`nucleiseg COMMAND ...` lines in fenced code (continuation lines joined) and in inline
    code spans, with comments dropped."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        found += [line.split(" #")[0].strip() for line in joined.splitlines()]
    found += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line for line in found if re.match(r"nucleiseg (--debug )?[A-Za-z]+(\s|$)", line)]


def test_command_lines_in_readme_and_docs_use_real_options():
    commands = subparsers()
    checked = 0
    for page in PAGES:
        for line in command_lines(page.read_text()):
            words = line.split()
            name = words[2] if words[1] == "--debug" else words[1]
            if name not in commands:
                continue  # e.g. "nucleiseg predict's outputs" in prose is caught below anyway
            options = {o for a in commands[name]._actions for o in a.option_strings}
            used = {w.split("=")[0] for w in words if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", w)}
            assert used <= options | {"--debug"}, (page.name, line, used - options)
            checked += 1
    assert checked > 50  # the pages do show commands


def test_command_names_in_docs_exist():
    commands = set(subparsers())
    for page in PAGES:
        for line in command_lines(page.read_text()):
            words = line.split()
            name = words[2] if words[1] == "--debug" else words[1]
            assert name in commands | {"COMMAND"}, (page.name, line)


def test_outputs_page_names_every_column_predict_writes():
    from nucleiseg.algorithms.instances import COLUMNS, MICRON_COLUMNS
    from nucleiseg.io.microscopy import PLANE_COLUMNS
    from nucleiseg.pipeline.outputs import SUMMARY_COLUMNS

    text = (DOCS / "outputs.md").read_text()
    measurements = text[text.index("**`measurements.csv`**"):text.index("**`summary.csv`**")]
    summary = text[text.index("**`summary.csv`**"):text.index("## Outlines")]

    def documented(section: str) -> set[str]:
        rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
        return {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row)}

    assert documented(measurements) == {"image", *PLANE_COLUMNS, *COLUMNS, *MICRON_COLUMNS}
    assert documented(summary) == set(SUMMARY_COLUMNS)
    cells = text[text.index("## Cells and channel intensities"):]
    cells = cells[:cells.index("\n## ")]
    assert {"cell_area", "cell_area_um2"} <= documented(cells)
    for option in ("--cells", "--measure-channels"):
        assert option in cells
    stitched = text[text.index("## 3-D nuclei (`--planes stitch`)"):]
    stitched = stitched[:stitched.index("\n## ")]
    import numpy as np

    from nucleiseg.algorithms.stack3d import measure_3d
    measured = measure_3d(np.ones((2, 2, 2), np.int32), (1.0, 1.0, 1.0))[0]
    assert documented(stitched) == set(measured) - {"label"}


def test_readme_links_point_at_files_and_stays_short():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert "docs/images/overview.png" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing


def test_version_is_written_once(capsys):
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    project = pyproject.split("\n[project]\n")[1].split("\n[")[0]
    assert not re.search(r"^version\s*=", project, flags=re.M)
    assert re.search(r'^dynamic = \["version"\]', pyproject, flags=re.M)
    assert re.search(r'^version = \{attr = "nucleiseg.__version__"\}', pyproject, flags=re.M)
    first = re.search(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert first.group(1) == nucleiseg.__version__
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"nucleiseg {nucleiseg.__version__}"
