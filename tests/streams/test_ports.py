"""A port a process must listen on that another process holds: one line naming the setting."""

from __future__ import annotations

import asyncio
import socket
from typing import Iterator

import pytest

from streams import probes
from streams.collector import load_sources, serve
from streams.errors import ServiceError
from streams.processes import free_port
from streams.settings import Settings
from tests.infra import leadstream


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another process (here: a listening socket) holds."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def expected(port: int, setting: str) -> str:
    return (
        f"cannot listen on 127.0.0.1:{port} (Address already in use): another process holds the port "
        f"(a second copy of this process?); stop it or set {setting} to a free port"
    )


def test_probes_of_a_connector(taken: int) -> None:
    with pytest.raises(ServiceError) as error:
        probes.serve(taken, lambda: True, "127.0.0.1", "LEADSTREAM_METRICS_PORT")
    assert str(error.value) == expected(taken, "LEADSTREAM_METRICS_PORT")


@pytest.mark.parametrize("which", ["collector_port", "collector_metrics_port"])
def test_either_port_of_the_collector(taken: int, which: str) -> None:
    ports = {"collector_port": free_port(), "collector_metrics_port": free_port(), which: taken}
    settings = Settings.from_env().with_overrides(collector_write_keys="wk=site", **ports)

    async def run() -> None:
        await serve(settings, load_sources(settings.collector_write_keys), asyncio.Event())

    with pytest.raises(ServiceError) as error:
        asyncio.run(asyncio.wait_for(run(), 10))
    assert str(error.value) == expected(taken, f"LEADSTREAM_{which.upper()}")


def test_the_worker_says_so_before_joining_its_group(isolated: Settings, taken: int) -> None:
    done = leadstream(isolated.with_overrides(worker_port=taken), "worker", check=False, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == f"leadstream worker: {expected(taken, 'LEADSTREAM_WORKER_PORT')}"
