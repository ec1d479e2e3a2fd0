"""The worker's partitioner must agree with Kafka's, byte for byte: a lead's state lives on the
partition its key hashes to, whoever produced the key."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from streams.partitioning import murmur2, partition_for


@pytest.mark.parametrize(
    ("key", "signed"),
    [  # the cases of Kafka's own UtilsTest.testMurmur2 (Java ints: signed)
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_of_the_java_client(key: bytes, signed: int) -> None:
    assert murmur2(key) == signed & 0xFFFFFFFF


@given(st.binary(max_size=80))
def test_murmur2_equals_kafka_python(data: bytes) -> None:
    assert murmur2(data) == kafka_python_murmur2(data)


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    # "foobar" hashes negative in Java: toPositive masks the sign bit before the modulo.
    assert partition_for("foobar", 7) == (-790332482 & 0x7FFFFFFF) % 7
