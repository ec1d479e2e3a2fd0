"""promtool, Prometheus's rule checker, fetched once so that the tests evaluate the alert rules.

The compose file runs prom/prometheus v2.55.1, but Docker does not run on every machine the tests
run on. Debian's `prometheus` package (2.42 in bookworm) has a promtool that parses and evaluates
the same rule language, and apt can fetch it like redis-server. It is downloaded, not installed
(`apt-get download`: no Prometheus server is set up, nor anything of the machine's changed),
unpacked with dpkg-deb, and only usr/bin/promtool is kept, under LEADSTREAM_SERVICES_DIR as the
broker's jars are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from streams.errors import ServiceError
from streams.services import apt_get

PACKAGE = "prometheus"
INSTALL = ("install Prometheus's promtool and put it on PATH (Debian: apt-get install prometheus; "
           "elsewhere: the release archive from https://prometheus.io/download/)")


def ensure_promtool(services_dir: Path) -> Path:
    """A promtool that runs: the one fetched before, else one on PATH, else fetched now."""
    fetched = services_dir / "promtool" / "bin" / "promtool"
    if fetched.exists():
        return fetched
    on_path = shutil.which("promtool")
    if on_path is not None:
        return Path(on_path)
    fetch(fetched)
    return fetched


def fetch(target: Path) -> None:
    """Download Debian's prometheus package and keep its promtool at `target`.

    The binary is moved there last, in one rename: a fetch that stopped half-way (Ctrl-C, disk
    full) leaves no promtool that `ensure_promtool` would take for a whole one.
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ServiceError(f"promtool: missing, and this machine has no apt-get and dpkg-deb to fetch it; {INSTALL}")
    home = target.parent.parent
    log = home / "logs" / "apt.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # A folder of its own: two test runs fetching at once must not unpack into each other's.
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=home))
    try:
        with open(log, "wb") as out:
            deb = _download(work, out, log)
            unpacked = work / "root"
            if subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], cwd=work, stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode != 0:
                raise ServiceError(f"promtool: `dpkg-deb -x {deb.name}` failed; log: {log}")
        binary = unpacked / "usr" / "bin" / "promtool"
        if not binary.exists():
            raise ServiceError(f"promtool: Debian's {PACKAGE} package ({deb.name}) has no usr/bin/promtool; {INSTALL}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(binary, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download(work: Path, out: IO[bytes], log: Path) -> Path:
    """The package's .deb in `work`; the package lists are updated first when they do not name it
    (a fresh image has none), which only root may do."""
    download = ["download", "-q", PACKAGE]
    if apt_get(download, out, work) != 0:
        if os.geteuid() != 0:
            raise ServiceError(f"promtool: `apt-get download {PACKAGE}` failed; run `sudo apt-get update` and try again, "
                               f"or {INSTALL}; log: {log}")
        if apt_get(["update", "-q"], out, work) != 0 or apt_get(download, out, work) != 0:
            raise ServiceError(f"promtool: `apt-get download {PACKAGE}` failed (after `apt-get update`); {INSTALL}; log: {log}")
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise ServiceError(f"promtool: `apt-get download {PACKAGE}` left no .deb in {work}; log: {log}")
    return debs[0]

