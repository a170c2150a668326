"""The code stays lint-clean: ruff with the repository's own config (pyproject.toml: E/F/W/I, 120 columns)
over every folder of Python we ship or test, so a long line or an unsorted import fails here, not in review."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("haruhi_tui", "trainer", "convert", "tests", "benchmarks")


def ruff_command() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed: pip install -e '.[dev]' installs it")
    return [found]


def test_ruff_check_is_clean():
    result = subprocess.run(
        [*ruff_command(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), *FOLDERS],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"
