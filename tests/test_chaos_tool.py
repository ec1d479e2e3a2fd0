"""The chaos tool's own expectations (tests/chaos.py): what the offline scorer is given when
leads are forgotten halfway through the feed, and the models it edits. A mistake there makes a
chaos run report differences that are not there, or hide ones that are."""

from __future__ import annotations

import argparse
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from scoring import Engine
from scoring.decay import HalfLifeDecay
from streams.settings import Settings
from tests.chaos import HalfLifeRun, Run, as_forgotten, edited_models, to_forget
from tests.infra import write_jsonl


def event(n: int, lead_id: str, **fields: object) -> dict[str, object]:
    return {"event_id": f"e{n}", "lead_id": lead_id, "type": "webinar_attended", "time": n, **fields}


def test_a_forgotten_lead_keeps_only_its_events_after_the_request_and_its_visitor_s_reach_it_re_keyed() -> None:
    events = [event(0, "lead-1"), event(1, "anon:cv7"), event(2, "vlead-7", anonymous_id="cv7"), event(3, "lead-2"),
              event(4, "lead-1"), event(5, "anon:cv7"), event(6, "lead-2"), event(7, "anon:cv8")]
    kept = as_forgotten(events, 4, frozenset({"lead-1", "vlead-7"}))
    assert [(e["event_id"], e["lead_id"]) for e in kept] == [
        ("e3", "lead-2"), ("e4", "lead-1"), ("e5", "vlead-7"), ("e6", "lead-2"), ("e7", "anon:cv8")]
    assert as_forgotten(events, 4, frozenset()) == events


def test_the_leads_to_forget_had_events_before_the_request_and_a_tenth_are_visitors_leads() -> None:
    events = [event(n, f"lead-{n % 50:07d}") for n in range(100)] + [event(100 + n, f"vlead-{n}") for n in range(30)]
    forgotten = to_forget(events, 40, random.Random(1))
    assert len(forgotten) == 40 and sum(lead.startswith("vlead-") for lead in forgotten) == 4
    assert forgotten <= {e["lead_id"] for e in events}
    assert to_forget(events[:3], 40, random.Random(1)) == {"lead-0000000", "lead-0000001", "lead-0000002"}


def test_the_edited_b2b_model_decays_with_the_half_life_asked_for_and_remembers_the_ids_asked_for(tmp_path: Path) -> None:
    shipped = {model.name: model for model in Engine.from_directory(edited_models(tmp_path / "shipped", None, None)).models}
    edited = {model.name: model for model in Engine.from_directory(edited_models(tmp_path / "edited", 3, "30d")).models}
    assert shipped["b2b"].decay != HalfLifeDecay(30 * 86_400_000) and shipped["b2b"].remember_events != 3
    for name, model in shipped.items():
        if name == "b2b":
            model = replace(model, decay=HalfLifeDecay(30 * 86_400_000), remember_events=3)
        assert replace(model, file=edited[name].file, domains=edited[name].domains) == edited[name]  # (lists compare by identity)


def test_a_half_life_lead_is_valued_at_the_time_a_worker_published_it_also_before_its_last_events(tmp_path: Path) -> None:
    """A worker publishes a lead's score valued at the batch that last changed it: a login
    after it (read, not scored) moves only the time the offline state is valued at."""
    day, t0 = 86_400_000, 1_750_000_000_000
    models = edited_models(tmp_path / "models", None, "1d")
    form = {"event_id": "f", "lead_id": "l1", "type": "form_submit", "time": t0, "product": "b2b", "properties": {"form": "contact"}}
    login = {"event_id": "g", "lead_id": "l1", "type": "login", "time": t0 + 2 * day, "product": "b2b"}
    run = HalfLifeRun.of(Settings.from_env().namespaced("chaos-tool", models_dir=models), write_jsonl(tmp_path / "e.jsonl", [form, login]), [form, login])
    assert run.event_times == {("l1", t0), ("l1", t0 + 2 * day)}
    assert run.offline.leads[("b2b", "l1")].as_of_ms == t0 + 2 * day
    assert [run.score_at("b2b/l1", t0 + n * day) for n in (0, 1, 2, 3)] == [15, 7.5, 3.75, 1.88]


def test_a_half_life_account_is_the_roll_up_of_its_members_each_valued_at_its_own_time(tmp_path: Path) -> None:
    """An account's member updates carry each member's points valued when its own were (the
    roll-up values no member at a common time); an account a swept lead is in is left out."""
    day, t0 = 86_400_000, 1_750_000_000_000
    models = edited_models(tmp_path / "models", None, "1d")
    events = [{"event_id": f"f{n}", "lead_id": f"l{n}", "type": "form_submit", "time": t0 + n * day, "product": "b2b",
               "account_id": "acme", "properties": {"form": "contact"}} for n in (0, 1)]
    run = HalfLifeRun.of(Settings.from_env().namespaced("chaos-tool", models_dir=models), write_jsonl(tmp_path / "e.jsonl", events), events)
    assert run.account_scores(set()) == {"b2b:account/acme": (30, 2)}  # 15 + 15, not 7.5 + 15 at the newest event
    assert run.account_scores({"l1"}) == {}


class _Starting:
    """A worker process that runs, and answers ready once the monotonic clock is at `ready_at`."""

    def __init__(self, ready_at: float) -> None:
        self.proc, self.ready_at = self, ready_at

    def poll(self) -> None:
        return None

    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at


def _run_of_starting_workers(ready_in_s: float, timeout_s: float) -> tuple[Run, float]:
    run = Run(argparse.Namespace(seed=1, remember_events=None, half_life=None, actions=3, chaos_s=0.3, settle_timeout_s=timeout_s))
    shutil.rmtree(run.workdir)
    ready_at = time.monotonic() + ready_in_s
    for slot in run.slots[:2]:
        slot.process = _Starting(ready_at)  # type: ignore[assignment]
    return run, ready_at


def test_each_action_waits_until_a_worker_is_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """An action before any worker is ready stops only workers that have read nothing: under
    load a whole run's actions were over before either worker was ready (`Run.chaos`)."""
    run, ready_at = _run_of_starting_workers(ready_in_s=1.5, timeout_s=30)
    ready_when_taken: list[bool] = []
    monkeypatch.setattr(run, "act", lambda: ready_when_taken.append(time.monotonic() >= ready_at))
    run.chaos()
    assert ready_when_taken == [True, True, True]
    assert run.waited_s > 0


def test_actions_stop_the_run_when_no_worker_is_ever_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    run, _ = _run_of_starting_workers(ready_in_s=3600, timeout_s=1)
    monkeypatch.setattr(run, "act", lambda: pytest.fail("an action with no worker ready"))
    with pytest.raises(TimeoutError, match="no worker was ready within 1 s"):
        run.chaos()
