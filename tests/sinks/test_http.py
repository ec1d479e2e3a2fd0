"""sinks.http's Deadline on its own: a connected socket pair stands for a call's connection."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from contextlib import ExitStack
from typing import Iterator

import pytest

from sinks.http import Deadline
from tests.infra import wait_for


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the call's end, the server's end); reads give up after 5 s rather than hang the suite."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    with ours, theirs:
        yield ours, theirs


def test_the_read_in_progress_ends_when_the_time_is_up(connection: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = connection
    started = time.monotonic()
    with Deadline(0.3) as deadline:
        deadline.watch(ours)
        assert ours.recv(1) == b""  # cut, as if the server had hung up
    assert deadline.expired and 0.3 <= time.monotonic() - started < 2


def test_a_short_deadline_is_not_held_up_by_a_longer_one_in_progress(connection: tuple[socket.socket, socket.socket]) -> None:
    # Every deadline is watched by one thread, which sleeps until the earliest: one that comes
    # due sooner than the others must wake it.
    ours, _ = connection
    with Deadline(60) as long:
        started = time.monotonic()
        with Deadline(0.3) as short:
            short.watch(ours)
            assert ours.recv(1) == b""
        assert short.expired and time.monotonic() - started < 2
    assert not long.expired


def test_a_deadline_that_exited_never_cuts_its_connections(connection: tuple[socket.socket, socket.socket]) -> None:
    # The pool hands the connection to the next call: cutting it then would fail that one.
    ours, theirs = connection
    with Deadline(0.2) as deadline:
        deadline.watch(ours)
    time.sleep(0.5)
    theirs.sendall(b"x")
    assert ours.recv(1) == b"x" and not deadline.expired


def test_a_connection_watched_after_the_time_is_up_is_cut_at_once(connection: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = connection
    with Deadline(0.1) as deadline:
        wait_for(lambda: deadline.expired, timeout_s=5, what="the deadline to expire")
        started = time.monotonic()
        deadline.watch(ours)
        assert ours.recv(1) == b"" and time.monotonic() - started < 1


def test_calls_in_progress_share_one_thread_however_many_they_are() -> None:
    # Starting a thread per call (a threading.Timer) cost 0.1 to 0.25 ms of CPU per call.
    before = threading.active_count()
    with ExitStack() as calls:
        deadlines = [calls.enter_context(Deadline(0.5)) for _ in range(50)]
        assert threading.active_count() <= before + 1  # the watcher, if no earlier test started it
        wait_for(lambda: all(d.expired for d in deadlines), timeout_s=5, what="every deadline to expire")


def test_memory_stays_bounded_however_many_calls_end_before_their_deadline() -> None:
    # Calls ending early leave their deadline's entry behind them, to be dropped when it comes
    # due; here none does for a minute, and a call in progress all along comes due first.
    with Deadline(60):
        tracemalloc.start()
        try:
            for _ in range(20_000):
                with Deadline(60):
                    pass
            kept, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert kept < 200_000, f"{kept} bytes kept after 20,000 calls"
