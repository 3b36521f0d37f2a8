"""The layers hold: import-linter checks the contracts of pyproject.toml ([tool.importlinter]): data -> models ->
tasks -> distil/train -> evaluate -> measure -> report -> cli/serve, every module in a layer, no import cycles."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    """lint-imports on the contracts of ``folder``/pyproject.toml, over the package in ``folder``/src."""
    executable = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if executable is None:
        pytest.fail("import-linter is not installed: pip install -e '.[test]'")
    env = {**os.environ, "PYTHONPATH": str(folder / "src")}  # before the installed (editable) speedy
    result = subprocess.run([executable, "--no-cache", "--no-logo"], cwd=folder, env=env, capture_output=True,
                            text=True, timeout=300)
    result.stdout += result.stderr
    return result


def test_the_imports_keep_the_layers_and_have_no_cycles():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout
    assert "0 broken" in result.stdout


# What each probe adds to a copy of the package, and what the check must then say.
PROBES = {
    "upward import (inside a function too)": (
        "data/readers.py", "\n\ndef _probe():\n    from speedy.cli import app\n\n    return app\n",
        ["speedy.data is not allowed to import speedy.cli", "speedy.data.readers -> speedy.cli"]),
    "cycle inside a layer": (
        "data/readers.py", "\nimport speedy.data.load  # noqa: E402\n",
        ["No cycles are allowed in speedy.data", ".readers -> .load"]),
    "module in no layer": (
        "newcomer.py", '"""A module nobody placed."""\n',
        ["modules are not listed as layers", "- speedy.newcomer"]),
}


@pytest.mark.parametrize("probe", PROBES)
def test_the_check_fails_on_a_broken_contract(probe, tmp_path):
    file, text, messages = PROBES[probe]
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "speedy", tmp_path / "src" / "speedy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.tsv.xz"))
    assert lint_imports(tmp_path).returncode == 0  # the copy is checked, and passes as it is
    with open(tmp_path / "src" / "speedy" / file, "a", encoding="utf-8") as handle:
        handle.write(text)
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert all(message in result.stdout for message in messages), result.stdout
