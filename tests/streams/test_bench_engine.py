"""`leadstream bench engine`: a tiny run proves the benchmark works and reports its figures
(the figures themselves are measured by hand, not asserted)."""

from __future__ import annotations

import orjson

from streams.bench.engine import generate
from streams.cli import main


def test_workload_is_reproducible() -> None:
    assert generate(300, 50, seed=3) == generate(300, 50, seed=3)
    assert generate(300, 50, seed=3) != generate(300, 50, seed=4)


def test_workload_mixes_event_types_and_redeliveries() -> None:
    events = [orjson.loads(raw) for raw in generate(3000, 200, seed=7)]
    kinds = {e["type"] for e in events}
    assert {"page_view", "email_open", "email_click", "form_submit", "unsubscribe", "identify"} <= kinds
    assert len({e["event_id"] for e in events}) < len(events)  # some redelivered duplicates


def test_bench_prints_one_json_object(capsys) -> None:
    assert main(["bench", "engine", "--events", "3000", "--leads", "500", "--json"]) == 0
    figures = orjson.loads(capsys.readouterr().out)
    assert figures["events"] == 3000
    assert {"engine_events_per_s", "parse_only_events_per_s", "ratio", "bytes_per_lead_state", "peak_rss_mb",
            "naive_scorer_events_per_s", "minimal_durable_events_per_s", "minimal_durable_ratio"} <= set(figures)
    assert 0 < figures["ratio"] < 1.5 and figures["bytes_per_lead_state"] > 50
