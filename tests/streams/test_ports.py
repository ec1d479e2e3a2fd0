"""A port a process must listen on that another process holds: one line naming the setting."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.request
from typing import Iterator

import pytest

from streams import probes
from streams.collector import load_sources, serve
from streams.errors import ServiceError
from streams.processes import check_port, free_port
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
        probes.serve(taken, lambda: True, "127.0.0.1", "LEADSTREAM_METRICS_PORT", Settings().idle_timeout_ms,
                     metrics=probes.OwnMetrics("leadstream_sink_"))
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


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


def test_probes_listen_on_an_ipv6_address() -> None:
    # Before: http.server listens on IPv4 only, and LEADSTREAM_BIND_HOST=::1 stopped every sink
    # at start with "cannot listen on ::1:PORT (Unknown error -9): another process holds the port".
    port = free_port()
    server = probes.serve(port, lambda: True, "::1", "LEADSTREAM_METRICS_PORT", Settings().idle_timeout_ms,
                          metrics=probes.OwnMetrics("leadstream_sink_"))
    try:
        assert get(f"http://[::1]:{port}/healthz") == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_ipv6_port_is_named_as_a_url_writes_it() -> None:
    with socket.socket(socket.AF_INET6) as holder:
        holder.bind(("::1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ServiceError) as error:
            check_port("::1", port, "LEADSTREAM_WORKER_PORT")
    assert str(error.value).startswith(f"cannot listen on [::1]:{port} (Address already in use): ")
    check_port("::1", port, "LEADSTREAM_WORKER_PORT")  # free again


def test_the_collector_listens_on_ipv6_addresses() -> None:
    ports = {"collector_port": free_port(), "collector_metrics_port": free_port()}
    settings = Settings.from_env().with_overrides(collector_write_keys="wk=site", collector_host="::1", bind_host="::1", **ports)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(serve(settings, load_sources(settings.collector_write_keys), stop))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        statuses = []
        for port in ports.values():
            url = f"http://[::1]:{port}/healthz"
            for _ in range(100):  # until it listens
                try:
                    statuses.append(get(url))
                    break
                except OSError:
                    assert not failure, failure
                    thread.join(0.05)
        assert statuses == [200, 200], failure
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()


def test_the_worker_says_so_when_the_port_is_taken_after_its_check(isolated: Settings, taken: int) -> None:
    """A second copy started at the same moment passes the check before either listens: Faust's
    web server then failed with a bare OSError ('error while attempting to bind on address')."""
    from streams.app import create_app
    from streams.model_reload import ModelDirectory
    from streams.worker import guard_the_web_port

    # No Faust sensors: they register in the process's one Prometheus registry, as another test's app does.
    settings = isolated.with_overrides(worker_port=taken, faust_sensors=False)
    app = create_app(settings, ModelDirectory(settings.models_dir))
    guard_the_web_port(app, settings)
    with pytest.raises(ServiceError) as error:
        asyncio.run(app.web.start_server())  # type: ignore[attr-defined]  # the aiohttp driver's
    assert str(error.value) == expected(taken, "LEADSTREAM_WORKER_PORT")


def test_free_ports_are_handed_out_once_per_process() -> None:
    # Asked for several before any is listened on (a chaos run's worker slots), it gave one twice.
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == 500


@pytest.mark.parametrize("host", ["nonexistent.invalid", "192.0.2.1"])  # no such name; an address of no interface here
def test_a_host_this_machine_does_not_have_is_blamed_not_the_port(host: str) -> None:
    # It said "another process holds the port ... set LEADSTREAM_WORKER_PORT to a free port".
    port = free_port()
    with pytest.raises(ServiceError) as error:
        check_port(host, port, "LEADSTREAM_WORKER_PORT")
    assert str(error.value).startswith(f"cannot listen on {host}:{port} (")
    assert str(error.value).endswith("this machine has no such address; set LEADSTREAM_BIND_HOST to one of its addresses "
                                     "(127.0.0.1, or 0.0.0.0 for every one)")
