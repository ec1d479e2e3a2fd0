"""Fetching promtool from Debian's prometheus package, for the alert rules' tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from streams.errors import ServiceError
from streams.promtool import ensure_promtool, fetch


def test_only_promtool_is_kept_of_the_package_and_it_runs(tmp_path: Path) -> None:
    target = tmp_path / "promtool" / "bin" / "promtool"
    fetch(target)
    version = subprocess.run([str(target), "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert version.stdout.startswith("promtool, version 2.")
    # Nothing else of the package's 19 MB is kept: no .deb, no prometheus server, no unpacked tree.
    kept = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    assert kept == ["promtool/bin/promtool", "promtool/logs/apt.log"]
    assert ensure_promtool(tmp_path) == target  # fetched once, then taken as it is


def test_a_machine_without_apt_is_told_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no promtool, no apt-get, no dpkg-deb
    with pytest.raises(ServiceError, match=r"^promtool: missing, and this machine has no apt-get .* install Prometheus's promtool"):
        ensure_promtool(tmp_path)
    assert not (tmp_path / "promtool").exists()
