"""The alert rules, evaluated by Prometheus's own promtool (`promtool test rules`) against series
that must set each alert off and series that must not: a rule that only names exported metrics
(tests/test_ops.py) can still compare the wrong things.

Each case's series are sampled every minute from time 0 and the alerts are looked at after 30
minutes, past every rule's `for`. The expected alerts carry the rule's own labels and
annotations, rendered: a summary that says the wrong share fails too.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.settings import PROJECT_ROOT

RULES = PROJECT_ROOT / "infra" / "prometheus" / "alerts.yml"
TEMPLATE = re.compile(r"\{\{\s*\$(?:labels\.(?P<label>\w+)|value(?:\s*\|\s*humanizePercentage)?)\s*\}\}")


@dataclass(frozen=True)
class Case:
    alert: str
    why: str
    #: series -> its values in promtool's notation, one a minute (`0+8x60`: 0, 8, 16, ... 480)
    series: dict[str, str]
    #: the labels of each alert expected to fire, beside the rule's own; none: quiet
    fires: tuple[dict[str, str], ...] = ()
    #: what `{{ $value }}` renders to in the annotations, when they show it
    value: str = ""
    at: str = "30m"


FIRES: tuple[dict[str, str], ...] = ({},)  # one alert, with only the rule's own labels
WORKERS = ("worker-a:6066", "worker-b:6066")
REQUESTS = "leadstream_collector_requests_total"
ACCEPTED = 'leadstream_collector_calls_accepted_total{source="website"}'
CALLS_REFUSED = 'leadstream_collector_calls_refused_total{source="website"}'


def up(job: str, instance: str) -> str:
    """Prometheus's own series for one of its targets: 1 when its last scrape answered."""
    return f'up{{job="{job}",instance="{instance}"}}'


#: The compose file's targets whose profile was never run, and its sink-redis, which always runs.
PROFILE_TARGETS_NEVER_UP = {
    **{up("leadstream-sinks", f"sink-{name}:9464"): "0x1510" for name in ("hubspot", "salesforce", "webhook")},
    up("leadstream-collector", "collector:9465"): "0x1510",
    up("leadstream-sinks", "sink-redis:9464"): "1x1510",
}


def lag(per_partition: str) -> dict[str, str]:
    """Two partitions' lag as both workers export it (each exports the whole group's)."""
    return {f'leadstream_consumer_lag{{topic="events",partition="{p}",instance="{w}"}}': per_partition
            for p in (0, 1) for w in WORKERS}


def ready(metric: str, *values: str, **labels: str) -> dict[str, str]:
    """`metric` from each worker, the values in order."""
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {f'{metric}{{instance="{w}"{extra}}}': v for w, v in zip(WORKERS, values)}


CASES = [
    # Lag: the group's, one value per partition however many workers export it.
    Case("LeadstreamLagGrowing", "lag of 18,000 growing", lag("6000+100x60"), FIRES, value="18000"),
    Case("LeadstreamLagGrowing", "lag of 20,000 that does not grow", lag("20000x60")),
    Case("LeadstreamLagGrowing", "lag of 8,000 growing, 16,000 if both workers' copies were summed", lag("1000+100x60")),
    # Each worker's own figure: the freshest worker's last batch against the group's lag hid one
    # stuck among others that score, and fired 10 minutes after the last batch.
    Case("LeadstreamScoringStalled", "one worker of two stuck since minute 10, the other scoring its partitions",
         {**ready("leadstream_stage_stalled_seconds", "0x10 60+60x49", "0x60", stage="score"),
          **ready("leadstream_stage_stalled_seconds", "0x60", "0x60", stage="rollup"), **lag("50x60")},
         ({"instance": "worker-a:6066", "stage": "score"},), at="16m"),
    Case("LeadstreamScoringStalled", "a worker's account stage stuck since minute 10",
         ready("leadstream_stage_stalled_seconds", "0x60", "0x10 60+60x49", stage="rollup"),
         ({"instance": "worker-b:6066", "stage": "rollup"},)),
    Case("LeadstreamScoringStalled", "a worker stuck since minute 10, 4 minutes later",
         ready("leadstream_stage_stalled_seconds", "0x10 60+60x49", "0x60", stage="score"), at="14m"),
    Case("LeadstreamScoringStalled", "a stage stuck for 3 minutes, then a batch done",
         ready("leadstream_stage_stalled_seconds", "0x10 60+60x2 0x47", "0x60", stage="score")),
    # A spare worker's last batch is its start: nothing of its partitions waits, the others' do.
    Case("LeadstreamScoringStalled", "a spare worker with no partitions while the other scores",
         {**ready("leadstream_stage_stalled_seconds", "0x60", "0x60", stage="score"),
          **ready("leadstream_batch_done_timestamp_seconds", "0x60", "0+60x60", stage="score"), **lag("50x60")}),
    # Every worker exports the group's figure: one per partition, whichever worker says it.
    Case("LeadstreamOpenTransactionHolding", "a partition behind a transaction open since minute 10, as both workers export it",
         {**{f'leadstream_open_transaction_wait_seconds{{topic="events",partition="3",instance="{w}"}}': "0x10 60+60x49"
             for w in WORKERS},
          **ready("leadstream_stage_stalled_seconds", "0x60", "0x60", stage="score")},
         ({"topic": "events", "partition": "3"},), at="16m"),
    Case("LeadstreamOpenTransactionHolding", "a transaction open for 3 minutes, then committed",
         ready("leadstream_open_transaction_wait_seconds", "0x10 60+60x2 0x47", "0x10 60+60x2 0x47", topic="events", partition="3")),
    Case("LeadstreamDeadLettersWaiting", "hubspot's dead letters, as both replicas export them",
         {'leadstream_sink_dlq_depth{connector="hubspot",instance="sink-hubspot-1:9102"}': "3x60",
          'leadstream_sink_dlq_depth{connector="hubspot",instance="sink-hubspot-2:9102"}': "3x60",
          'leadstream_sink_dlq_depth{connector="salesforce",instance="sink-salesforce:9102"}': "0x60"},
         ({"connector": "hubspot"},)),
    Case("LeadstreamDeadLettersWaiting", "no dead letters",
         {'leadstream_sink_dlq_depth{connector="hubspot",instance="sink-hubspot-1:9102"}': "0x60"}),
    Case("LeadstreamEventsDeadLettered", "an event dead-lettered a minute",
         {'leadstream_events_rejected_total{reason="bad_json"}': "0+1x60"}, FIRES),
    Case("LeadstreamEventsDeadLettered", "events dead-lettered until 15 minutes ago, none since",
         {'leadstream_events_rejected_total{reason="bad_json"}': "0+1x15 15x45"}),
    Case("LeadstreamInternalErrors", "an event that made scoring raise, 2 minutes ago",
         {'leadstream_events_rejected_total{reason="internal_error"}': "0x10 1x50",
          "leadstream_decay_failures_total": "0x60"}, FIRES, at="12m"),
    Case("LeadstreamInternalErrors", "a decay step that raised, 2 minutes ago",
         {'leadstream_events_rejected_total{reason="bad_json"}': "0+1x60",
          "leadstream_decay_failures_total": "0x10 1x50"}, FIRES, at="12m"),
    # A request the collector raised on is answered 500: neither refused (4xx) nor Kafka's (503).
    Case("LeadstreamInternalErrors", "the collector answered a request 500, 2 minutes ago",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+10x60", f'{REQUESTS}{{call="batch",status="500"}}': "0x10 1x50",
          'leadstream_events_rejected_total{reason="internal_error"}': "0x60", "leadstream_decay_failures_total": "0x60"},
         FIRES, at="12m"),
    Case("LeadstreamInternalErrors", "the collector answered 500 30 minutes ago, and 4xx and 503s since",
         {f'{REQUESTS}{{call="batch",status="500"}}': "0x10 1x50", f'{REQUESTS}{{call="batch",status="401"}}': "0+1x60",
          f'{REQUESTS}{{call="batch",status="503"}}': "0+1x60"}, at="40m"),
    Case("LeadstreamInternalErrors", "an internal error 30 minutes ago, bad input since",
         {'leadstream_events_rejected_total{reason="internal_error"}': "0x10 1x50",
          'leadstream_events_rejected_total{reason="bad_json"}': "0+1x60",
          "leadstream_decay_failures_total": "0x60"}, at="40m"),
    Case("LeadstreamDeliveryErrorRatio", "a third of hubspot's attempts retried; salesforce's 9% dead-lettered",
         {'leadstream_sink_deliveries_total{connector="hubspot",outcome="delivered"}': "0+10x60",
          'leadstream_sink_deliveries_total{connector="hubspot",outcome="retried"}': "0+5x60",
          'leadstream_sink_deliveries_total{connector="salesforce",outcome="delivered"}': "0+10x60",
          'leadstream_sink_deliveries_total{connector="salesforce",outcome="dead_lettered"}': "0+1x60"},
         ({"connector": "hubspot"},)),
    # Messages finished without a call at the CRM are no attempts: counted, they diluted the share.
    Case("LeadstreamDeliveryErrorRatio", "a third of hubspot's attempts retried, amid more account crossings ignored",
         {'leadstream_sink_deliveries_total{connector="hubspot",outcome="delivered"}': "0+10x60",
          'leadstream_sink_deliveries_total{connector="hubspot",outcome="retried"}': "0+5x60",
          'leadstream_sink_deliveries_total{connector="hubspot",outcome="ignored"}': "0+20x60",
          'leadstream_sink_deliveries_total{connector="hubspot",outcome="skipped"}': "0x60"},
         ({"connector": "hubspot"},)),
    Case("LeadstreamDeliveryErrorRatio", "9% of hubspot's attempts retried",
         {'leadstream_sink_deliveries_total{connector="hubspot",outcome="delivered"}': "0+100x60",
          'leadstream_sink_deliveries_total{connector="hubspot",outcome="retried"}': "0+10x60"}),
    Case("LeadstreamModelEditNotApplied", "one worker's model files do not load",
         ready("leadstream_models_broken", "0x60", "1x60"), FIRES),
    Case("LeadstreamModelEditNotApplied", "every worker's model files load", ready("leadstream_models_broken", "0x60", "0x60")),
    # The audit's case: one worker given a models directory where a rule is worth 100, not 10.
    Case("LeadstreamModelsDiffer", "one worker of two scoring with other model files",
         {**ready("leadstream_models_fingerprint", "1x60", app_id="leadstream", fingerprint="218dca342c7d4262"),
          'leadstream_models_fingerprint{instance="worker-b:6066",app_id="leadstream",fingerprint="680bd797f80c12d9"}': "1x60"},
         ({"app_id": "leadstream"},), value="2"),
    Case("LeadstreamModelsDiffer", "both workers of a group with the same files; another group with its own",
         {**ready("leadstream_models_fingerprint", "1x60", "1x60", app_id="leadstream", fingerprint="218dca342c7d4262"),
          'leadstream_models_fingerprint{instance="worker-c:6066",app_id="staging",fingerprint="680bd797f80c12d9"}': "1x60"}),
    # A worker's old series ends with a staleness marker when it reloads (its next scrape lacks it).
    Case("LeadstreamModelsDiffer", "a model edit reloaded by one worker 3 minutes after the other, seen meanwhile",
         {'leadstream_models_fingerprint{instance="worker-a:6066",app_id="leadstream",fingerprint="218dca342c7d4262"}': "1x9 stale",
          'leadstream_models_fingerprint{instance="worker-b:6066",app_id="leadstream",fingerprint="218dca342c7d4262"}': "1x12 stale",
          'leadstream_models_fingerprint{instance="worker-a:6066",app_id="leadstream",fingerprint="680bd797f80c12d9"}': "_x10 1x50",
          'leadstream_models_fingerprint{instance="worker-b:6066",app_id="leadstream",fingerprint="680bd797f80c12d9"}': "_x13 1x47"},
         at="12m"),
    Case("LeadstreamOffsetsSkipped", "a gap 2 minutes ago",
         {'leadstream_offset_anomalies_total{kind="gap"}': "0x10 1x50"}, FIRES, at="12m"),
    Case("LeadstreamEventsDeletedUnread", "offsets deleted unread 2 minutes ago",
         {'leadstream_offset_anomalies_total{kind="deleted_unread"}': "0x10 70x50"}, FIRES, value="70", at="12m"),
    Case("LeadstreamEventsDeletedUnread", "none deleted unread, other anomalies",
         {'leadstream_offset_anomalies_total{kind="deleted_unread"}': "0x60", 'leadstream_offset_anomalies_total{kind="gap"}': "0x10 1x50",
          'leadstream_offset_anomalies_total{kind="log_hole"}': "0+1x60"}),
    Case("LeadstreamOffsetsSkipped", "harmless anomalies only",
         {'leadstream_offset_anomalies_total{kind="gap"}': "0x60", 'leadstream_offset_anomalies_total{kind="repeat"}': "0+5x60",
          'leadstream_offset_anomalies_total{kind="log_hole"}': "0+1x60"}),
    Case("LeadstreamWorkerNotReady", "one of two workers recovering",
         {**ready("leadstream_worker_ready", "1x60", "0x60"), **ready("up", "1x60", "1x60", job="leadstream-worker")}, FIRES),
    Case("LeadstreamWorkerNotReady", "one of two workers stopped: only its `up` says so",
         {'leadstream_worker_ready{instance="worker-a:6066"}': "1x60", **ready("up", "1x60", "0x60", job="leadstream-worker")},
         FIRES),
    Case("LeadstreamWorkerNotReady", "no worker exports readiness at all", ready("up", "0x60", "0x60", job="leadstream-worker"),
         FIRES),
    Case("LeadstreamWorkerNotReady", "both workers ready",
         {**ready("leadstream_worker_ready", "1x60", "1x60"), **ready("up", "1x60", "1x60", job="leadstream-worker")}),
    Case("LeadstreamSinkNotReady", "one of hubspot's two replicas not ready",
         {'leadstream_sink_ready{connector="hubspot",instance="sink-hubspot-1:9102"}': "1x60",
          'leadstream_sink_ready{connector="hubspot",instance="sink-hubspot-2:9102"}': "0x60",
          'leadstream_sink_ready{connector="salesforce",instance="sink-salesforce:9102"}': "1x60"},
         ({"connector": "hubspot"},)),
    Case("LeadstreamSinkNotReady", "every replica ready",
         {'leadstream_sink_ready{connector="hubspot",instance="sink-hubspot-1:9102"}': "1x60"}),
    # The audit's case: a webhook limited to 1 request in 20 s, crossings coming faster: ready,
    # delivering, failing nothing, and further behind each minute.
    Case("LeadstreamSinkLagGrowing", "webhook's lag growing past 100, as both replicas export it; hubspot's drained",
         {'leadstream_sink_consumer_lag{connector="webhook",partition="0",instance="sink-webhook-1:9464"}': "0+5x60",
          'leadstream_sink_consumer_lag{connector="webhook",partition="0",instance="sink-webhook-2:9464"}': "0+5x60",
          'leadstream_sink_consumer_lag{connector="webhook",partition="1",instance="sink-webhook-1:9464"}': "0+3x60",
          'leadstream_sink_consumer_lag{connector="hubspot",partition="0",instance="sink-hubspot:9464"}': "0x60"},
         ({"connector": "webhook"},), value="240"),
    Case("LeadstreamSinkLagGrowing", "a backlog of 5,000 being worked off",
         {'leadstream_sink_consumer_lag{connector="webhook",partition="0",instance="sink-webhook:9464"}': "5000-80x60"}),
    Case("LeadstreamSinkLagGrowing", "40 behind and growing, 80 if both replicas' copies were summed",
         {'leadstream_sink_consumer_lag{connector="webhook",partition="0",instance="sink-webhook-1:9464"}': "0+1x60",
          'leadstream_sink_consumer_lag{connector="webhook",partition="0",instance="sink-webhook-2:9464"}': "0+1x60"}, at="40m"),
    Case("LeadstreamCollectorUnavailable", "3 requests a minute answered 503",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+100x60", f'{REQUESTS}{{call="batch",status="503"}}': "0+3x60",
          "leadstream_collector_kafka_connected": "1x60"}, FIRES),
    Case("LeadstreamCollectorUnavailable", "cut off from Kafka, no request yet",
         {"leadstream_collector_kafka_connected": "0x60"}, FIRES),
    Case("LeadstreamCollectorUnavailable", "503s for 5 minutes, over 25 minutes ago",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+100x60", f'{REQUESTS}{{call="batch",status="503"}}': "0+5x5 25x55",
          "leadstream_collector_kafka_connected": "1x60"}),
    # A process that stops takes its series with it: only `up` of its target says so. The compose
    # file's profile targets (the CRM connectors, the collector) are scraped, and down, whether
    # their profile runs or not.
    Case("LeadstreamProcessDown", "hubspot's connector answered, then stopped at minute 10",
         {**PROFILE_TARGETS_NEVER_UP, up("leadstream-sinks", "sink-hubspot:9464"): "1x10 0x50"},
         ({"job": "leadstream-sinks", "instance": "sink-hubspot:9464"},)),
    Case("LeadstreamProcessDown", "the collector answered, then stopped at minute 10",
         {**PROFILE_TARGETS_NEVER_UP, up("leadstream-collector", "collector:9465"): "1x10 0x50"},
         ({"job": "leadstream-collector", "instance": "collector:9465"},)),
    Case("LeadstreamProcessDown", "profile targets never started; a stopped worker (its own rule's)",
         {**PROFILE_TARGETS_NEVER_UP, up("leadstream-worker", "worker:6066"): "1x10 0x50"}),
    Case("LeadstreamProcessDown", "hubspot's connector stopped at minute 10 and started again at minute 20",
         {**PROFILE_TARGETS_NEVER_UP, up("leadstream-sinks", "sink-hubspot:9464"): "1x10 0x10 1x40"}),
    Case("LeadstreamProcessDown", "hubspot's connector stopped over a day ago",
         {**PROFILE_TARGETS_NEVER_UP, up("leadstream-sinks", "sink-hubspot:9464"): "1x10 0x1500"}, at="25h"),
    # The audit's case: a minute's 10 batches of 100 calls, 2 of them refused whole for a rotated
    # write key. Counted as refusals against calls, it was 2 in 802.
    Case("LeadstreamCollectorRefusing", "2 batches in 10 refused whole (401)",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+8x60", f'{REQUESTS}{{call="batch",status="401"}}': "0+2x60",
          ACCEPTED: "0+800x60", 'leadstream_collector_rejected_total{code="unauthorized"}': "0+2x60"}, FIRES, value="20%"),
    Case("LeadstreamCollectorRefusing", "100 calls in 1,000 of accepted batches refused one by one",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+10x60", ACCEPTED: "0+900x60", CALLS_REFUSED: "0+100x60",
          'leadstream_collector_rejected_total{code="missing_identity"}': "0+100x60"}, FIRES, value="10%"),
    Case("LeadstreamCollectorRefusing", "a source none of whose calls is accepted",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+1x60", CALLS_REFUSED: "0+100x60"}, FIRES, value="100%"),
    # Kafka's 503s are retried: counted, an outage's retries would hide the requests refused meanwhile.
    Case("LeadstreamCollectorRefusing", "1 request in 10 refused whole amid 50 retried 503s",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+9x60", f'{REQUESTS}{{call="batch",status="400"}}': "0+1x60",
          f'{REQUESTS}{{call="batch",status="503"}}': "0+50x60", ACCEPTED: "0+900x60"}, FIRES, value="10%"),
    Case("LeadstreamCollectorRefusing", "1 request in 100 refused whole",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+99x60", f'{REQUESTS}{{call="batch",status="401"}}': "0+1x60",
          ACCEPTED: "0+9900x60"}),
    Case("LeadstreamCollectorRefusing", "10 calls in 1,000 refused one by one",
         {f'{REQUESTS}{{call="batch",status="200"}}': "0+10x60", ACCEPTED: "0+990x60", CALLS_REFUSED: "0+10x60"}),
]


def rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"]}


def rendered(text: str, labels: dict[str, str], value: str) -> str:
    """An annotation as Prometheus renders it, for the templates the rules use."""
    def fill(match: re.Match[str]) -> str:
        if match["label"]:
            return labels[match["label"]]
        assert value, f"the case must say what {match[0]} renders to"
        return value

    text = TEMPLATE.sub(fill, text)
    assert "{{" not in text, f"a template this test does not render: {text}"
    return text


def unit_test(case: Case) -> dict[str, Any]:
    """promtool's unit-test file for one case."""
    rule = rules()[case.alert]
    expected = []
    for labels in case.fires:
        labels = {**rule.get("labels", {}), **labels}
        annotations = {name: rendered(text, labels, case.value) for name, text in rule.get("annotations", {}).items()}
        expected.append({"exp_labels": labels, "exp_annotations": annotations})
    return {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": series, "values": values} for series, values in case.series.items()],
            "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": expected}],
        }],
    }


def test_the_rules_file_is_valid_for_prometheus(promtool: Path) -> None:
    checked = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_case_that_sets_it_off_and_one_that_does_not() -> None:
    assert {case.alert for case in CASES if case.fires} == set(rules())
    assert {case.alert for case in CASES if not case.fires} == set(rules())


@pytest.mark.parametrize("case", CASES, ids=[f"{case.alert}: {case.why}" for case in CASES])
def test_the_alert_fires_exactly_when_it_should(case: Case, promtool: Path, tmp_path: Path) -> None:
    test_file = tmp_path / "test.yml"
    test_file.write_text(yaml.safe_dump(unit_test(case), sort_keys=False))
    tested = subprocess.run([str(promtool), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
