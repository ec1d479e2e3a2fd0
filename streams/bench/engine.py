"""`leadstream bench engine`: the pure scoring engine against a plain orjson parse loop.

The workload is generated before any timing, from a seed, so runs are reproducible: leads drawn
with Zipf-skewed activity (s = 1), the example B2B model, and a mix of event types (e-mail opens
and clicks, page views with URLs, form fills with traits, profile updates, negative events),
with 1% redelivered duplicates and a few out-of-order and late events. Both loops run over the
same bytes in the same process:

- parse only: `orjson.loads` of every event;
- engine: `engine.parse` (orjson + validation) and `apply_batch` in batches of 1000 events
  against a dict of state bytes, decoding each state on first use in a batch and writing each
  changed state back with `to_bytes()` once per batch, as the stream worker does.
"""

from __future__ import annotations

import argparse
import itertools
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from scoring import Engine, LeadState
from scoring.state import right_sized
from streams.bench import print_figures
from streams.settings import Settings

BATCH_EVENTS = 1000
ZIPF_S = 1.0
START_MS = 1_761_955_200_000  # 2025-11-01T00:00:00Z
SPAN_MS = 30 * 86_400_000
MODEL_FILE = Path(__file__).resolve().parents[2] / "scoring" / "models" / "b2b.toml"

_URLS = (
    ("https://acme.io/pricing", 10), ("https://acme.io/pricing/enterprise", 3), ("https://acme.io/demo", 5),
    ("https://acme.io/customers/globex", 6), ("https://acme.io/case-studies/initech", 4),
    ("https://acme.io/blog/scoring-101", 15), ("https://acme.io/blog/mql-vs-sql", 15), ("https://acme.io/about", 8),
    ("https://acme.io/careers", 5), ("https://acme.io/", 15), ("https://acme.io/product/integrations", 14),
)  # fmt: skip
_TYPES = (
    ("page_view", 42), ("email_open", 25), ("email_click", 10), ("form_submit", 5), ("identify", 3),
    ("webinar_attended", 2), ("meeting_booked", 1), ("unsubscribe", 1), ("meeting_cancelled", 1), ("signup", 1),
)  # fmt: skip
_DOMAINS = ("globex.com", "initech.io", "umbrella.de", "gmail.com", "yahoo.com", "mailinator.com", "hubspot.com")
_TITLES = ("VP Sales", "Head of Marketing", "Marketing Manager", "Student", "Software Engineer", "CTO", "Intern")
_INDUSTRIES = ("software", "manufacturing", "retail", "financial services", "education")
_COUNTRIES = ("DE", "US", "GB", "FR", "IN", "BR", "AT")
_FORMS = ("demo_request", "contact", "newsletter", "pricing_quote")


def generate(events: int, leads: int, seed: int) -> list[bytes]:
    """The serialized workload: `events` JSON events (duplicates included) over `leads` leads."""
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1 / k**ZIPF_S for k in range(1, leads + 1)))
    lead_of = rng.choices(range(leads), cum_weights=cumulative, k=events)
    kinds = rng.choices([t for t, _ in _TYPES], weights=[w for _, w in _TYPES], k=events)
    urls = [u for u, _ in _URLS]
    url_weights = [w for _, w in _URLS]
    out: list[bytes] = []
    for i in range(events):
        if out and rng.random() < 0.01:  # a redelivery of a recent event
            out.append(out[-rng.randint(1, min(len(out), 500))])
            continue
        lead = lead_of[i]
        time_ms = START_MS + i * SPAN_MS // events - rng.randint(0, 600_000)
        if rng.random() < 0.002:
            time_ms -= 3 * 86_400_000  # beyond the b2b model's 1 day of lateness for active leads
        event: dict[str, Any] = {"event_id": f"e-{i}", "lead_id": f"lead-{lead}", "type": kinds[i], "time": time_ms, "product": "b2b"}
        kind = kinds[i]
        if kind == "page_view":
            props: dict[str, Any] = {"url": rng.choices(urls, weights=url_weights)[0], "time_on_page_s": rng.randint(3, 300)}
            if rng.random() < 0.01:
                props["user_agent"] = "Mozilla/5.0 (compatible; Googlebot/2.1)"
            event["properties"] = props
        elif kind in ("email_open", "email_click"):
            event["properties"] = {"email_id": f"campaign-{rng.randint(1, 40)}"}
        elif kind in ("form_submit", "identify"):
            if kind == "form_submit":
                event["properties"] = {"form": rng.choice(_FORMS)}
            event["traits"] = {
                "email": f"person{lead}@{rng.choice(_DOMAINS)}",
                "title": rng.choice(_TITLES),
                "company_size": rng.choice((5, 40, 250, 1200, 20000)),
                "industry": rng.choice(_INDUSTRIES),
                "country": rng.choice(_COUNTRIES),
            }
            event["account_id"] = f"account-{lead // 7}"
        out.append(right_sized(orjson.dumps(event)))
    return out


def run(data: list[bytes], engine: Engine) -> dict[str, Any]:
    """Times both loops over `data`; returns the figures."""
    parse_s = min(_timed(lambda: _parse_only(data)) for _ in range(2))
    store: dict[tuple[str, str], bytes] = {}
    counts = {"transitions": 0, "late": 0, "rejected": 0, "states_written": 0}

    def get_state(model: str, lead_id: str) -> LeadState | None:
        raw = store.get((model, lead_id))
        return None if raw is None else LeadState.from_bytes(raw)

    def engine_loop() -> None:
        parse = engine.parse
        for start in range(0, len(data), BATCH_EVENTS):
            result = engine.apply_batch([parse(raw) for raw in data[start : start + BATCH_EVENTS]], get_state)
            for key, state in result.states.items():
                store[key] = state.to_bytes()
            counts["transitions"] += len(result.transitions)
            counts["late"] += len(result.late)
            counts["rejected"] += len(result.rejected)
            counts["states_written"] += len(result.states)

    engine_s = _timed(engine_loop)
    sizes = sorted(len(raw) for raw in store.values())
    parse_rate = len(data) / parse_s
    engine_rate = len(data) / engine_s
    return {
        "events": len(data),
        "leads_scored": len(store),
        "engine_events_per_s": round(engine_rate),
        "parse_only_events_per_s": round(parse_rate),
        "ratio": round(engine_rate / parse_rate, 3),
        "us_per_event": round(1e6 / engine_rate, 2),
        "bytes_per_lead_state": round(sum(sizes) / len(sizes), 1),
        "bytes_per_lead_state_p99": sizes[int(len(sizes) * 0.99)],
        "bytes_per_lead_state_max": sizes[-1],
        "states_written_per_batch": round(counts["states_written"] * BATCH_EVENTS / len(data), 1),
        "transitions": counts["transitions"],
        "late": counts["late"],
        "rejected": counts["rejected"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "python": sys.version.split()[0],
    }


def _parse_only(data: list[bytes]) -> None:
    loads = orjson.loads
    for raw in data:
        loads(raw)


def _timed(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main(args: argparse.Namespace, settings: Settings) -> int:
    engine = Engine([_b2b_model()])
    started = time.perf_counter()
    data = generate(args.events, args.leads, args.seed)
    figures = {"seed": args.seed, "leads": args.leads, "generate_s": round(time.perf_counter() - started, 1)}
    figures.update(run(data, engine))
    print_figures(figures, args.json)
    return 0


def _b2b_model() -> Any:
    from scoring import load_model

    return load_model(MODEL_FILE)
