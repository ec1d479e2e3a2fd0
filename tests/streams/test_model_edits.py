"""A model edited while leads have state: the worker restarts with the new model files and
the leads it recovers from the changelog are scored, explained and crossed under them."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import orjson

from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import leadstream, read_topic, write_jsonl

HOUR_MS = 3_600_000


def write_model(directory: Path, vp_points: int) -> Path:
    directory.mkdir()
    (directory / "edits.toml").write_text(
        '[model]\nname = "edits"\n[filter]\nproduct = "edits"\n'
        '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 5\n'
        f'[[fit]]\nname = "vp"\npoints = {vp_points}\ntraits.title = {{ glob = "*VP*" }}\n'
        '[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 20 }]\n'
    )
    return directory


def test_an_edited_fit_rule_rescores_recovered_leads(isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    start = int(time.time() * 1000) - 2 * HOUR_MS
    first_model = replace(isolated, models_dir=write_model(tmp_path / "v1", vp_points=30))
    edited_model = replace(isolated, models_dir=write_model(tmp_path / "v2", vp_points=5))

    def signup(n: int) -> dict:
        return {"event_id": f"ada-{n}", "lead_id": "ada", "type": "signup", "product": "edits",
                "time": start + n * HOUR_MS, "traits": {"title": "VP Sales"}}  # fmt: skip

    leadstream(isolated, "send", str(write_jsonl(tmp_path / "first.jsonl", [signup(0)])))
    first = worker(first_model)
    crossed = read_topic(isolated, isolated.topic_crossings, expect=1)
    assert [(c["to_level"], c["score"]) for _, c in crossed] == [("mql", 35)]
    first.stop()

    # The second worker has only the changelog: the state written under the old fit rule.
    second = worker(edited_model)
    status, body = second.get("/leads/ada/")
    assert status == 200, body
    explained = orjson.loads(body)["models"]["edits"]
    assert (explained["score"], explained["fit"]) == (10, [{"rule": "vp", "points": 5}])

    leadstream(isolated, "send", str(write_jsonl(tmp_path / "second.jsonl", [signup(1)])))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=2)
    assert [(c["from_level"], c["to_level"], c["score"]) for _, c in crossed] == [("lead", "mql", 35), ("mql", "lead", 15)]
