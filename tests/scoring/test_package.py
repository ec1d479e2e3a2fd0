"""scoring/ used as a library, as its package docstring shows."""

from __future__ import annotations

import textwrap

import orjson

import scoring
from tests.scoring.support import MODELS_DIR, T0


def test_the_package_docstrings_example_scores_messages_of_one_event_and_of_several() -> None:
    """It parsed each message with Engine.parse, which refuses an array of events (`wrong_type`),
    and called a get_state it did not say how to write."""
    example = textwrap.dedent(scoring.__doc__.split("\n\n")[1]).replace('"scoring/models"', repr(str(MODELS_DIR)))
    pricing = {"type": "page_view", "product": "b2b", "properties": {"url": "https://acme.io/pricing"}}
    messages = [
        orjson.dumps({**pricing, "event_id": "e-1", "lead_id": "lead-42", "time": T0}),
        orjson.dumps([{**pricing, "event_id": f"e-{n}", "lead_id": "lead-42", "time": T0 + n} for n in (2, 3)]).decode(),
    ]
    names: dict[str, object] = {"messages": messages, "now_ms": T0 + 10}
    exec(example, names)  # noqa: S102 - the docstring's own code
    assert names["result"].rejected == []  # type: ignore[attr-defined]
    why = names["why"]
    assert isinstance(why, dict) and why["score"] > 0 and why["lead_id"] == "lead-42"
