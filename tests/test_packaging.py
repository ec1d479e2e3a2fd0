"""leadstream as a user installs it with pip: the wheel built from this tree, unpacked where an
installer puts it, run from a directory far from the repository.

From a wheel, PROJECT_ROOT is site-packages: a file the code reads there must be in the wheel, and
nothing may be written there (pip owns it, and a user may not write to it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from streams.settings import KAFKA_VERSION, PROJECT_ROOT


def tree_files() -> list[str]:
    """The tree's files as a clone has them (tracked, and new ones not ignored), or, run from an
    unpacked sdist, which has no .git, as its SOURCES.txt lists them."""
    if not (PROJECT_ROOT / ".git").exists():
        return (PROJECT_ROOT / "leadstream.egg-info" / "SOURCES.txt").read_text().split("\n")
    return subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=True).stdout.decode().split("\0")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this tree's files: the builds run there, as setuptools leaves build/ and
    egg-info beside the sources."""
    source = tmp_path_factory.mktemp("source")
    for name in filter(None, tree_files()):
        if (PROJECT_ROOT / name).is_file():  # a file deleted but not yet staged is still listed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((PROJECT_ROOT / name).read_bytes())
    return source


@pytest.fixture(scope="module")
def sdist(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist of the tree, built by the backend pyproject.toml names (`python -m build`'s first
    step), in a folder of its own: the suite's virtualenv holds an older setuptools."""
    work = tmp_path_factory.mktemp("sdist")
    build_system = tomllib.loads((source / "pyproject.toml").read_text())["build-system"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(work / "backend"), *build_system["requires"]],
                   check=True, timeout=180)
    backend = build_system["build-backend"]
    built = subprocess.run([sys.executable, "-c", f"import sys, {backend} as b; print(b.build_sdist(sys.argv[1]))", str(work)],
                           cwd=source, env={**os.environ, "PYTHONPATH": str(work / "backend")}, capture_output=True, text=True,
                           check=True, timeout=180).stdout.splitlines()[-1]
    return work / built


@pytest.fixture(scope="module")
def site(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from the sdist, as `python -m build` and pip build one, unpacked as pip
    installs it."""
    work = tmp_path_factory.mktemp("wheel")
    with tarfile.open(sdist) as archive:
        archive.extractall(work)  # our own archive, just built
    unpacked = next(path for path in work.iterdir() if path.is_dir())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(unpacked)],
                   check=True, timeout=180)
    site = work / "site-packages"
    with zipfile.ZipFile(next((work / "dist").glob("leadstream-*.whl"))) as wheel:
        wheel.extractall(site)
    return site


def dist_info(site: Path) -> Path:
    return next(site.glob("leadstream-*.dist-info"))


def run_installed(site: Path, code: str, home: Path, **env: str) -> str:
    """What `code` prints, run with the installed copy's modules (not this tree's), from `home`,
    with no LEADSTREAM_* variable of the suite's: the defaults a pip user gets."""
    home.mkdir(parents=True, exist_ok=True)
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("LEADSTREAM_", "XDG_"))}
    result = subprocess.run([sys.executable, "-c", code], cwd=home, capture_output=True, text=True, timeout=60,
                            env={**clean, "PYTHONPATH": str(site), "HOME": str(home), **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_an_installed_leadstream_finds_the_pom_its_services_fetch_the_broker_with(site: Path, tmp_path: Path) -> None:
    # The pom lived in infra/kafka/, outside the packages: from a wheel, `leadstream services up`
    # ran `mvn -f site-packages/infra/kafka/pom.xml` and failed with "could not fetch the broker's
    # jars (Maven failed)", Maven's log saying the file does not exist.
    pom = Path(run_installed(site, "from streams.services import POM; print(POM)", tmp_path / "home"))
    assert pom.is_relative_to(site) and pom.is_file()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    assert ET.parse(pom).find("m:properties/m:kafka.version", ns).text == KAFKA_VERSION


@pytest.mark.parametrize("xdg_data_home", ["", "data"])
def test_an_installed_leadstream_keeps_its_services_and_worker_state_out_of_site_packages(
        site: Path, tmp_path: Path, xdg_data_home: str) -> None:
    # Both defaulted to PROJECT_ROOT/.services, which from a wheel is site-packages/.services:
    # `services up` put the broker's jars, Kafka's and Redis's data there, and the worker its state.
    home = tmp_path / "home"
    env = {"XDG_DATA_HOME": str(tmp_path / xdg_data_home)} if xdg_data_home else {}
    printed = run_installed(site, "from streams.settings import Settings; s = Settings(); print(s.services_dir); print(s.state_dir)",
                            home, **env)
    services_dir, state_dir = map(Path, printed.splitlines())
    data_home = tmp_path / xdg_data_home if xdg_data_home else home / ".local" / "share"
    assert (services_dir, state_dir) == (data_home / "leadstream", data_home / "leadstream" / "worker")


def test_the_wheel_carries_the_license_its_metadata_names(site: Path) -> None:
    # pyproject.toml said Apache-2.0, but the repository had no license text: neither the wheel
    # nor the sdist carried one, which the Apache License asks of every copy given (its section 4).
    metadata = (dist_info(site) / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    text = (dist_info(site) / "licenses" / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_an_installed_leadstream_shows_where_its_examples_are_and_ships_the_reference_they_cite(site: Path, tmp_path: Path) -> None:
    # README, Installing with pip: `leadstream settings` names the example models and mappings a
    # user copies. Their comments send the reader to scoring/MODELS.md, which the wheel lacked
    # (as do messages: an edit's warning, `top` of a model without [accounts]).
    printed = run_installed(site, "import sys; from streams.cli import main; sys.exit(main(['settings']))", tmp_path / "home")
    defaults = dict(line.split("=", 1) for line in printed.splitlines() if line.startswith("LEADSTREAM_"))
    models, mappings = Path(defaults["LEADSTREAM_MODELS_DIR"]), Path(defaults["LEADSTREAM_SINK_MAPPING_DIR"])
    assert models == site / "scoring" / "models" and mappings == site / "sinks" / "mappings"
    assert sorted(p.name for p in models.glob("*.toml")) == sorted(p.name for p in (PROJECT_ROOT / "scoring" / "models").glob("*.toml"))
    assert sorted(p.name for p in mappings.glob("*.toml")) == ["hubspot.toml", "salesforce.toml"]
    cited = {name for path in [*models.glob("*.toml"), *mappings.glob("*.toml")]
             for name in re.findall(r"\b(?:scoring|streams|sinks)/[\w./-]+\.[a-z]+", path.read_text())}
    missing = sorted(name for name in cited if not (site / name).is_file())
    assert cited and not missing, f"the wheel lacks {missing}: add them to package-data in pyproject.toml"


def test_an_installed_leadstream_s_demo_has_the_user_copy_the_models_to_edit_them_not_edit_pip_s_files(
        site: Path, tmp_path: Path) -> None:
    # The demo said "edit <site-packages>/scoring/models/*.toml": pip's files, which the next
    # install replaces (and a system-wide install's user cannot write).
    home = tmp_path / "home"
    said = run_installed(site, "from streams.demo import explore; from streams.settings import Settings; print(explore(Settings()))", home)
    assert str(site) not in said and "models --copy-to my-models" in said
    assert "run the worker with LEADSTREAM_MODELS_DIR=my-models" in said
    run_installed(site, "import sys; from streams.cli import main; sys.exit(main(['models', '--copy-to', 'my-models']))", home)
    assert sorted(p.name for p in (home / "my-models").iterdir()) == sorted(p.name for p in (site / "scoring" / "models").glob("*.toml"))


def test_the_sdist_is_the_whole_source_tree(source: Path, sdist: Path) -> None:
    # It held the packages, README and pyproject.toml only: not the tests, nor what README names
    # beyond the packages (the Makefile, docker-compose.yml, infra/: the Dockerfile, Prometheus's
    # configuration and alert rules, the Grafana dashboard), so a source release could neither be
    # tested nor deployed as README says.
    with tarfile.open(sdist) as archive:
        held = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    tree = {path.relative_to(source).as_posix() for path in source.rglob("*") if path.is_file()}
    assert sorted(tree - held - {".gitignore"}) == []


def test_the_wheel_holds_the_three_packages_and_nothing_else(site: Path) -> None:
    # The sdist grafts tests/ and infra/ (MANIFEST.in), and setuptools puts into the wheel any
    # file MANIFEST.in takes that lies inside a package (include-package-data): none may.
    assert sorted(path.name for path in site.iterdir()) == sorted(["scoring", "streams", "sinks", dist_info(site).name])
    assert not [path for path in site.rglob("*") if path.name == "__pycache__" or path.suffix == ".pyc"]
