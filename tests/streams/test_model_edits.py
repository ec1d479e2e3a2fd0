"""A model edited while leads have state: a worker restarted with the new model files, or one
running while they change, scores, explains and crosses the leads it has under them."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import orjson
from prometheus_client.parser import text_string_to_metric_families

from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.infra import leadstream, read_topic, swept, wait_for, write_jsonl

HOUR_MS = 3_600_000


def model_text(vp_points: int | str) -> str:
    return (
        '[model]\nname = "edits"\n[filter]\nproduct = "edits"\n'
        '[[rules]]\nname = "signed up"\nevent = "signup"\npoints = 5\n'
        f'[[fit]]\nname = "vp"\npoints = {vp_points}\ntraits.title = {{ glob = "*VP*" }}\n'
        '[thresholds]\nbase = "lead"\nladder = [{ level = "mql", at = 20 }]\n'
    )


def write_model(directory: Path, vp_points: int) -> Path:
    directory.mkdir()
    (directory / "edits.toml").write_text(model_text(vp_points))
    return directory


def signup(start_ms: int, n: int) -> dict:
    return {"event_id": f"ada-{n}", "lead_id": "ada", "type": "signup", "product": "edits",
            "time": start_ms + n * HOUR_MS, "traits": {"title": "VP Sales"}}  # fmt: skip


def models_view(running: WorkerProcess) -> dict:
    status, body = running.get("/models/")
    assert status == 200, body
    return orjson.loads(body)


def explained_ada(running: WorkerProcess) -> dict:
    status, body = running.get("/leads/ada/")
    assert status == 200, body
    return orjson.loads(body)["models"]["edits"]


def test_an_edited_fit_rule_rescores_recovered_leads(isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    start = int(time.time() * 1000) - 2 * HOUR_MS
    first_model = replace(isolated, models_dir=write_model(tmp_path / "v1", vp_points=30))
    edited_model = replace(isolated, models_dir=write_model(tmp_path / "v2", vp_points=5))

    leadstream(isolated, "send", str(write_jsonl(tmp_path / "first.jsonl", [signup(start, 0)])))
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

    leadstream(isolated, "send", str(write_jsonl(tmp_path / "second.jsonl", [signup(start, 1)])))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=2)
    assert [(c["from_level"], c["to_level"], c["score"]) for _, c in crossed] == [("lead", "mql", 35), ("mql", "lead", 15)]


def test_a_running_worker_applies_an_edit_and_keeps_scoring_through_a_broken_one(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    start = int(time.time() * 1000) - 3 * HOUR_MS
    settings = replace(isolated, models_dir=write_model(tmp_path / "models", vp_points=30), models_reload_s=1)
    running = worker(settings)

    loaded = models_view(running)
    assert ([m["name"] for m in loaded["models"]], loaded["error"]) == (["edits"], None)
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "first.jsonl", [signup(start, 0)])))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=1)
    assert [(c["to_level"], c["score"]) for _, c in crossed] == [("mql", 35)]
    assert explained_ada(running)["fit"] == [{"rule": "vp", "points": 30}]

    # The edit applies without a restart, to the lead the worker holds live: its fit points
    # are worked out again under the new rule before any new event.
    save(settings, model_text(vp_points=5))
    wait_for(lambda: models_view(running)["fingerprint"] != loaded["fingerprint"], what="the edit applied")
    assert (explained_ada(running)["score"], explained_ada(running)["fit"]) == (10, [{"rule": "vp", "points": 5}])
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "second.jsonl", [signup(start, 1)])))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=2)
    assert [(c["from_level"], c["to_level"], c["score"]) for _, c in crossed] == [("lead", "mql", 35), ("mql", "lead", 15)]
    applied = models_view(running)

    # A broken edit is reported, and the worker scores on with the models it has.
    save(settings, model_text(vp_points='"many"'))
    wait_for(lambda: models_view(running)["error"] is not None, what="the broken edit reported")
    error = models_view(running)["error"]
    assert "edits.toml" in error and "vp" in error and "points" in error, error
    assert models_view(running)["fingerprint"] == applied["fingerprint"]
    assert running.metric("leadstream_models_broken") == [1.0]
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "third.jsonl", [signup(start, 2)])))
    wait_for(lambda: explained_ada(running)["score"] == 20, what="the third signup scored under the last good models")

    # Fixed: applied, and the alert clears.
    save(settings, model_text(vp_points=10))
    wait_for(lambda: models_view(running)["error"] is None, what="the fixed edit applied")
    assert explained_ada(running)["fit"] == [{"rule": "vp", "points": 10}]
    assert running.metric("leadstream_models_broken") == [0.0]
    families = text_string_to_metric_families(running.get("/metrics")[1].decode())
    reloads = {s.labels["outcome"]: s.value for f in families for s in f.samples if s.name == "leadstream_model_reloads_total"}
    assert reloads == {"applied": 2.0, "rejected": 1.0}


def test_an_edit_that_brings_a_decay_step_forward_applies_it_when_now_due(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """The decay index is rebuilt when a schedule changes: the lead's step was scheduled 30 days
    after its activity, and the edit makes it due now."""
    def model(idle: str) -> str:
        return model_text(vp_points=1) + f'[decay]\nsteps = [{{ idle = "{idle}", points = -30 }}]\n'

    settings = replace(isolated, models_dir=tmp_path / "models", models_reload_s=1, decay_interval_s=1)
    settings.models_dir.mkdir()
    (settings.models_dir / "edits.toml").write_text(model("30d"))
    running = worker(settings)
    ten_days_ago = int(time.time() * 1000) - 240 * HOUR_MS
    signups = [signup(ten_days_ago - 3 * HOUR_MS, n) for n in range(4)]  # 4 x 5 points, and 1 of fit
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "events.jsonl", signups)))
    assert [(c["to_level"], c["score"]) for _, c in read_topic(isolated, isolated.topic_crossings, expect=1)] == [("mql", 21)]
    apply_edit(running, lambda: save(settings, model("7d")))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=2)
    assert [(c["from_level"], c["to_level"], c["score"]) for _, c in crossed] == [("lead", "mql", 21), ("mql", "lead", 1)]


def running_edits(isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path, text: str) -> tuple[Settings, WorkerProcess]:
    """A worker that looks for edits and sweeps decay every second, its models directory holding
    `text` as edits.toml and a second model (so that edits.toml may be taken away)."""
    settings = replace(isolated, models_dir=tmp_path / "models", models_reload_s=1, decay_interval_s=1)
    settings.models_dir.mkdir()
    (settings.models_dir / "edits.toml").write_text(text)
    (settings.models_dir / "other.toml").write_text(model_text(vp_points=1).replace('"edits"', '"other"'))
    return settings, worker(settings)


def apply_edit(running: WorkerProcess, edit: Callable[[], object]) -> None:
    """Makes the edit and waits until the worker has applied it."""
    fingerprint = orjson.loads(running.get("/models/")[1])["fingerprint"]
    edit()
    wait_for(lambda: orjson.loads(running.get("/models/")[1])["fingerprint"] != fingerprint, what="the edit applied")


def four_signups(at_ms: int) -> list[dict]:
    """20 behaviour points and 1 of fit: mql (at 20)."""
    return [{**signup(at_ms, n), "time": at_ms + n} for n in range(4)]


def save(settings: Settings, text: str) -> None:
    """As editors save: the worker never reads a half-written file."""
    (settings.models_dir / "edits.toml.tmp").write_text(text)
    os.replace(settings.models_dir / "edits.toml.tmp", settings.models_dir / "edits.toml")


def test_a_running_worker_keeps_a_level_renamed_with_renamed_from_and_crosses_from_one_renamed_without(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A level the ladder no longer had counted as its base: the lead's next event crossed
    `lead -> marketing_qualified` up, a second hand-over, whether the level was renamed with
    `renamed_from` or not. Renamed with it, the lead is at the new name with no crossing;
    without, its next event crosses from the level it held, down (scoring/MODELS.md)."""
    start = int(time.time() * 1000) - 3 * HOUR_MS
    settings, running = running_edits(isolated, worker, tmp_path, model_text(vp_points=30))

    def explained() -> dict:
        status, body = running.get("/leads/ada/")
        assert status == 200, body
        return orjson.loads(body)["models"]["edits"]

    leadstream(isolated, "send", str(write_jsonl(tmp_path / "first.jsonl", [signup(start, 0)])))
    assert [c["to_level"] for _, c in read_topic(isolated, isolated.topic_crossings, expect=1)] == ["mql"]
    renamed = 'level = "marketing_qualified", at = 20, renamed_from = "mql"'
    apply_edit(running, lambda: save(settings, model_text(vp_points=30).replace('level = "mql", at = 20', renamed)))
    assert explained()["level"] == "marketing_qualified"  # at once, before its next event
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "second.jsonl", [signup(start, 1)])))
    wait_for(lambda: explained()["score"] == 40, what="the second signup scored")
    apply_edit(running, lambda: save(settings, model_text(vp_points=30).replace('level = "mql", at = 20', 'level = "qualified", at = 20')))
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "third.jsonl", [signup(start, 2)])))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=2)
    assert [(c["from_level"], c["to_level"], c["direction"], c["score"]) for _, c in crossed] == [
        ("lead", "mql", "up", 35), ("marketing_qualified", "qualified", "down", 45)]


def test_a_model_edited_from_steps_to_a_half_life_decays_leads_from_their_newest_event(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """The states written under steps had never been valued under a half-life: they were
    decayed from 1970 to nothing, and crossed down with a 1970 time."""
    steps = model_text(vp_points=1) + '[decay]\nsteps = [{ idle = "30d", points = -15 }]\n'
    settings, running = running_edits(isolated, worker, tmp_path, steps)
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "events.jsonl", four_signups(int(time.time() * 1000) - 2 * HOUR_MS))))
    assert [(c["to_level"], c["score"]) for _, c in read_topic(isolated, isolated.topic_crossings, expect=1)] == [("mql", 21)]

    apply_edit(running, lambda: save(settings, model_text(vp_points=1) + '[decay]\nhalf_life = "30d"\n'))
    swept(running, 3)
    explained = orjson.loads(running.get("/leads/ada/")[1])["models"]["edits"]
    assert 20.9 < explained["score"] < 21 and explained["level"] == "mql"  # 20 x 2^(-2 h / 30 d), and 1 of fit
    assert len(read_topic(isolated, isolated.topic_crossings)) == 1


def test_an_edit_of_a_half_life_model_s_lines_schedules_the_crossing_its_decay_now_makes(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """The decay index was rebuilt only when the decay changed: a line raised near the score
    was crossed at the lead's next event, or when its old line was due."""
    half_life = '[decay]\nhalf_life = "1h"\n'
    settings, running = running_edits(isolated, worker, tmp_path, model_text(vp_points=1) + half_life)
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "events.jsonl", four_signups(int(time.time() * 1000)))))
    assert [c["to_level"] for _, c in read_topic(isolated, isolated.topic_crossings, expect=1)] == ["mql"]  # due in 266 s

    raised = model_text(vp_points=1).replace("at = 20", "at = 20.9") + half_life  # 20 x 2^(-t / 1 h) = 19.9: t = 26 s
    apply_edit(running, lambda: save(settings, raised))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=2, timeout_s=90)
    assert [(c["from_level"], c["to_level"]) for _, c in crossed] == [("lead", "mql"), ("mql", "lead")]
    assert 20.8 < crossed[1][1]["score"] < 20.9


def test_a_step_that_fell_due_while_its_model_was_out_of_the_directory_is_taken_when_it_is_back(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    steps = model_text(vp_points=1) + '[decay]\nsteps = [{ idle = "30d", points = -15 }]\n'
    settings, running = running_edits(isolated, worker, tmp_path, steps)
    due_ms = int(time.time() * 1000) + 8_000
    leadstream(isolated, "send", str(write_jsonl(tmp_path / "events.jsonl", four_signups(due_ms - 30 * 24 * HOUR_MS))))
    assert [c["to_level"] for _, c in read_topic(isolated, isolated.topic_crossings, expect=1)] == ["mql"]

    held = tmp_path / "edits.toml"
    apply_edit(running, lambda: os.replace(settings.models_dir / "edits.toml", held))
    wait_for(lambda: time.time() * 1000 > due_ms + 2_000, timeout_s=30, what="the step due, and swept")
    status, body = running.get("/leads/ada/")  # it answered 200 with no models
    assert status == 404 and "models not in LEADSTREAM_MODELS_DIR: edits" in orjson.loads(body)["error"], body
    apply_edit(running, lambda: os.replace(held, settings.models_dir / "edits.toml"))
    crossed = read_topic(isolated, isolated.topic_crossings, expect=2)
    assert [(c["from_level"], c["to_level"], c["score"]) for _, c in crossed] == [("lead", "mql", 21), ("mql", "lead", 6)]


def test_a_fit_rule_added_on_a_trait_the_model_did_not_keep_warns_and_counts_from_the_lead_s_next_event_with_it(
    isolated: Settings, worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """The audit's case: a [[fit]] rule on company_size added to a running model left a lead
    that had sent company_size 80 at fit 0 (its state never kept the trait), where `leadstream
    score` of its history gave +7, and nothing said so. The worker says so (log, /models/),
    and the points come with the lead's next event carrying the trait."""
    start = int(time.time() * 1000) - 3 * HOUR_MS
    settings = replace(isolated, models_dir=write_model(tmp_path / "models", vp_points=30), models_reload_s=1)
    running = worker(settings)

    def identify(n: int) -> dict:
        return {"event_id": f"ada-id-{n}", "lead_id": "ada", "type": "identify", "time": start + n * HOUR_MS,
                "traits": {"company_size": 80}}  # fmt: skip

    leadstream(isolated, "send", str(write_jsonl(tmp_path / "first.jsonl", [identify(0)])))
    wait_for(lambda: running.get("/leads/ada/")[0] == 200, what="the lead scored")
    assert "company_size" not in explained_ada(running)["traits"]

    big = '[[fit]]\nname = "big company"\npoints = 7\ntraits.company_size = { gte = 50 }\n'
    save(settings, model_text(vp_points=30).replace("[thresholds]", big + "[thresholds]"))
    wait_for(lambda: models_view(running)["warnings"] != [], what="the edit applied with its warning")
    (warning,) = models_view(running)["warnings"]
    assert "edits.toml: fit rule 'big company' tests trait 'company_size'" in warning and "LEADSTREAM_APP_ID" in warning
    assert "WARNING" in running.log.read_text() and warning in running.log.read_text()
    assert explained_ada(running)["fit"] == []

    leadstream(isolated, "send", str(write_jsonl(tmp_path / "second.jsonl", [identify(1)])))
    wait_for(lambda: explained_ada(running)["fit"] == [{"rule": "big company", "points": 7}], what="the trait sent again counted")
