"""Faust's partition assignor, made to give each worker the same partitions of every topic.

The lead table's partition N is the state of the leads whose events are on the events topic's
partition N, and so for the account table and the accounts topic: a worker must hold the
changelog partitions of the partitions it scores. Faust (faust-streaming 0.15.3) assigns
together only the topics that have the same number of partitions *and* the same set of members
subscribed to them (`PartitionAssignor._group_co_subscribed`); each such group is assigned on its
own. So when, for one assignment, the members subscribed to the changelogs are not those
subscribed to the input topics (one member subscribed to fewer topics than the others), the two
are assigned apart. A chaos run (tests/chaos.py, seed 51
twice at once) saw a worker given events partitions {0, 3} and the lead table's changelog
partitions {0, 2}: it restored the states of partition 2 and scored partition 3 against none,
and 1,166 leads started again from nothing (and 11 of partition 2, on the other worker).

Here every topic with the same number of partitions is one group, whoever subscribes to it: a
member not subscribed to all of them gets none of them in that assignment (Faust's rule within
a group), and the others share all of them alike. Where Faust would have split a group, the
leader logs which topics and members it would have assigned apart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, MutableMapping

import faust
from faust.assignor import PartitionAssignor
from faust.types import TP

from streams.errors import SplitAssignment

log = logging.getLogger("leadstream.worker")


class AlignedPartitionAssignor(PartitionAssignor):
    @classmethod
    def _group_co_subscribed(cls, topics: set[str], subscriptions: MutableMapping[str, list[str]]) -> Iterable[set[str]]:
        groups = list(super()._group_co_subscribed(topics, subscriptions))
        if len(groups) > 1:
            log.warning("members subscribe to different topics, which are assigned alike all the same: %s",
                        "; ".join(f"{sorted(group)} by {sorted(_subscribers(group, subscriptions))}" for group in groups))
        return [set(topics)]


def _subscribers(topics: set[str], subscriptions: Mapping[str, list[str]]) -> set[str]:
    return {member for member, subscribed in subscriptions.items() if topics <= set(subscribed)}


def split(assigned: Iterable[TP], tables: Mapping[str, faust.Table]) -> SplitAssignment | None:  # type: ignore[type-arg]
    """Why an assignment cannot be scored: an input topic (a key of `tables`) whose partitions
    are not those of its table's changelog; None when all match."""
    for topic, table in tables.items():
        changelog = table.changelog_topic.get_topic_name()
        inputs = sorted(tp.partition for tp in assigned if tp.topic == topic)
        states = sorted(tp.partition for tp in assigned if tp.topic == changelog)
        if inputs != states:
            return SplitAssignment(f"this worker was assigned partitions {inputs} of {topic} but partitions {states} of "
                                   f"{changelog}, which holds their state: it stops rather than score them against none, and "
                                   "the group assigns them again; when every worker stops so, the changelog has another "
                                   "partition count than the topic, and `leadstream topics` says what to do")
    return None
