"""The chaos tool's own expectations (tests/chaos.py): what the offline scorer is given when
leads are forgotten halfway through the feed. A mistake there makes a chaos run report
differences that are not there, or hide ones that are."""

from __future__ import annotations

import random

from tests.chaos import as_forgotten, to_forget


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
