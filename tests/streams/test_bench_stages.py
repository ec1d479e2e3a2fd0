"""`leadstream bench stages`: a tiny run proves the benchmark drives both stages and reports its
figures (the figures themselves are measured by hand, not asserted)."""

from __future__ import annotations

import orjson

from streams.bench.stages import CountingOutbox
from streams.cli import main


def test_bench_runs_both_stages_and_prints_one_json_object(capsys) -> None:
    assert main(["bench", "stages", "--events", "4000", "--leads", "300", "--json"]) == 0
    figures = orjson.loads(capsys.readouterr().out)
    assert figures["events"] == 4000
    assert figures["scoring_us_per_event"] > 0 and figures["rollup_us_per_event"] > 0
    records = figures["records_out"]
    # Score changes and lead states from the scoring stage; account states only if the
    # account updates reached the account stage.
    assert records["leadstream-scores"] > 0 and records["leads-changelog"] > 0
    assert records["accounts-changelog"] > 0
    assert figures["lead_crossings"] > 0


def test_account_updates_are_numbered_per_partition_across_batches() -> None:
    # As Kafka numbers them: the account stage checks each partition's offsets for holes.
    outbox = CountingOutbox(partitions=2, accounts_topic="accounts")
    handed = []
    for batch in ([(1, b"a"), (0, b"b"), (1, b"c")], [(1, b"d")]):
        for partition, value in batch:
            outbox.add("accounts", b"key", value, partition)
        handed += outbox.account_updates
        outbox.account_updates = []
    assert [(m.partition, m.offset, m.value) for m in handed] == [(1, 0, b"a"), (0, 0, b"b"), (1, 1, b"c"), (1, 2, b"d")]
