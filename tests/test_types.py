"""scoring/, streams/ and sinks/ type-check under `mypy --strict` (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

from streams.settings import PROJECT_ROOT


def test_mypy_strict_finds_no_issue() -> None:
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
