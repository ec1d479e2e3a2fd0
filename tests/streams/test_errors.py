"""The messages of streams/errors.py name the actual problem, told by real services' failures."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, Iterator

import pytest
from redis import Redis, RedisError

from streams.errors import redis_trouble
from tests.sinks.conftest import RedisServer

PASSWORD = "s3cret-pw"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, password=PASSWORD)
    yield server
    server.stop()


def closed_port() -> int:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return int(closed.getsockname()[1])


def failure(url: str, command: Callable[[Redis], object] = Redis.ping) -> RedisError:
    client = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        command(client)
    except RedisError as exc:
        return exc
    finally:
        client.close()
    raise AssertionError("Redis took the command")


def refused_write(url: str, *refuse: str) -> RedisError:
    Redis.from_url(url).execute_command(*refuse)
    return failure(url, lambda client: client.set("k", "v"))


# Each ended "run `leadstream services up`, or check the setting", whatever the failure: a missing
# password showed only redis-py's "HELLO must be called with the client already authenticated",
# rediss:// against a plain Redis a connect timeout, and a refused write said Redis could not be reached.
CASES: dict[str, tuple[Callable[[RedisServer], tuple[RedisError, str]], str]] = {
    "no password": (lambda s: (failure(s.url.replace(f":{PASSWORD}@", "")), s.url.replace(f":{PASSWORD}@", "")),
                    "Redis requires a password, and LEADSTREAM_REDIS_URL gives none"),
    "wrong password": (lambda s: (failure(s.url.replace(PASSWORD, "wrong-pw")), s.url.replace(PASSWORD, "wrong-pw")),
                       "Redis refused the password (or user) of LEADSTREAM_REDIS_URL"),
    "tls to a plain redis": (lambda s: (failure(s.url.replace("redis://", "rediss://")), s.url.replace("redis://", "rediss://")),
                             "Redis could not be reached over TLS"),
    "out of memory": (lambda s: (refused_write(s.url, "CONFIG", "SET", "maxmemory", "1"), s.url),
                      "Redis refused the write: it is out of memory"),
    "read-only replica": (lambda s: (refused_write(s.url, "REPLICAOF", "127.0.0.1", "1"), s.url),
                          "Redis refused the write: it is a read-only replica"),
    "nothing listening": (lambda s: (failure(f"redis://127.0.0.1:{closed_port()}/0"), "redis://127.0.0.1:1/0"),
                          "Redis could not be reached"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_redis_failure_is_told_by_what_failed_and_never_shows_the_password(case: str, guarded: RedisServer) -> None:
    make, told = CASES[case]
    exc, url = make(guarded)
    message = redis_trouble(exc, url)
    assert message.startswith(told), message
    assert PASSWORD not in message and "wrong-pw" not in message
    assert ("leadstream services up" in message) == (case == "nothing listening"), message
