"""Records of the identity topic as the scoring stage reads them: what leadstream writes is
read back; anything else is dead-lettered alone, naming the problem, and never stops the stage
(before, a link with a list for an id, or a merge whose states were not state bytes, raised out
of the batch and stopped the worker on every restart)."""

from __future__ import annotations

import asyncio
import base64
import orjson
import pytest

from scoring import Engine, LeadState
from streams import lead_states, stitching
from streams.partitioning import partition_for
from streams.scorer import Scorer
from streams.settings import Settings
from streams.stage import Consumed, LiveTable, MemoryData
from tests.scoring.support import T0, shipped
from tests.streams.stage_support import Kept


def test_records_leadstream_writes_are_read_back() -> None:
    state = LeadState.new("nurture", 0)
    record, states = stitching.read_record(stitching.merge_record("anon:v1", "ada", T0, {"b2b": state}))
    assert (record.kind, record.source, record.target, record.time_ms) == ("merge", "anon:v1", "ada", T0)
    assert states == {"b2b": state}
    assert orjson.loads(stitching.link_record("anon:v1", "ada", T0)) == {"kind": "link", "source": "anon:v1", "target": "ada", "time": T0}


LINK = {"kind": "link", "source": "anon:v1", "target": "ada", "time": T0}


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (b"{not json", "identity record unreadable"),
        (b"[1, 2]", "Expected `object`, got `array`"),
        (orjson.dumps({**LINK, "kind": "zap"}), "at `$.kind`"),
        (orjson.dumps({**LINK, "source": ["anon:v1"]}), "at `$.source`"),
        (orjson.dumps({**LINK, "target": {"id": "ada"}}), "at `$.target`"),
        (orjson.dumps({**LINK, "source": ""}), "at `$.source`"),
        (orjson.dumps({**LINK, "time": "soon"}), "at `$.time`"),
        (orjson.dumps({k: v for k, v in LINK.items() if k != "target"}), "missing required field `target`"),
        (orjson.dumps({**LINK, "kind": "merge", "states": [1]}), "at `$.states`"),
        (orjson.dumps({**LINK, "kind": "merge", "states": {"b2b": "%%%"}}), "state of model 'b2b' unreadable"),
        (orjson.dumps({**LINK, "kind": "merge", "states": {"b2b": base64.b64encode(b"\x05").decode()}}), "state of model 'b2b' unreadable"),
    ],
)
def test_anything_else_is_dead_lettered_naming_the_problem_and_the_batch_goes_on(value: bytes, named: str) -> None:
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    home = partition_for("anon:v1", 4)
    good = orjson.dumps({"event_id": "e1", "lead_id": "carol", "type": "page_view", "time": T0, "product": "b2b",
                         "properties": {"url": "https://acme.io/pricing"}})
    batch = [Consumed(settings.topic_identity, home, 3, b"anon:v1", value),
             Consumed(settings.topic_events, partition_for("carol", 4), 0, b"carol", good)]
    stats = asyncio.run(scorer.process(batch))
    assert stats.scored == 1
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v]
    assert letter["reason"] == "bad_identity_record" and named in letter["detail"]
    assert letter["source"] == {"topic": settings.topic_identity, "partition": home, "offset": 3}


def test_a_record_on_another_partition_than_its_ids_is_dead_lettered() -> None:
    settings = Settings()
    outbox = Kept()
    scorer = Scorer(Engine([shipped("b2b")]), settings, LiveTable(MemoryData(), "changelog", 4, 100, lead_states.decode), outbox, 4)
    elsewhere = (partition_for("anon:v1", 4) + 1) % 4
    asyncio.run(scorer.process([Consumed(settings.topic_identity, elsewhere, 0, b"x", orjson.dumps(LINK))]))
    [letter] = [orjson.loads(v) for topic, _, v in outbox.sent if topic == settings.topic_deadletter and v]
    assert letter["reason"] == "wrong_partition" and "'anon:v1'" in letter["detail"]
    assert not [key for topic, key, _ in outbox.sent if topic == "changelog"]  # no marker stored for it
