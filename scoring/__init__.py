"""leadstream's scoring engine: pure Python, no Kafka, no clock, no I/O beyond model files.

    from scoring import Engine
    engine = Engine.from_directory("scoring/models")
    result = engine.apply_batch([engine.parse(raw) for raw in messages], get_state)

See scoring/MODELS.md for the model file format and the event schema. A caller that keeps
decoded states between batches uses `StateCache` (scoring/cache.py says when that is safe).
"""

from scoring.accounts import AccountRollup, AccountState, MemberScore
from scoring.cache import StateCache
from scoring.engine import BatchResult, Engine, ModelRuntime
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
    "LeadState",
    "LeadstreamError",
    "MemberScore",
    "Model",
    "ModelError",
    "ModelRuntime",
    "Rejection",
    "StateCache",
    "StateError",
    "Transition",
    "load_directory",
    "load_model",
    "parse_model",
]
