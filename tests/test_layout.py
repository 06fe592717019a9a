"""The README's concept-to-file table ("What is in the box") matches the code: each name in a row's `defines` column
is defined at module level in exactly one file of `src/`, and that file is one the row names (a file, or a file in a
folder it names); every module of the package is named by some row. And the shipped code has no undefined or unused
names (pyflakes' rules)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SRC = ROOT / "src"


def table_rows() -> list[tuple[str, list[str], list[str]]]:
    """(concept, defined names, places) of each row of the README's table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What is in the box", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("concept", "---"):
            continue
        concept, defines, where = cells
        places = re.findall(r"`([^`]+)`", where.split("(", 1)[0])  # a parenthesis adds context, not places
        rows.append((concept, re.findall(r"`([^`]+)`", defines), places))
    return rows


def module_level_names(path: Path) -> set[str]:
    """Classes, functions and variables a module defines at its top level (inside module-level if/try too)."""
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    return names


# The shipped nano's code files are links to the package's own files (one copy of the source): not counted twice.
SOURCES = {path: module_level_names(path) for path in sorted(SRC.rglob("*.py")) if not path.is_symlink()}
ROWS = table_rows()


def test_the_table_is_parsed():
    assert len(ROWS) >= 20
    assert ("image processor, PIL backend", ["BlueLMVImageProcessorPil"],
            ["src/bluelm_hf/image_processing_pil_bluelm_v.py"]) in ROWS


@pytest.mark.parametrize("concept, names, places", ROWS, ids=[row[0][:40] for row in ROWS])
def test_each_concept_is_defined_once_in_the_place_it_names(concept, names, places):
    for place in places:
        assert (ROOT / place).exists(), f"{concept!r}: {place} does not exist"
    for name in names:
        owners = [path.relative_to(ROOT).as_posix() for path, defined in SOURCES.items() if name in defined]
        assert len(owners) == 1, f"{concept!r}: `{name}` is defined in {owners or 'no file of src/'}, not once"
        owner = owners[0]
        assert any(owner == place or (place.endswith("/") and owner.startswith(place)) for place in places), (
            f"{concept!r}: `{name}` is defined in {owner}, which the README's row does not name ({places})"
        )


def test_every_module_of_the_package_is_in_the_table():
    named = {place for _, _, places in ROWS for place in places}
    for path in SOURCES:
        relative = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" and path.parent == SRC / "bluelm_hf":
            continue
        assert any(relative == place or (place.endswith("/") and relative.startswith(place)) for place in named), (
            f"{relative} is in no row of the README's concept table"
        )


def test_no_undefined_or_unused_names_in_the_shipped_code():
    """pyflakes' rules (ruff `F`) over what users run: src/, recipes/, bench/, spaces/. An undefined name is a
    NameError on whichever path no test takes: an ExecuTorch branch of the export manifest once called a function
    removed long before, and a refactor dropped a local that the .pte tracing used further down."""
    import subprocess
    import sys

    folders = [str(ROOT / f) for f in ("src", "recipes", "bench", "spaces")]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F", "--output-format", "concise", *folders],
        capture_output=True, text=True, check=False,
    )
    assert "No module named ruff" not in result.stderr, "ruff is a dev extra: pip install -e '.[all]'"
    assert result.returncode == 0, result.stdout + result.stderr
