"""`leadstream services` against real processes on their own ports and folder."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis as redis_lib

from streams import services
from streams.errors import ServiceError
from streams.forgotten import Forgotten
from streams.settings import KAFKA_VERSION, Settings
from streams.processes import free_port
from tests.infra import leadstream, unprivileged, wait_for


def own_services(tmp_path: Path, kafka_port: int, redis_port: int) -> Settings:
    return Settings().with_overrides(
        services_dir=tmp_path / "services",
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
    )


def controller_free_pair() -> int:
    """A port that can be bound, whose successor (the KRaft controller port) can be too. Drawn
    below Linux's ephemeral range (32768-60999): a port the system hands out to outgoing
    connections in the meantime would make the broker's bind fail (seen once)."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        if bindable(port) and bindable(port + 1):
            return port


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_up_is_idempotent_and_down_stops_exactly_what_up_started(tmp_path: Path, local_services: Settings) -> None:
    settings = own_services(tmp_path, controller_free_pair(), free_port())
    try:
        first = services.up(settings)
        assert [line.split(":")[1].split()[0] for line in first] == ["started", "started"]
        second = services.up(settings)
        assert all("already running" in line for line in second)
        status = services.status(settings)
        assert all(", ready;" in line for line in status), status
        assert (settings.services_dir / "kafka" / "data" / "meta.properties").exists()
        assert (settings.services_dir / "kafka" / "logs" / "kafka.out").exists()
    finally:
        stopped = services.down(settings)
    assert [line.split(":")[1].split()[0] for line in stopped] == ["stopped", "stopped"]
    assert services.status(settings) == ["kafka: not running", "redis: not running"]
    # The suite's own services were not touched (status also lists processes a demo started):
    # those it started, or that answered at its addresses when it began.
    ours = [line for line in services.status(local_services) if line.startswith(("kafka:", "redis:"))]
    assert len(ours) == 2 and all(", ready;" in line or line.endswith(" answers") for line in ours), ours


def test_a_taken_port_is_named_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = own_services(tmp_path, free_port(), port)
        with pytest.raises(ServiceError, match=rf"redis: port 127.0.0.1:{port} is taken by another process"):
            services.Redis(settings).up()


def test_up_uses_a_broker_and_redis_that_answer_though_it_did_not_start_them(tmp_path: Path, local_services: Settings) -> None:
    """`make demo` with docker compose's Kafka up (the README says the CLI works against it)
    stopped at once: "port 127.0.0.1:9092 is taken by another process; stop it"."""
    elsewhere = local_services.with_overrides(services_dir=tmp_path / "services")
    said = services.up(elsewhere)
    assert [line.split(": ", 1)[1] for line in said[:2]] == [
        f"not started from {tmp_path / 'services'} (LEADSTREAM_SERVICES_DIR), but {endpoint} answers: using it"
        for endpoint in (services.Kafka(elsewhere).endpoint, services.Redis(elsewhere).endpoint)]
    assert not list((tmp_path / "services").glob("*/*.pid"))  # nothing started, so `down` there stops nothing of theirs


def test_a_services_dir_relative_to_where_the_command_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"LEADSTREAM_SERVICES_DIR": "own-services", "LEADSTREAM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    redis = services.Redis(settings)
    try:
        assert redis.up().startswith("redis: started")
        assert redis.answers()
        assert (tmp_path / "own-services" / "redis" / "redis.pid").exists()
    finally:
        redis.down()


def test_a_jar_folder_maven_did_not_finish_is_fetched_again(tmp_path: Path) -> None:
    """Maven stopped while copying (Ctrl-C, disk full): the broker's own jar is there, truncated,
    and the rest is missing. The broker would fail at every start with NoClassDefFoundError."""
    kafka = services.Kafka(own_services(tmp_path, free_port(), free_port()))
    kafka.libs.mkdir(parents=True)
    (kafka.libs / f"kafka_2.13-{KAFKA_VERSION}.jar").write_bytes(b"PK\x03\x04")
    (kafka.libs / "kafka_2.13-3.8.0.jar").write_bytes(b"PK\x03\x04")  # another version's, left behind
    kafka.fetch_jars()
    jars = {jar.name: jar.stat().st_size for jar in kafka.libs.glob("*.jar")}
    assert jars[f"kafka_2.13-{KAFKA_VERSION}.jar"] > 1_000_000
    assert f"kafka-server-{KAFKA_VERSION}.jar" in jars and any(name.startswith("scala-library-") for name in jars)
    assert "kafka_2.13-3.8.0.jar" not in jars
    fetched = set(jars)
    kafka.fetch_jars()  # once complete, never again
    assert {jar.name for jar in kafka.libs.glob("*.jar")} == fetched


def test_a_heap_beyond_this_machine_s_memory_is_refused_naming_its_setting_before_java_runs(tmp_path: Path) -> None:
    """java took -Xmx200g on a machine of 23 GiB (the broker free to grow until the system killed
    it), and refused -Xmx1000000g with a line naming no setting."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    beyond = f"{int(memory_gib) + 1}g"
    kafka = services.Kafka(own_services(tmp_path, free_port(), free_port()).with_overrides(kafka_heap=beyond))
    with pytest.raises(ServiceError) as refused:
        kafka.prepare()
    assert str(refused.value) == (f"kafka: LEADSTREAM_KAFKA_HEAP={beyond} is more than this machine's {memory_gib:.1f} GiB "
                                  "of memory: give the broker less (1g by default)")
    assert not kafka.libs.exists()  # refused before anything was fetched
    services.Kafka(own_services(tmp_path, free_port(), free_port()).with_overrides(kafka_heap=f"{int(memory_gib)}g")).check_heap()


def test_a_taken_controller_port_is_named_before_the_broker_starts(tmp_path: Path) -> None:
    broker = controller_free_pair()
    controller = broker + 1
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", controller))
        squatter.listen()
        kafka = services.Kafka(own_services(tmp_path, broker, free_port()))
        with pytest.raises(ServiceError) as refused:
            kafka.up()
    assert str(refused.value) == (
        f"kafka: port 127.0.0.1:{controller} (the KRaft controller's, the broker's port + 1) is taken by another process "
        "(not one `leadstream services up` started); stop it or set LEADSTREAM_KAFKA_BOOTSTRAP to another port"
    )
    assert not kafka.libs.exists()  # refused before fetching or starting anything


def test_a_pid_file_whose_pid_another_program_has_now_is_not_taken_for_ours(tmp_path: Path) -> None:
    """After a reboot or a kill -9 the pid files stay, and their numbers get reused: `down` must
    not signal that program, nor `up` and `status` take it for the service."""
    settings = own_services(tmp_path, free_port(), free_port())
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a session leader: killpg would reach it
    try:
        redis = services.Redis(settings)
        redis.home.mkdir(parents=True)
        redis.pid_file.write_text(str(other.pid))
        procs = settings.services_dir / "procs"
        procs.mkdir()
        (procs / "leadstream-worker.pid").write_text(str(other.pid))  # a demo's worker, long gone
        assert services.status(settings) == ["kafka: not running", "redis: not running",
                                             f"leadstream-worker: not running (pid {other.pid}); log: {procs / 'leadstream-worker.log'}"]
        assert services.down(settings) == ["redis: not running", "kafka: not running"]
        assert other.poll() is None
        redis.pid_file.write_text(str(other.pid))
        try:
            assert redis.up().startswith("redis: started")
            assert redis.answers()
        finally:
            redis.down()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_redis_of_the_user_s_own_that_asks_for_the_url_s_password_is_used_not_called_a_stranger(tmp_path: Path) -> None:
    # `answers` pinged without the password of LEADSTREAM_REDIS_URL: `up` said the port "is taken by
    # another process (not one `leadstream services up` started); stop it or set LEADSTREAM_REDIS_URL
    # to another port", and `status` that it did not answer, of a Redis every command could use.
    from tests.sinks.conftest import RedisServer

    guarded = RedisServer(tmp_path, password="s3cret-pw")
    try:
        settings = own_services(tmp_path, free_port(), free_port()).with_overrides(redis_url=guarded.url)
        redis = services.Redis(settings)

        assert redis.up() == (f"redis: not started from {settings.services_dir} (LEADSTREAM_SERVICES_DIR), but "
                              f"127.0.0.1:{guarded.port} answers: using it")
        assert redis.status().endswith(f"but 127.0.0.1:{guarded.port} answers")
        assert redis.pid() is None
    finally:
        guarded.stop()


def test_a_redis_of_the_user_s_own_that_refuses_the_url_s_password_is_said_so_not_called_a_stranger(tmp_path: Path) -> None:
    # `status` said "redis: not running" and `up` that the port "is taken by another process (not
    # one `leadstream services up` started)", of a Redis that answered but refused the password.
    from tests.sinks.conftest import RedisServer

    guarded = RedisServer(tmp_path, password="s3cret-pw")
    try:
        for url, said in ((guarded.url.replace("s3cret-pw", "wrong-pw"), "Redis refused the password (or user) of LEADSTREAM_REDIS_URL"),
                          (f"redis://127.0.0.1:{guarded.port}/0", "Redis requires a password, and LEADSTREAM_REDIS_URL gives none")):
            redis = services.Redis(own_services(tmp_path, free_port(), free_port()).with_overrides(redis_url=url))
            assert said in redis.status() and f"127.0.0.1:{guarded.port} answers, but" in redis.status()
            with pytest.raises(ServiceError) as refused:
                redis.up()
            assert str(refused.value).startswith(f"redis: 127.0.0.1:{guarded.port} answers, but {said}")
            assert "wrong-pw" not in redis.status() + str(refused.value) and redis.pid() is None
    finally:
        guarded.stop()


def test_the_services_directory_up_makes_is_its_owner_s_alone(tmp_path: Path) -> None:
    # 755, as the umask left it: every user of the machine could read Kafka's log segments (every
    # event and trait) and Redis's append-only file under it.
    settings = own_services(tmp_path, free_port(), free_port())
    umask = os.umask(0o022)
    try:
        redis = services.Redis(settings)
        assert redis.up().startswith("redis: started")
        redis.down()
    finally:
        os.umask(umask)
    assert settings.services_dir.stat().st_mode & 0o777 == 0o700


def test_a_services_directory_this_user_cannot_make_is_named_with_its_variable(tmp_path: Path) -> None:
    # "leadstream services: Permission denied: .../site-packages/.services" was all a user of a
    # system-wide pip install got (the default then), naming neither the setting nor what to do.
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:  # not pytest's, which only its owner may enter
        parent = Path(scratch) / "read-only"
        parent.mkdir(mode=0o555)
        Path(scratch).chmod(0o755)
        settings = own_services(tmp_path, free_port(), free_port()).with_overrides(services_dir=parent / "services")
        done = unprivileged(settings, "services", "up")
    assert (done.returncode, done.stderr.splitlines()) == (1, [
        f"leadstream services: cannot create LEADSTREAM_SERVICES_DIR={settings.services_dir} (Permission denied): "
        "set it to a directory this user can create and write"])


def test_a_broker_that_fails_to_start_is_explained_from_its_own_log(tmp_path: Path) -> None:
    """The broker logs through log4j to server.log, not to its output: the cause is read there,
    and only from what this start wrote."""
    kafka = services.Kafka(own_services(tmp_path, controller_free_pair(), free_port()))
    server_log = kafka.home / "logs" / "server.log"
    server_log.parent.mkdir(parents=True)
    server_log.write_text("[2020-01-01 00:00:00,000] ERROR an earlier run's error (kafka.Kafka$)\n")
    kafka.data_dir.mkdir(parents=True)  # storage formatted for another node: the broker exits at once
    (kafka.data_dir / "meta.properties").write_text("version=1\nnode.id=7\ncluster.id=abcdefghijklmnopqrstuv\n"
                                                    "directory.id=AAAAAAAAAAAAAAAAAAAAAA\n")
    with pytest.raises(ServiceError) as failed:
        kafka.up()
    assert str(failed.value).startswith("kafka: exited with code 1 while starting: java.lang.RuntimeException: Stored node id 7")
    assert str(failed.value).endswith(f"(log: {server_log})")
    assert kafka.pid() is None


def test_cluster_ids_never_start_with_a_dash_which_the_storage_tool_reads_as_an_option() -> None:
    ids = [services.new_cluster_id() for _ in range(2000)]  # about 31 would start with '-'
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(cluster_id) == 22 for cluster_id in ids)


def test_a_broker_port_that_does_not_answer_is_found_out_within_the_connect_timeout(tmp_path: Path) -> None:
    """`services status` and `up`'s readiness wait asked a port that accepts connections but does
    not answer (a hung broker, another program) for kafka-python's 30 s; now the connect timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections are accepted by the kernel, never answered
        settings = own_services(tmp_path, silent.getsockname()[1], free_port()).with_overrides(kafka_connect_timeout_s=1)
        started = time.monotonic()
        assert services.Kafka(settings).answers() is False
        assert time.monotonic() - started < 8


def test_status_says_who_answers_and_exits_1_unless_every_service_does(tmp_path: Path) -> None:
    # It said "kafka: not running" while a broker answered at the address (started from another
    # services directory), and exited 0 whatever it found.
    elsewhere = Settings.from_env().with_overrides(services_dir=tmp_path / "services")
    done = leadstream(elsewhere, "services", "status", check=False)
    assert done.returncode == 0, done
    assert f"kafka: not started from {tmp_path / 'services'} (LEADSTREAM_SERVICES_DIR), but {elsewhere.kafka_bootstrap} answers" \
        in done.stdout
    closed = elsewhere.with_overrides(kafka_bootstrap=f"127.0.0.1:{free_port()}", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    done = leadstream(closed, "services", "status", check=False)
    assert done.returncode == 1 and "kafka: not running" in done.stdout and "redis: not running" in done.stdout


def test_status_and_up_say_where_the_process_they_started_listens_when_the_settings_name_another(tmp_path: Path) -> None:
    # Status joined the pid file's pid with the address configured now: "redis: running (pid N)
    # on 127.0.0.1:P2, NOT answering", though that process listened on P1; up waited 90 s for P2.
    settings = own_services(tmp_path, free_port(), free_port())
    started = services.Redis(settings)
    started.up()
    try:
        started_on, pid, log = started.endpoint, started.pid(), started.logs[0]
        elsewhere = services.Redis(settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
        assert elsewhere.status() == (f"redis: running (pid {pid}) on {started_on}, where `services up` started it; "
                                      f"LEADSTREAM_REDIS_URL names {elsewhere.endpoint}, which does not answer; log: {log}")
        began = time.monotonic()
        with pytest.raises(ServiceError) as refused:
            elsewhere.up()
        assert time.monotonic() - began < 5
        assert str(refused.value) == (f"redis: already running (pid {pid}) on {started_on}, where `services up` started it, not on "
                                      f"{elsewhere.endpoint} (LEADSTREAM_REDIS_URL): run `leadstream services down`, then `up`, "
                                      "to start it there")
        assert started.status() == f"redis: running (pid {pid}) on {started_on}, ready; log: {log}"
        started.pid_file.write_text(str(pid))  # an earlier release's: no address
        assert elsewhere.status() == (f"redis: running (pid {pid}) on an address its pid file (an earlier release's) does not "
                                      f"record; LEADSTREAM_REDIS_URL names {elsewhere.endpoint}, which does not answer; log: {log}")
        assert started.status() == f"redis: running (pid {pid}) on {started_on}, ready; log: {log}"
    finally:
        started.down()


def test_an_erasure_survives_a_kill_of_the_redis_services_up_starts(tmp_path: Path) -> None:
    # Started with `--save "60 1000" --appendonly no`, a Redis killed 75 s after a forget came
    # back without its `forgotten:` key (fewer than 1,000 writes a minute are never snapshotted),
    # and a connector started then delivered the forgotten lead's crossing.
    settings = own_services(tmp_path, free_port(), free_port())
    redis_service = services.Redis(settings)
    redis_service.up()
    try:
        client = redis_lib.Redis.from_url(settings.redis_url)
        Forgotten(client, "t").record(["lead-1"], 1000)
        time.sleep(1.5)  # appendfsync everysec: on disk within a second
        pid = redis_service.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: redis_service.pid() is None, 10, "the killed redis-server gone")
        client.close()

        redis_service.up()
        client = redis_lib.Redis.from_url(settings.redis_url)
        assert Forgotten(client, "t").covers("lead-1", 1000)
        client.close()
    finally:
        redis_service.down()
