"""The partition assignor (streams/assignor.py): every worker gets its tables' partitions with its
inputs', even when a member subscribes to fewer topics (one stopping, whose agents have left
their topics while its tables' changelogs stay subscribed)."""

from __future__ import annotations

import faust
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata
from faust.types import TP

from streams.assignor import AlignedPartitionAssignor, split
from streams.errors import SplitAssignment

INPUTS = ["t-assign-events", "t-assign-profiles"]
CHANGELOG = "t-assign-leads-changelog"


class Cluster:
    """The broker's metadata as the assignor reads it: every topic has 4 partitions."""

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


def member(subscription: list[str]) -> ConsumerProtocolMemberMetadata:
    metadata = ClientMetadata(assignment=ClientAssignment(actives={}, standbys={}), url="http://127.0.0.1:1",
                              changelog_distribution={})
    return ConsumerProtocolMemberMetadata(0, subscription, metadata.dumps())


@pytest.fixture
def app() -> faust.App:
    app = faust.App("t-assign", broker="kafka://127.0.0.1:9092")
    app.Table("leads", partitions=4)
    return app


def assigned(assignor: PartitionAssignor) -> dict[str, dict[str, list[int]]]:
    members = {"a": member(INPUTS + [CHANGELOG]), "b": member(INPUTS + [CHANGELOG]), "stopping": member([CHANGELOG])}
    return {name: dict(assignment.assignment) for name, assignment in assignor._perform_assignment(Cluster(), members).items()}


def test_a_member_subscribed_to_the_changelog_alone_splits_fausts_assignment_but_not_this_one(app: faust.App) -> None:
    # Faust's own assignor gives a worker events partitions without their states' partitions.
    faust_split = assigned(PartitionAssignor(app, replicas=0))
    assert any(topics[INPUTS[0]] != topics[CHANGELOG] for name, topics in faust_split.items() if INPUTS[0] in topics)

    aligned = assigned(AlignedPartitionAssignor(app, replicas=0))
    assert aligned["stopping"] == {}
    for name in ("a", "b"):
        assert aligned[name][INPUTS[0]] == aligned[name][INPUTS[1]] == aligned[name][CHANGELOG]
    assert sorted(aligned["a"][CHANGELOG] + aligned["b"][CHANGELOG]) == [0, 1, 2, 3]


def test_a_worker_given_inputs_without_their_table_partitions_names_both(app: faust.App) -> None:
    table = app.tables["leads"]
    assert split({TP(INPUTS[0], 0), TP(INPUTS[0], 2), TP(CHANGELOG, 0), TP(CHANGELOG, 2)}, {INPUTS[0]: table}) is None
    refusal = split({TP(INPUTS[0], 0), TP(INPUTS[0], 3), TP(CHANGELOG, 0), TP(CHANGELOG, 2)}, {INPUTS[0]: table})
    assert isinstance(refusal, SplitAssignment)
    assert f"partitions [0, 3] of {INPUTS[0]} but partitions [0, 2] of {CHANGELOG}" in str(refusal)
    assert "when every worker stops so, the changelog has another partition count" in str(refusal)  # not "assigned again" alone
