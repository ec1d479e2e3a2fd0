"""The dashboard and the alert rules only query metrics the code exports (no dead panels)."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from prometheus_client import REGISTRY

import sinks.metrics  # noqa: F401  (registers the connectors' metrics)
import streams.collector_metrics  # noqa: F401  (registers the collector's metrics)
import streams.metrics  # noqa: F401  (registers the worker's metrics)
from scoring import Engine
from streams.settings import PROJECT_ROOT, Settings

METRIC = re.compile(r"\bleadstream_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("leadstream_"):
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def dashboard_panels() -> list[dict]:
    return json.loads((PROJECT_ROOT / "infra" / "grafana" / "dashboards" / "leadstream.json").read_text())["panels"]


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((PROJECT_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_dashboard_panel_queries_exported_metrics() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    for query in queries:
        used = set(METRIC.findall(query))
        # Or only Prometheus's own `up`: a process that stops takes its series with it.
        assert used or re.search(r"\bup\{", query), f"panel query names no leadstream metric: {query}"
        assert used <= exported(), f"{sorted(used - exported())} are not exported (query: {query})"


def test_every_alert_rule_queries_exported_metrics() -> None:
    queries = alert_queries()
    assert len(queries) >= 5
    for query in queries:
        used = set(METRIC.findall(query))
        # Or only Prometheus's own `up`: a process that stops takes its series with it.
        assert used or re.search(r"\bup\{", query), f"rule names no leadstream metric: {query}"
        assert used <= exported(), f"{sorted(used - exported())} are not exported (rule: {query})"


def alert_rules() -> dict[str, dict]:
    rules = yaml.safe_load((PROJECT_ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}


def test_the_lag_alerts_say_the_lag_counts_messages_and_that_without_a_worker_it_is_not_measured() -> None:
    """LagGrowing said "Consumer lag is N events" of a figure of Kafka messages, of which a
    collector's hold 20 or more events each; and with the only worker stopped the lag's series
    go (only workers export it), so neither lag alert can fire, which neither said."""
    rules = alert_rules()
    assert "messages" in rules["LeadstreamLagGrowing"]["annotations"]["description"]
    for name in ("LeadstreamLagGrowing", "LeadstreamScoringStalled"):
        assert "LeadstreamWorkerNotReady" in rules[name]["annotations"]["description"], name


def test_every_alert_rule_says_what_to_do() -> None:
    """LeadstreamEventsDeadLettered and LeadstreamSinkNotReady had a summary only: the on-call
    engineer paged was told what is wrong, not where to look or what to run."""
    for name, rule in alert_rules().items():
        assert {"summary", "description"} <= set(rule.get("annotations", {})), name


def test_queries_name_only_levels_the_shipped_models_have() -> None:
    # A panel once counted crossings to level=~"sql|buying": no model has 'buying', and the
    # other models' top levels (mql, pql) never showed.
    levels = {level for model in Engine.from_directory(Settings().models_dir).models for level in model.ladder.names}
    for query in dashboard_queries() + alert_queries():
        for matched in re.findall(r'level=~?"([^"]*)"', query):
            assert set(matched.split("|")) <= levels, f"{matched!r} names a level no model has ({sorted(levels)}): {query}"


@pytest.mark.parametrize("query", [q for q in dashboard_queries() + alert_queries() if "leadstream_crossings_total" in q])
def test_crossings_of_leads_and_of_accounts_are_counted_apart(query: str) -> None:
    # A model's account ladder may name a level as its lead ladder does (`[accounts]` has a ladder
    # of its own, scoring/MODELS.md): "Crossings per level" summed both kinds' crossings to it.
    assert re.search(r'kind="(lead|account)"', query) or re.search(r"by \([^)]*\bkind\b", query), query


def test_the_dashboard_covers_what_on_call_needs() -> None:
    text = " ".join(dashboard_queries())
    for needed in ("leadstream_events_scored_total", "leadstream_consumer_lag", "leadstream_crossings_total",
                   "leadstream_sink_deliveries_total", "leadstream_sink_delivery_latency_seconds_bucket",
                   "leadstream_sink_dlq_depth", "leadstream_leads_in_state", "leadstream_collector_requests_total",
                   "leadstream_collector_calls_accepted_total", "leadstream_collector_calls_refused_total",
                   "leadstream_collector_request_seconds_bucket"):
        assert needed in text


def test_every_metric_an_alert_reads_has_a_panel() -> None:
    # Paged by LeadstreamSinkNotReady, LeadstreamScoringStalled, LeadstreamOffsetsSkipped,
    # LeadstreamModelsDiffer or LeadstreamProcessDown, the on-call engineer found no panel of the
    # figure it fired on: readiness of the connectors, the age of the last batch, offset anomalies,
    # failed decay steps, the workers' model fingerprints and the targets' `up` were nowhere shown.
    shown = " ".join(dashboard_queries())
    for query in alert_queries():
        for metric in set(METRIC.findall(query)) | set(re.findall(r"\bup(?=\{)", query)):
            assert re.search(rf"\b{metric}\b", shown), f"{metric} is alerted on but on no panel"


def test_prometheus_scrapes_the_worker_the_collector_and_every_sink_of_the_compose_file() -> None:
    scrape = yaml.safe_load((PROJECT_ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    services = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    # Every long-running leadstream process of the compose file (`topics` runs once), at the
    # port its /metrics is served on; a process the loop below does not know fails it.
    running = {name: service for name, service in services.items() if service.get("image") == "leadstream:local" and name != "topics"}
    assert {"worker", "collector"} <= set(running) and any(name.startswith("sink-") for name in running), sorted(running)
    metrics_port = {"worker": "LEADSTREAM_WORKER_PORT", "collector": "LEADSTREAM_COLLECTOR_METRICS_PORT"}
    expected = set()
    for name, service in running.items():
        variable = metrics_port.get(name, "LEADSTREAM_METRICS_PORT" if name.startswith("sink-") else None)
        assert variable is not None, f"service {name} runs leadstream: which port serves its /metrics?"
        expected.add(f"{name}:{service['environment'][variable]}")
    assert targets == expected


def test_queries_of_prometheus_s_own_series_name_jobs_it_scrapes() -> None:
    # A worker stopped among others that run: its series go stale, the others' say ready, and
    # only Prometheus's `up` of its job says it is gone.
    scrape = yaml.safe_load((PROJECT_ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    named = {job for query in alert_queries() + dashboard_queries()
             for jobs in re.findall(r'job=~?"([^"]+)"', query) for job in jobs.split("|")}
    assert "leadstream-worker" in named and named <= jobs, sorted(named - jobs)


#: Gauges each process exports for its whole consumer group, as the broker sees it: with two
#: workers (or two replicas of a connector) every partition's lag is exported twice, so a query
#: must take one value per partition (max by its labels) before any sum.
GROUP_GAUGES = {
    "leadstream_consumer_lag": "topic, partition",
    "leadstream_sink_consumer_lag": "connector, partition",
    "leadstream_sink_dlq_depth": "connector",
}


@pytest.mark.parametrize("query", dashboard_queries() + alert_queries())
def test_group_wide_gauges_are_counted_once_however_many_processes_export_them(query: str) -> None:
    for metric, labels in GROUP_GAUGES.items():
        uses = len(re.findall(rf"\b{metric}\b", query))
        once = len(re.findall(rf"max by \({labels}\) \({metric}(\{{[^}}]*\}})?\)", query))
        assert uses == once, f"{metric} must be read as `max by ({labels}) ({metric})`, not summed over processes: {query}"



def shown_in(panel: dict, target: dict) -> str:
    """The unit Grafana shows a query's series in: the panel's, unless an override of its refId says another."""
    unit = panel["fieldConfig"]["defaults"]["unit"]
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": target["refId"]}:
            unit = next((p["value"] for p in override["properties"] if p["id"] == "unit"), unit)
    return unit


def is_duration(expr: str) -> bool:
    """A quantile of a `_seconds` histogram, or a `_seconds` gauge (a rate of a seconds counter or
    sum is a share of the time, not a duration)."""
    if "histogram_quantile(" in expr:
        return "_seconds_bucket" in expr
    return bool(re.search(r"\bleadstream_\w+_seconds\b", expr)) and not re.search(r"\b(rate|increase)\(", expr)


@pytest.mark.parametrize("panel, target", [(panel, target) for panel in dashboard_panels() for target in panel["targets"]],
                         ids=[f"{panel['title']}: {target['refId']}" for panel in dashboard_panels() for target in panel["targets"]])
def test_each_query_is_shown_in_its_own_unit(panel: dict, target: dict) -> None:
    # The lag panel drew the event-time lag in seconds on its axis of Kafka messages, the
    # collector's panel "connected (1/0)" as 1 B, and the collector's pauses their share of the
    # time as seconds ("12 ms" for 1.2% of the time).
    expr, unit = target["expr"], shown_in(panel, target)
    if is_duration(expr):
        assert unit == "s", f"a duration shown in {unit}: {expr}"
    else:
        assert unit != "s", f"no duration, shown in seconds: {expr}"
    assert (unit == "bytes") == bool(re.search(r"\bleadstream_\w+_bytes\b", expr)), f"shown in {unit}: {expr}"
