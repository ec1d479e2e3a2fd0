"""Reproducible benchmark workloads: B2B behaviour over many leads, Zipf-skewed.

Half of the events go to leads drawn uniformly, half to leads drawn from a Zipf-like law (a few
leads are very active, as on a real marketing site), like workload B of ../shared/PERF.md.
"""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Any, Iterator

import orjson

from scoring.state import right_sized

PAGES = (
    ("https://acme.io/pricing", 0.16),
    ("https://acme.io/about", 0.08),
    ("https://acme.io/careers/engineer", 0.04),
    ("https://acme.io/blog/lead-scoring-101", 0.30),
    ("https://acme.io/docs/getting-started", 0.22),
    ("https://acme.io/case-studies/globex", 0.12),
    ("https://acme.io/", 0.08),
)
# (event type, weight): e-mail opens are frequent and must not inflate scores (capped by the model);
# logins and feature use are read by the b2b model without points (its unscored_types).
TYPES = (
    ("page_view", 0.46),
    ("email_open", 0.22),
    ("email_click", 0.09),
    ("form_submit", 0.04),
    ("webinar_attended", 0.03),
    ("login", 0.01),
    ("feature_used", 0.01),
    ("unsubscribe", 0.005),
    ("meeting_cancelled", 0.005),
    ("identify", 0.13),
)
TITLES = ("VP Marketing", "Head of Growth", "Marketing Intern", "Student", "CTO", "Sales Director", "Analyst")
DOMAINS = ("acme-corp.com", "globex.com", "initech.io", "gmail.com", "mailinator.com", "umbrella.org", "hooli.xyz")
INDUSTRIES = ("software", "finance", "retail", "education", "manufacturing")
COUNTRIES = ("US", "DE", "GB", "FR", "IN", "BR")


def lead_ids(leads: int) -> list[str]:
    return [f"lead-{i:07d}" for i in range(leads)]


def _cumulative(weights: list[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def generate(events: int, leads: int, seed: int, start_ms: int, span_ms: int, product: str = "b2b") -> Iterator[dict[str, Any]]:
    """`events` events over `leads` leads, with event times spread over [start_ms, start_ms + span_ms]."""
    rng = random.Random(seed)
    ids = lead_ids(leads)
    zipf = _cumulative([1.0 / (rank + 1) ** 1.1 for rank in range(leads)])
    types = _cumulative([w for _, w in TYPES])
    pages = _cumulative([w for _, w in PAGES])
    step = max(1, span_ms // max(1, events))
    for n in range(events):
        if n % 2:
            lead = ids[bisect.bisect_left(zipf, rng.random() * zipf[-1])]
        else:
            lead = ids[rng.randrange(leads)]
        kind = TYPES[min(len(TYPES) - 1, bisect.bisect_left(types, rng.random() * types[-1]))][0]
        event: dict[str, Any] = {"event_id": f"e{seed}-{n}", "lead_id": lead, "type": kind, "time": start_ms + n * step, "product": product}
        if kind == "page_view":
            url = PAGES[min(len(PAGES) - 1, bisect.bisect_left(pages, rng.random() * pages[-1]))][0]
            event["properties"] = {"url": url, "time_on_page_s": rng.randrange(3, 400)}
        elif kind in ("email_open", "email_click"):
            event["properties"] = {"email_id": f"campaign-{rng.randrange(40)}"}
        elif kind == "form_submit":
            event["properties"] = {"form": rng.choice(("newsletter", "contact", "ebook"))}
        elif kind == "identify":
            user = lead.replace("lead-", "u")
            event["traits"] = {
                "email": f"{user}@{rng.choice(DOMAINS)}",
                "title": rng.choice(TITLES),
                "company_size": rng.choice((5, 40, 250, 1200, 8000)),
                "industry": rng.choice(INDUSTRIES),
                "country": rng.choice(COUNTRIES),
            }
            if rng.random() < 0.8:
                event["account_id"] = f"account-{int(lead[5:]) % max(1, leads // 20)}"
        yield event


def serialized(events: int, leads: int, seed: int, start_ms: int, span_ms: int, product: str = "b2b") -> list[bytes]:
    # right_sized: each orjson result otherwise pins 4 KiB, 1.2 GB for 300k events.
    return [right_sized(orjson.dumps(e)) for e in generate(events, leads, seed, start_ms, span_ms, product)]
