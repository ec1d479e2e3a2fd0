"""leadstream's scoring engine: pure Python, no Kafka, no clock, no I/O beyond model files.

    from scoring import Engine
    engine = Engine.from_directory("scoring/models")
    result = engine.apply_batch([engine.parse(raw) for raw in messages], get_state)

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
