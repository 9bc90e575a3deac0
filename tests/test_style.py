"""The code base stays ruff- and mypy-clean (the style guide's rule, enforced in CI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed (pip install -e '.[test]')")
        pytest.skip(f"{module} not installed; CI installs it")


def test_ruff_clean() -> None:
    _require("ruff")
    result = _run("ruff", "check", "gearmand_py", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    _require("mypy")
    result = _run("mypy", "gearmand_py")
    assert result.returncode == 0, result.stdout + result.stderr
