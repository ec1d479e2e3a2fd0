"""The project's own promises: docker-compose, the pom, the README and CI agree with the code."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import yaml

from streams.settings import KAFKA_VERSION, PROJECT_ROOT, Settings, describe

ENV_NAMES = {env for env, _, _ in describe()}


def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def test_compose_runs_the_pinned_kafka_version_in_kraft_mode() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_pom_pins_the_same_kafka_version() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(PROJECT_ROOT / "infra" / "kafka" / "pom.xml")
    assert pom.find("m:properties/m:kafka.version", ns).text == KAFKA_VERSION


def test_compose_has_the_local_topology_on_the_default_ports() -> None:
    services = compose()["services"]
    defaults = Settings()
    assert {"kafka", "redis", "worker"} <= set(services)
    assert services["kafka"]["ports"] == [f"127.0.0.1:{defaults.kafka_bootstrap.split(':')[1]}:9092"]
    assert services["redis"]["ports"] == ["127.0.0.1:6379:6379"]
    assert defaults.redis_url.startswith("redis://127.0.0.1:6379")
    worker = services["worker"]
    port = worker["environment"]["LEADSTREAM_WORKER_PORT"]
    assert worker["ports"] == [f"127.0.0.1:{port}:{port}"]


def test_compose_configures_leadstream_only_with_real_settings() -> None:
    for name, service in compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("LEADSTREAM_"):
                assert variable in ENV_NAMES, f"service {name} sets {variable}, which no setting reads"
    for service in compose()["services"].values():
        if service.get("image") == "leadstream:local":
            assert service["environment"]["LEADSTREAM_KAFKA_BOOTSTRAP"] == "kafka:19092"


def test_readme_documents_every_setting() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = sorted(env for env in ENV_NAMES if f"`{env}`" not in readme)
    assert not missing, f"README lacks {missing}"


def test_readme_lists_every_command() -> None:
    from streams.cli import build_parser

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    table = (PROJECT_ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in commands if f"| `leadstream {name}" not in table)
    assert not missing, f"README's command table lacks {missing}"


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    commands = re.findall(r"^(make \w+)$", readme, flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    ci = [ln for ln in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1] == "make test"
