"""The lint gate: ruff and mypy over the tree with pyproject.toml's settings; any finding fails."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint(module: str, *args: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: run scripts/setup-host (pip install -e '.[test]')")
    # cwd=ROOT: both read ROOT/pyproject.toml, whatever directory pytest was started from.
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{module} {' '.join(args)} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)


def test_ruff() -> None:
    _lint("ruff", "check", "--no-fix", ".")


def test_ruff_format() -> None:
    _lint("ruff", "format", "--check", ".")


def test_mypy() -> None:
    _lint("mypy", "--config-file", "pyproject.toml")


def test_no_function_over_80_lines() -> None:
    """The style's limit: a longer function is split into named steps."""
    import ast

    long = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long
