"""scoring/ used as a library, as its package docstring shows."""

from __future__ import annotations

import textwrap

import orjson
import pytest

import scoring
from scoring import Engine, LeadState, ModelError
from tests.scoring.support import DAY, MODELS_DIR, T0, Run


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


@pytest.mark.parametrize("now_ms", [T0 + 0.5, float("nan"), float(T0), "1762128000000", True, None])
@pytest.mark.parametrize("method", ["decay", "explain", "summary", "percent"])
def test_a_time_that_is_no_whole_number_of_milliseconds_is_a_type_error_naming_now_ms(method: str, now_ms: object) -> None:
    """A float was taken in: Engine.decay to time.time() * 1000 under a half-life gave a state
    whose bytes LeadState.from_bytes refused ("of an unknown layout"), a nan one of nan points."""
    engine = Engine.from_directory(MODELS_DIR)
    run = Run(engine).apply({"event_id": "e-1", "lead_id": "L1", "type": "trial_started", "product": "analytics", "time": T0})
    state = run.state("L1", "analytics_addon")
    with pytest.raises(TypeError, match=r"^now_ms: expected whole milliseconds since the epoch, an int such as int\(time.time\(\) \* 1000\), got "):
        getattr(engine, method)("analytics_addon", "L1", state, now_ms)
    decayed, _ = engine.decay("analytics_addon", "L1", state, T0 + 14 * DAY)
    assert engine.summary("analytics_addon", "L1", LeadState.from_bytes(decayed.to_bytes()), T0 + 14 * DAY)["score"] == 10


def test_an_engine_of_no_model_is_refused() -> None:
    # It was made, and every event was unrouted: as a generator of models read a second time gives.
    with pytest.raises(ModelError, match=r"^an Engine needs at least one model \(load_model, load_directory"):
        Engine(model for model in ())


@pytest.mark.parametrize("state", [None, b"", "L1"])
@pytest.mark.parametrize("method", ["decay", "explain", "summary", "percent"])
def test_a_state_that_is_no_lead_state_is_a_type_error_naming_state(method: str, state: object) -> None:
    """`engine.explain(model, lead, states.get((model, lead)), now_ms)` of a lead with no state
    yet raised AttributeError: 'NoneType' object has no attribute 'fit_found'."""
    engine = Engine.from_directory(MODELS_DIR)
    with pytest.raises(TypeError, match=r"^state: expected the lead's LeadState under model 'analytics_addon' \(BatchResult.states, "
                                        rf"or LeadState.from_bytes\), got {type(state).__name__}: "):
        getattr(engine, method)("analytics_addon", "L1", state, T0)


@pytest.mark.parametrize("method", ["next_due_ms", "member_score"])
def test_the_other_methods_taking_a_state_refuse_none_alike(method: str) -> None:
    engine = Engine.from_directory(MODELS_DIR)
    args = ("analytics_addon", None) if method == "next_due_ms" else ("analytics_addon", "L1", None, T0)
    with pytest.raises(TypeError, match=r"^state: expected the lead's LeadState under model 'analytics_addon'"):
        getattr(engine, method)(*args)


def test_a_get_state_giving_what_is_no_lead_state_is_a_type_error_naming_state() -> None:
    """A get_state handing back a state's bytes (a store read, not LeadState.from_bytes) raised
    AttributeError: 'bytes' object has no attribute 'account_id', from inside the scoring."""
    engine = Engine.from_directory(MODELS_DIR)
    run = Run(engine).apply({"event_id": "e-1", "lead_id": "L1", "type": "trial_started", "product": "analytics", "time": T0})
    stored = run.state("L1", "analytics_addon").to_bytes()
    events = engine.parse_message(orjson.dumps({"event_id": "e-2", "lead_id": "L1", "type": "trial_started", "product": "analytics",
                                                "time": T0 + 1}))
    with pytest.raises(TypeError, match=r"^state: expected the lead's LeadState under model 'analytics_addon' .*got bytes: "):
        engine.apply_batch(events, lambda model, lead: stored)
    result = engine.apply_batch(events, lambda model, lead: LeadState.from_bytes(stored))
    assert result.rejected == [] and result.states["analytics_addon", "L1"].to_bytes() != stored
