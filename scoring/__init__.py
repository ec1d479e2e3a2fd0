"""leadstream's scoring engine: pure Python, no Kafka, no clock, no I/O beyond model files.

    from scoring import Engine
    engine = Engine.from_directory("scoring/models")
    states = {}  # (model name, lead id) -> LeadState; the worker keeps them in Faust tables
    events = [event for raw in messages for event in engine.parse_message(raw)]
    result = engine.apply_batch(events, lambda model, lead: states.get((model, lead)))
    states.update(result.states)
    why = engine.explain("b2b", "lead-42", states["b2b", "lead-42"], now_ms)

`messages` are JSON texts (bytes or str), each an event object or an array of them, as the events
topic holds them (`Engine.parse` takes one event alone, and refuses an array); `result` also
holds the crossings (`transitions`) and the events refused (`rejected`) or late (`late`).
See scoring/MODELS.md for the model file format and the event schema.
"""

from scoring.accounts import AccountRollup, AccountState, MemberScore
from scoring.engine import BatchResult, Engine, Late, ModelRuntime
from scoring.errors import LeadstreamError, ModelError, StateError
from scoring.events import Event, Rejection
from scoring.model import Model, load_directory, load_model, parse_model
from scoring.state import LeadState
from scoring.thresholds import Transition

__all__ = [
    "AccountRollup",
    "AccountState",
    "BatchResult",
    "Engine",
    "Event",
    "Late",
    "LeadState",
    "LeadstreamError",
    "MemberScore",
    "Model",
    "ModelError",
    "ModelRuntime",
    "Rejection",
    "StateError",
    "Transition",
    "load_directory",
    "load_model",
    "parse_model",
]
