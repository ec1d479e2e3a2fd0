"""The project's own promises: docker-compose, the pom, the README and CI agree with the code."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest
import yaml

from streams.deadletter import DeadLetter
from streams.offline import score_file
from streams.services import REDIS_DURABILITY_ARGS
from streams.settings import KAFKA_VERSION, PROJECT_ROOT, Settings, describe

ENV_NAMES = {env for env, _, _ in describe()}


def compose() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())


def test_compose_runs_the_pinned_kafka_version_in_kraft_mode() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_compose_keeps_kafka_and_redis_data_in_their_volumes() -> None:
    """A volume mounted where the service writes nothing leaves the data in the container, lost
    when it is recreated: the apache/kafka image writes to /tmp/kraft-combined-logs unless
    KAFKA_LOG_DIRS says otherwise, the redis image to /data."""
    services = compose()["services"]
    kafka_mounts = [v.split(":")[1] for v in services["kafka"]["volumes"] if v.split(":")[0] in compose()["volumes"]]
    assert kafka_mounts == [services["kafka"]["environment"].get("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs")]
    redis_mounts = [v.split(":")[1] for v in services["redis"]["volumes"] if v.split(":")[0] in compose()["volumes"]]
    assert redis_mounts == ["/data"] and "--dir" not in services["redis"]["command"]


def test_compose_runs_redis_as_services_up_does() -> None:
    """Snapshots alone lost the erasure records a quiet Redis took before a crash (README: What
    Redis leadstream needs); compose ran `--save "60 1000" --appendonly no`."""
    assert compose()["services"]["redis"]["command"] == ["redis-server", *REDIS_DURABILITY_ARGS]


def test_pom_pins_the_same_kafka_version() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(PROJECT_ROOT / "streams" / "kafka.pom.xml")
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


def test_compose_kafka_is_configured_as_the_local_broker(tmp_path: Path) -> None:
    # It lacked the segment size and the log cleaner's buffer `services up` gives the local one.
    from streams.services import Kafka

    kafka = Kafka(Settings(services_dir=tmp_path))
    kafka.write_config()
    local = dict(line.split("=", 1) for line in kafka.config_file.read_text().splitlines() if line)
    own = {"controller.quorum.voters", "listeners", "advertised.listeners", "inter.broker.listener.name",
           "listener.security.protocol.map", "log.dirs"}  # each broker's addresses and paths
    environment = compose()["services"]["kafka"]["environment"]  # KAFKA_LOG_SEGMENT_BYTES is log.segment.bytes
    differing = {key: value for key, value in local.items()
                 if key not in own and environment.get("KAFKA_" + key.upper().replace(".", "_")) != value}
    assert not differing, f"the compose broker lacks {differing}"


def test_compose_gives_each_process_the_host_s_models_and_mappings_it_reads() -> None:
    # Only the worker mounted the models: the CRM connectors checked their mappings against the
    # image's copies, and read its mappings, so an edit of sinks/mappings/*.toml needed a rebuild.
    services = compose()["services"]
    host = {"LEADSTREAM_MODELS_DIR": "./scoring/models", "LEADSTREAM_SINK_MAPPING_DIR": "./sinks/mappings"}
    reads = {"worker": ["LEADSTREAM_MODELS_DIR"],
             "sink-hubspot": ["LEADSTREAM_MODELS_DIR", "LEADSTREAM_SINK_MAPPING_DIR"],
             "sink-salesforce": ["LEADSTREAM_MODELS_DIR", "LEADSTREAM_SINK_MAPPING_DIR"]}
    for name, variables in reads.items():
        mounts = [volume.split(":") for volume in services[name].get("volumes", [])]
        for variable in variables:
            assert [host[variable], services[name]["environment"][variable], "ro"] in mounts, f"{name} reads {variable} from its image"


def test_compose_configures_leadstream_only_with_real_settings() -> None:
    for name, service in compose()["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("LEADSTREAM_"):
                assert variable in ENV_NAMES, f"service {name} sets {variable}, which no setting reads"
    for service in compose()["services"].values():
        if service.get("image") == "leadstream:local":
            assert service["environment"]["LEADSTREAM_KAFKA_BOOTSTRAP"] == "kafka:19092"


def test_compose_starts_each_leadstream_process_once_the_topics_job_has_made_the_topics() -> None:
    # They waited only for Kafka and Redis to be healthy, so a first `docker compose up` raced the
    # `topics` job: a worker stopping on a missing topic, a collector answering 503 meanwhile.
    services = compose()["services"]
    running = [name for name, service in services.items() if service.get("image") == "leadstream:local" and name != "topics"]
    assert "worker" in running and "collector" in running
    for name in running:
        assert services[name]["depends_on"].get("topics") == {"condition": "service_completed_successfully"}, name
        assert {"kafka", "redis"} <= set(services[name]["depends_on"]), name
    assert "topics" not in services["topics"]["depends_on"]


def test_plain_compose_up_starts_only_services_that_need_nothing_from_the_user() -> None:
    # A leadstream process refuses to start without its credentials or write keys, and
    # `restart: unless-stopped` would start it again and again: such services sit in a profile.
    for name, service in compose()["services"].items():
        empty = [v for v, value in service.get("environment", {}).items() if str(value).endswith(":-}")]
        assert not empty or service.get("profiles"), f"service {name} runs on `docker compose up` without {empty}"


def test_each_crm_connector_starts_on_its_own_with_the_credentials_it_reads() -> None:
    # `--profile crm` was the only way: all three started, and one without credentials restarted
    # for ever; and the Salesforce connector had no variables for its password login.
    services = compose()["services"]
    tuning = ("_BASE_URL", "_RATE_LIMIT", "_API_VERSION")  # defaults that work: not credentials
    for name in ("hubspot", "salesforce", "webhook"):
        service = services[f"sink-{name}"]
        assert name in service["profiles"] and "crm" in service["profiles"]
        credentials = {env for env in ENV_NAMES if env.startswith(f"LEADSTREAM_{name.upper()}_") and not env.endswith(tuning)}
        assert credentials and credentials <= set(service["environment"]), f"sink-{name} lacks {credentials - set(service['environment'])}"


def test_the_docker_image_is_built_with_every_file_pyproject_names() -> None:
    # LICENSE, named by license-files, was not copied: setuptools warns of a pattern matching no
    # file, and turns it into an error in 2027 (its deprecation notice), which would stop the build.
    import tomllib

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    dockerfile = (PROJECT_ROOT / "infra" / "docker" / "Dockerfile").read_text().split("\nRUN pip install", 1)[0]
    copied = {name for line in dockerfile.splitlines() if line.startswith("COPY ") for name in line.split()[1:-1]}
    assert {project["readme"], *project["license-files"]} <= copied


def test_an_installed_package_carries_every_file_its_modules_read() -> None:
    # The wheel shipped no scoring/models: `leadstream bench engine` and `bench stages` read
    # b2b.toml beside the package (streams/bench/engine.py), and failed from the Docker image,
    # where leadstream is installed, not run from the source tree. Documentation is not read.
    import fnmatch
    import tomllib

    package_data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package in ("scoring", "streams", "sinks"):
        root = PROJECT_ROOT / package
        read = {path.relative_to(root).as_posix() for path in root.rglob("*")
                if path.is_file() and path.suffix not in (".py", ".pyc", ".md") and not path.name.startswith(".")}
        shipped = {name for name in read if any(fnmatch.fnmatch(name, glob) for glob in package_data.get(package, []))}
        assert read == shipped, f"{package}'s wheel lacks {sorted(read - shipped)}: add them to package-data in pyproject.toml"


def test_readme_documents_every_setting() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = sorted(env for env in ENV_NAMES if f"`{env}`" not in readme)
    assert not missing, f"README lacks {missing}"


def test_readme_settings_table_is_what_leadstream_settings_markdown_prints(capsys: pytest.CaptureFixture[str]) -> None:
    # The table is generated from the settings' descriptions: one edited by hand drifts from them.
    from streams.cli import main

    assert main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out in (PROJECT_ROOT / "README.md").read_text()


def test_readme_lists_every_command() -> None:
    from streams.cli import build_parser

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    table = (PROJECT_ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in commands if f"| `leadstream {name}" not in table)
    assert not missing, f"README's command table lacks {missing}"


def test_readme_s_command_table_gives_every_flag_of_each_command() -> None:
    # `review --min-leads`, `settings --markdown` and most of `bench`'s flags were in no row of it.
    from streams.cli import build_parser

    commands = next(action for action in build_parser()._actions if action.dest == "command").choices
    table = (PROJECT_ROOT / "README.md").read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    missing = []
    for name, parser in commands.items():
        rows = "".join(row for row in table.splitlines() if row.startswith(f"| `leadstream {name}"))
        flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--") and flag != "--help"]
        missing.extend(f"{name} {flag}" for flag in flags if not re.search(rf"{re.escape(flag)}\b(?!-)", rows))
    assert not missing, f"README's command table lacks {missing}"


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    commands = re.findall(r"^(make \w+)$", readme, flags=re.M)
    assert commands[:2] == ["make demo", "make test"]
    ci = [ln for ln in (PROJECT_ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1] == "make test"


def _shape(value: object) -> object:
    """A JSON value's field names and types, in order: what a consumer typed from an example relies on."""
    if isinstance(value, dict):
        return [(key, _shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_readme_topic_examples_have_the_shape_of_real_records(tmp_path: Path) -> None:
    """Each JSON example of the Topics section has the fields, in order, and the JSON types of
    what the code writes for the same story (lead-42 and lead-7 of account acme, b2b model)."""
    topics = (PROJECT_ROOT / "README.md").read_text().split("\n## Topics", 1)[1].split("\n## ", 1)[0]
    crossing, account_crossing, change, account, letter = (
        json.loads(block) for block in re.findall(r"```json\n(.*?)```", topics, flags=re.S)
    )
    acme = {"account_id": "acme", "product": "b2b"}
    events = [
        {"event_id": "i1", "lead_id": "lead-42", "type": "identify", "time": 1763884800000,
         "traits": {"email": "jane@acme.io", "title": "VP Marketing", "company_size": 250, "industry": "software", "country": "DE"},
         **acme},
        {"event_id": "e1", "lead_id": "lead-42", "type": "page_view", "time": 1763884801000,
         "properties": {"url": "https://acme.io/pricing", "time_on_page_s": 130}, **acme},
        {"event_id": "e2", "lead_id": "lead-42", "type": "form_submit", "time": 1763884802000,
         "properties": {"form": "demo_request"}, **acme},
        {"event_id": "e3", "lead_id": "lead-7", "type": "meeting_booked", "time": 1763884803000, **acme},
        {"event_id": "e4", "lead_id": "lead-7", "type": "form_submit", "time": 1763884806000,
         "properties": {"form": "demo_request"}, **acme},
    ]  # fmt: skip
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(map(orjson.dumps, events)))
    out = io.StringIO()
    assert score_file(PROJECT_ROOT / "scoring" / "models", path, table=False, out=out, err=io.StringIO()) == 0
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    for record in records:
        del record["record"]  # a field of `leadstream score`'s lines, not of the topics'
    sql = next(r for r in records if r.get("kind") == "lead" and r["to_level"] == "sql")
    assert _shape(crossing) == _shape(sql)
    assert _shape(account_crossing) == _shape(next(r for r in records if r.get("kind") == "account"))
    assert _shape(change) == _shape(next(r for r in records if "top_reasons" in r and r["lead_id"] == "lead-42"))
    assert _shape(account) == _shape(next(r for r in records if "top_members" in r))
    written = orjson.loads(DeadLetter("bad_json", "message is not JSON", b"not json", "leadstream-events", 2, 1234, None).to_bytes())
    assert _shape(letter) == _shape(written)


_EXPORTED_AT_START = """
import sys
from prometheus_client import generate_latest
import streams.metrics
from streams.collector import Collector
from streams.segment import Source
from streams.settings import Settings
Collector(Settings(), {"key-1": Source("website"), "key-2": Source("website"), "key-3": Source("app")}, None)
sys.stdout.write(generate_latest().decode())
"""


def test_every_series_whose_labels_are_known_at_start_exists_at_0_from_it() -> None:
    """Prometheus takes a series' first sample as its baseline, so a counter first exported at 1
    has increased by nothing: 3 events without an event_id counted
    leadstream_events_rejected_total{reason="missing_field"} 3 while its rate stayed 0 and
    LeadstreamEventsDeadLettered silent. Each reason, refusal code, source, call and answer the
    code can count is exported at 0 by a process that has done nothing yet (the lists are the
    code's own: WORKER_REASONS, REFUSAL_CODES, ...; mypy holds every refusal to them)."""
    import subprocess
    import sys

    from streams.collector import BATCH_CALLS
    from streams.deadletter import WORKER_REASONS
    from streams.errors import REFUSAL_CODES, REFUSAL_STATUSES
    from streams.segment import CALL_TYPES

    text = subprocess.run([sys.executable, "-c", _EXPORTED_AT_START], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=True).stdout
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("leadstream_"))
    expected = [f'leadstream_events_rejected_total{{reason="{reason}"}}' for reason in WORKER_REASONS]
    expected += [f'leadstream_model_reloads_total{{outcome="{outcome}"}}' for outcome in ("applied", "rejected")]
    expected += [f'leadstream_collector_rejected_total{{code="{code}"}}' for code in REFUSAL_CODES]
    expected += [f'leadstream_collector_{counter}_total{{source="{source}"}}'
                 for counter in ("calls_accepted", "calls_refused") for source in ("website", "app")]
    expected += [f'leadstream_collector_requests_total{{call="{call}",status="{status}"}}'
                 for call in (*CALL_TYPES, *BATCH_CALLS) for status in ("200", *map(str, REFUSAL_STATUSES), "500", "503")]
    assert {series: values.get(series) for series in expected} == dict.fromkeys(expected, "0.0")
    assert {"missing_field", "wrong_partition", "too_large", "unknown_type", "bad_json"} <= set(WORKER_REASONS)


def _exported_metrics() -> dict[str, tuple[str, ...]]:
    """Each leadstream metric the processes register, by the name Prometheus shows, with its labels."""
    import prometheus_client

    import sinks.metrics
    import streams.collector_metrics
    import streams.metrics  # noqa: F401  (they register the metrics)

    exported: dict[str, tuple[str, ...]] = {}
    for collector in list(prometheus_client.REGISTRY._collector_to_names):
        labels = tuple(getattr(collector, "_labelnames", ()))
        names = prometheus_client.REGISTRY._collector_to_names[collector]
        for name in names:
            # A counter registers its name without `_total` too, and a histogram its parts.
            if name.startswith("leadstream_") and not name.endswith(("_created", "_bucket", "_count", "_sum")) \
                    and f"{name}_total" not in names:
                exported[name] = labels
    return exported


def _readme_metrics() -> list[tuple[str, str]]:
    """(name, labels) of each metric the rows of README "Operations"'s metrics table name."""
    table = (PROJECT_ROOT / "README.md").read_text().split("\n## Operations", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`(leadstream_\w+)(?:\{([\w,]*)\})?`", "\n".join(ln for ln in table.splitlines() if ln.startswith("| `")))


def test_readme_metrics_have_the_labels_the_code_exports() -> None:
    """Each metric of README "Operations" exists under that name, with exactly the labels listed."""
    exported = _exported_metrics()
    documented = _readme_metrics()
    assert len(documented) > 30
    for name, labels in documented:
        assert name in exported, f"README names {name}, which no code exports"
        assert set(exported[name]) == set(filter(None, labels.split(","))), f"{name}: README {{{labels}}}, code {exported[name]}"


def test_readme_metrics_table_has_a_row_for_every_metric_the_code_exports() -> None:
    # leadstream_forget_headers_ignored_total, counted since the erasure headers came, was named
    # in "Forgetting a lead" alone: an operator reading the table for what to watch never met it.
    # Faust's own sensors, which README names as a family (`leadstream_faust_*`), are in the
    # registry once a test of this process has made a worker's app.
    exported = {name for name in _exported_metrics() if not name.startswith("leadstream_faust_")}
    missing = sorted(exported - {name for name, _ in _readme_metrics()})
    assert not missing, f"README's metrics table lacks {missing}"


def test_readme_names_every_alert_rule() -> None:
    # The list of alert rules in README "Operations" left out four of the sixteen, the worker's
    # internal errors and skipped offsets among them: a reader weighing what is watched took
    # them for unalerted, though the metrics table says "alerted".
    rules = yaml.safe_load((PROJECT_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    names = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    operations = (PROJECT_ROOT / "README.md").read_text().split("\n## Operations", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in names if f"`{name}`" not in operations]
    assert len(names) > 10
    assert not missing, f"README's Operations names no {missing}"


def test_every_toml_fragment_of_models_md_loads() -> None:
    """scoring/MODELS.md's examples, one of each table, make one model that loads: a reader
    copies them. The [decay] example's two alternatives (steps, "# or" a half-life) each once."""
    from scoring.model import parse_model

    blocks = re.findall(r"```toml\n(.*?)```", (PROJECT_ROOT / "scoring" / "MODELS.md").read_text(), flags=re.S)
    decay = next(block for block in blocks if block.startswith("[decay]"))
    steps, half_life = decay.split("# or\n")
    alternatives = [steps, "[decay]\n" + half_life]
    for alternative in alternatives:
        text = '[model]\nname = "fragments"\n' + "\n".join(alternative if block is decay else block for block in blocks)
        model = parse_model(text, "fragments.toml")
        assert (len(model.rules), len(model.fit_rules)) == (1, 1)
        assert None not in (model.decay, model.grades, model.engagement, model.temperature, model.accounts)
