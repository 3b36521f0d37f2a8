"""Every distribution the package imports is declared in pyproject.toml (deptry), so a fresh install works."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def deptry(folder: Path) -> subprocess.CompletedProcess:
    executable = shutil.which("deptry", path=str(Path(sys.executable).parent)) or shutil.which("deptry")
    if executable is None:
        pytest.fail("deptry is not installed: pip install -e '.[test]'")
    result = subprocess.run([executable, "--no-ansi", "src"], cwd=folder, capture_output=True, text=True, timeout=300)
    result.stdout += result.stderr  # deptry reports on stderr
    return result


def test_every_import_of_the_package_is_declared():
    result = deptry(ROOT)
    assert result.returncode == 0, result.stdout


def test_the_check_fails_on_an_undeclared_or_transitive_only_import(tmp_path):
    """transformers pulls in huggingface_hub; importing it without declaring it works only by accident."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "probe"\nversion = "0"\ndependencies = ["transformers"]\n', "utf-8")
    (tmp_path / "src" / "probe").mkdir(parents=True)
    (tmp_path / "src" / "probe" / "__init__.py").write_text(
        "import transformers\nimport huggingface_hub\nimport seqeval_not_installed\n", "utf-8")
    result = deptry(tmp_path)
    assert result.returncode == 1
    assert "DEP003 'huggingface_hub'" in result.stdout and "DEP001 'seqeval_not_installed'" in result.stdout
