"""`leadstream send` reads a JSON-lines file: each event keyed by its lead id, as the worker
will read that id, and every line it cannot key reported by number."""

from __future__ import annotations

import io

import orjson

from streams.envelope import pack_by_partition
from streams.partitioning import partition_for
from streams.send import read_events


def test_lines_are_keyed_by_lead_id_and_bad_ones_reported() -> None:
    lines = io.BytesIO(
        b'{"lead_id": "ada", "type": "signup"}\n'
        b"\n"
        b'{"lead_id": 42, "type": "signup"}\n'  # a number id is its decimal text, as in the engine
        b"{broken\n"
        b'{"lead_id": true}\n'
        b'{"lead_id": 4.2}\n'
        b'{"type": "signup"}\n'
        b"[1, 2]\n"
    )
    bad: list[str] = []
    assert [lead for lead, _ in read_events(lines, bad)] == ["ada", "42"]
    assert [line.split(":")[0] for line in bad] == ["line 4", "line 5", "line 6", "line 7", "line 8"]
    assert "no `lead_id` (a text or a whole number)" in bad[1]


def test_a_byte_order_mark_and_windows_line_ends_are_read() -> None:
    lines = io.BytesIO(b'\xef\xbb\xbf{"lead_id": "ada"}\r\n{"lead_id": "bob"}\r\n')
    bad: list[str] = []
    assert [(lead, event) for lead, event in read_events(lines, bad)] == [("ada", b'{"lead_id": "ada"}'), ("bob", b'{"lead_id": "bob"}')]
    assert bad == []


def test_envelopes_hold_one_partitions_leads_in_their_order() -> None:
    events = [(f"lead-{i % 7}", b'{"n": %d}' % i) for i in range(40)]
    packed = list(pack_by_partition(events, 4, max_events=3))
    for partition, message in packed:
        items = orjson.loads(message)
        items = items if isinstance(items, list) else [items]
        assert len(items) <= 3
        assert {partition_for(f"lead-{item['n'] % 7}", 4) for item in items} == {partition}
    # Every event once, and each partition's events in the order they came.
    unpacked = [(p, item["n"]) for p, m in packed for item in (lambda v: v if isinstance(v, list) else [v])(orjson.loads(m))]
    assert sorted(n for _, n in unpacked) == list(range(40))
    for partition in range(4):
        numbers = [n for p, n in unpacked if p == partition]
        assert numbers == sorted(numbers)
