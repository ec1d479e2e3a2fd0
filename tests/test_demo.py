"""The README's main command: `leadstream demo` (behind `make demo`) starts a worker and the
Redis sink, streams a month of sample behaviour and shows the hot leads, on the real broker and
Redis, with this test's own topics, consumer groups, ports and Redis prefix."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from streams import processes
from streams.demo import DEMO_EVENTS, background_names, explore, wait_processed
from streams.errors import ServiceError
from streams.lag import LagProbe
from streams.history import read_to_end
from streams.settings import PROJECT_ROOT, Settings

#: The demo's SaaS sign-ups with 4 or 5 steps (n % 5 of 3 or 4) reach the model's MQL at 20
#: points: signup, created_task, created_project, created_task (+5 each; invited_teammate scores nothing).
SAAS_MQLS = {f"saas-user-{n:03d}" for n in range(40) if n % 5 >= 3}


def section(output: str, title: str) -> list[str]:
    """The lines under a title of the demo's output, up to the next blank line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 1
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def table(output: str, title: str) -> list[list[str]]:
    rows = [line.split() for line in section(output, title)]
    assert rows and rows[0][:3] == ["#", "lead", "score"], rows
    return rows[1:]


def test_demo_streams_sample_behaviour_and_shows_the_hot_leads(own_redis: Settings) -> None:
    settings = own_redis
    # An earlier demo's crossing, under the same app id: the count said every crossing the topic held.
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    producer.send(settings.topic_crossings, key=b"earlier", value=orjson.dumps({"kind": "lead", "direction": "up"})).get(timeout=30)
    producer.close()
    try:
        run = subprocess.run([sys.executable, "-m", "streams.cli", "demo"], env={**os.environ, **settings.as_env()},
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    finally:
        stopped = [processes.stop(name, settings) for name in background_names(settings)]
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    # The demo's worker and sink, under this test's app id, were still running when it ended.
    assert all(stopped), stopped
    assert f"sent {DEMO_EVENTS + sum(1 + n % 5 for n in range(40))} sample events" in out

    b2b = table(out, "Hottest leads of model b2b")
    assert len(b2b) == 10
    scores = [float(row[2]) for row in b2b]
    assert scores == sorted(scores, reverse=True)
    assert b2b[0][6] == "hot", b2b[0]

    saas = table(out, "Hottest leads of model saas_start_small")
    assert len(saas) == 10
    assert {row[1] for row in saas} <= SAAS_MQLS
    assert {row[2] for row in saas} == {"20"}

    accounts = section(out, "Hottest accounts of model b2b")
    assert accounts[0].split()[:3] == ["#", "account", "score"] and len(accounts) == 6

    # Every crossing the demo counts is on the sink topic; each SaaS lead at 20 crossed once.
    crossings = [orjson.loads(record.value) for record in read_to_end(settings, settings.topic_crossings) if record.key != b"earlier"]
    ups = [c for c in crossings if c["direction"] == "up"]
    assert f"Threshold crossings this run fired: {len(crossings)} ({len(ups)} up, {len(crossings) - len(ups)} down)" in out
    assert sorted(c["lead_id"] for c in ups if c["model"] == "saas_start_small") == sorted(SAAS_MQLS)
    assert any(c["model"] == "b2b" and c["kind"] == "lead" for c in ups)
    for name in background_names(settings):  # kept when the test fails: they tell why
        processes.log_file(name, settings).unlink()


def test_the_demo_s_last_words_name_leadstream_as_the_user_runs_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """They said `.venv/bin/leadstream history`, `review` and `services down` to every user: a
    leadstream installed with pip has no .venv/bin, and the stop command failed there."""
    script = Path(sys.executable).parent / "leadstream"  # this installation's, as pip made it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(script.parent))  # an activated virtualenv
    assert "\nStop everything: leadstream services down" in explore(Settings())
    assert "leadstream history --out" in explore(Settings()) and ".venv/bin/" not in explore(Settings())
    monkeypatch.setenv("PATH", str(tmp_path))  # not on PATH: its path, whatever the directory it is run from
    assert f"\nStop everything: {script} services down" in explore(Settings())
    monkeypatch.chdir(script.parents[2])  # `make demo`, from the clone's root: .venv/bin/leadstream
    assert f"\nStop everything: {script.relative_to(script.parents[2])} services down" in explore(Settings())


class AlwaysReady(BaseHTTPRequestHandler):
    """Another process on the port: a worker of another app id, which is ready."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_port_another_process_answers_on_is_refused_not_taken_for_the_demos_worker(isolated: Settings) -> None:
    """Its /readyz answering 200 made the demo take it for its own worker, which had exited on
    the taken port, and wait five minutes for events nobody scored."""
    other = ThreadingHTTPServer(("127.0.0.1", isolated.worker_port), AlwaysReady)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        run = subprocess.run([sys.executable, "-m", "streams.cli", "demo"], env={**os.environ, **isolated.as_env()},
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    finally:
        other.shutdown()
        other.server_close()
        for name in background_names(isolated):
            processes.stop(name, isolated)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.splitlines() == [
        f"leadstream demo: cannot listen on 127.0.0.1:{isolated.worker_port} (Address already in use): another process "
        "holds the port (a second copy of this process?); stop it or set LEADSTREAM_WORKER_PORT to a free port"
    ]
    assert processes.running(background_names(isolated)[0], isolated) is None



def test_a_worker_that_stops_while_the_demo_waits_for_it_is_named_with_its_log(isolated: Settings) -> None:
    """The demo waited five minutes for a worker that had exited, then ended on a traceback."""
    producer = KafkaProducer(bootstrap_servers=isolated.kafka_bootstrap)
    producer.send(isolated.topic_events, key=b"ada", value=b"{}")
    producer.close()
    worker = background_names(isolated)[0]
    probe = LagProbe(isolated)
    try:
        with pytest.raises(ServiceError) as stopped:
            wait_processed(probe, isolated.app_id, [isolated.topic_events], worker, isolated)
    finally:
        probe.close()
    assert str(stopped.value) == f"{worker} stopped before it processed the sample events; see {processes.log_file(worker, isolated)}"
