"""Redis as production runs it: behind Sentinel, as a Cluster, over TLS, with acknowledged writes.

Real servers only, started here on free loopback ports: the session's Sentinel group and
Cluster (``tests/fixtures/redis_production.py``), a TLS-only redis-server with certificates
made by ``openssl`` from a self-signed CA, and a master with a replica for ``wait_replicas``.
Real ``celery worker`` processes show what a user meets: a worker on a ``sentinel://`` or a TLS
broker with no ``leaderfeed_backend`` leads; each mistake is one line, without the password.
(The contract suite and the fault suite run unchanged on the Sentinel and Cluster kits; the
fault suite's ``test_sentinel_failover.py`` fails the master over under five members.)
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_leaderfeed import ConfigurationError, LeaderFeed
from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.backends.redis import RedisBackend
from celery_leaderfeed.celery import settings as settings_module
from celery_leaderfeed.celery.settings import resolve_settings
from celery_leaderfeed.errors import BackendUnavailable, StoreRefused
from harness.helpers import wait_until
from harness.servers.redis_cluster import RedisClusterGroup
from harness.servers.redis_process import RedisServer
from harness.servers.redis_sentinel import SentinelGroup
from harness.servers.redis_tls import TlsFiles, TlsRedisServer, make_tls_files
from tests.fixtures.redis_server import TEST_PASSWORD
from tests.workers import CeleryProcess

APP = "tests.celery_apps.config_app"
TIMING = {
    "leaderfeed_heartbeat_interval": 0.2,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.9,
}
ERROR = re.compile(r"^\[[^\]]*: ERROR/\w+\] (?P<text>leaderfeed.*)$", re.MULTILINE)


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "_announced", set())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files: TlsFiles) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(tls_files, TEST_PASSWORD).start()
    yield server
    server.close()


class Workers:
    """``celery -A config_app worker`` processes, each in an election of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[CeleryProcess] = []

    def start(self, conf: dict[str, Any], *, ready: str | None = "ready.") -> CeleryProcess:
        name = f"rp-{uuid.uuid4().hex[:10]}"
        conf = {**TIMING, "leaderfeed_name": name, "task_default_queue": name, **conf}
        command = ["worker", "-P", "solo", "-l", "INFO", "-n", f"{name}@localhost"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        log = self.tmp_path / f"worker-{len(self.started)}.log"
        process = CeleryProcess(
            APP, command, log, env={"LEADERFEED_TEST_CONF": json.dumps(conf)}, ready_marker=ready
        )
        self.started.append(process)
        return process

    def leads(self, process: CeleryProcess) -> None:
        process.wait_ready(30)
        wait_until(lambda: "became leader" in process.log(), 15, interval=0.1)

    def close(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.close()


def errors(process: CeleryProcess) -> list[str]:
    return [match["text"] for match in ERROR.finditer(process.log())]


# -- the default backend: Sentinel and TLS come from the broker -----------------------------------


def app_with(**conf: Any) -> Celery:
    app = Celery("redis_production_app", set_as_current=False)
    app.conf.update(conf)
    return app


def test_a_sentinel_broker_gives_the_backend_its_url_and_transport_options() -> None:
    broker = f"sentinel://:{TEST_PASSWORD}@s1.example:26379/0;sentinel://s2.example:26380/0"
    app = app_with(
        broker_url=broker,
        broker_transport_options={
            "master_name": "mymaster",
            "sentinel_kwargs": {"password": "sentinel-Pa55"},
            "visibility_timeout": 60,  # the transport's own, not the backend's
        },
    )
    settings = resolve_settings(app)
    assert settings.backend_url == broker
    assert settings.backend_options == {
        "master_name": "mymaster",
        "sentinel_kwargs": {"password": "sentinel-Pa55"},
    }
    assert "sentinel-Pa55" not in repr(settings) and TEST_PASSWORD not in repr(settings)
    # leaderfeed_backend_options wins, key by key.
    app.conf.leaderfeed_backend_options = {"master_name": "other", "key_prefix": "lf"}
    assert resolve_settings(app).backend_options == {
        "master_name": "other",
        "sentinel_kwargs": {"password": "sentinel-Pa55"},
        "key_prefix": "lf",
    }


def test_a_sentinel_result_backend_takes_the_result_backend_transport_options() -> None:
    backend = "sentinel://r1.example:26379;sentinel://r2.example:26379"
    app = app_with(
        broker_url="amqp://guest@rabbit.example//",
        result_backend=backend,
        result_backend_transport_options={"master_name": "results"},
        redis_backend_use_ssl={"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"},
    )
    settings = resolve_settings(app)
    assert settings.backend_url == backend
    assert settings.backend_options == {
        "master_name": "results",
        "ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem"},
    }
    settings.store()  # builds (no connection): the options are valid for the backend


def test_broker_use_ssl_goes_with_a_redis_broker_url() -> None:
    use_ssl = {"ssl_cert_reqs": "CERT_REQUIRED", "ssl_ca_certs": "/ca.pem"}
    app = app_with(broker_url="rediss://:pw@cache.example:6380/0", broker_use_ssl=use_ssl)
    settings = resolve_settings(app)
    assert settings.backend_options == {"ssl": use_ssl}
    store = settings.store()
    assert isinstance(store, RedisBackend)
    # An explicit leaderfeed_backend takes nothing from the broker.
    app.conf.leaderfeed_backend = "redis://other.example/0"
    assert resolve_settings(app).backend_options == {}


def test_a_worker_on_a_sentinel_broker_without_leaderfeed_backend_leads(
    redis_sentinel_group: SentinelGroup, workers: Workers
) -> None:
    group = redis_sentinel_group
    worker = workers.start(
        {"broker_url": group.url, "broker_transport_options": {"master_name": group.master_name}}
    )
    workers.leads(worker)
    log = worker.log()
    assert "the broker is Redis behind Sentinel; options master_name from it" in log
    assert TEST_PASSWORD not in log


# -- Sentinel: bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "options", "message"),
    [
        pytest.param(
            "sentinel",
            {},
            "a sentinel:// backend needs the name of the master the sentinels monitor: set "
            "master_name in broker_transport_options (when the backend is the broker), "
            "result_backend_transport_options (when it is the result backend) or "
            "leaderfeed_backend_options (got None)",
            id="no-master-name",
        ),
        pytest.param(
            f"rediss://:{TEST_PASSWORD}@127.0.0.1:1/0?ssl_cert_reqs=CERT_MAYBE",
            {},
            "backend URL: ssl_cert_reqs must be CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE "
            "(or required, optional, none), got 'CERT_MAYBE'",
            id="bad-ssl-cert-reqs",
        ),
        pytest.param(
            f"redis://:{TEST_PASSWORD}@127.0.0.1:1/0",
            {"ssl": {"ssl_cert_reqs": "required", "ssl_ca_cert": "/ca.pem"}},
            "option 'ssl': unknown key(s) ssl_ca_cert (known: ssl_ca_certs, ssl_ca_data, "
            "ssl_ca_path, ssl_cert_reqs, ssl_certfile, ssl_check_hostname, ssl_ciphers, "
            "ssl_keyfile, ssl_min_version, ssl_password)",
            id="misspelt-tls-key",
        ),
    ],
)
def test_a_bad_redis_setting_ends_the_worker_in_one_line(
    redis_url: str,
    redis_sentinel_group: SentinelGroup,
    workers: Workers,
    backend: str,
    options: dict[str, Any],
    message: str,
) -> None:
    url = redis_sentinel_group.url if backend == "sentinel" else backend
    conf = {"broker_url": redis_url, "leaderfeed_backend": url}
    worker = workers.start({**conf, "leaderfeed_backend_options": options}, ready=None)
    status = worker.process.wait(30)
    output = worker.log()
    assert status != 0
    errors_shown = [line for line in output.splitlines() if line.startswith("Error:")]
    assert errors_shown == [f"Error: leaderfeed: {message}"]
    assert "Traceback" not in output and TEST_PASSWORD not in output


def test_an_unknown_master_name_is_one_error_naming_the_known_ones(
    redis_url: str, redis_sentinel_group: SentinelGroup, workers: Workers
) -> None:
    worker = workers.start(
        {
            "broker_url": redis_url,
            "leaderfeed_backend": redis_sentinel_group.url,
            "leaderfeed_backend_options": {"master_name": "no-such-master"},
        }
    )
    worker.wait_ready(30)
    wait_until(lambda: errors(worker), 15, interval=0.1)
    (error,) = errors(worker)
    assert "no sentinel at 127.0.0.1:" in error
    assert "monitors a master named 'no-such-master' (they monitor: lfmaster)" in error
    assert "set master_name" in error
    assert TEST_PASSWORD not in worker.log()


def test_sentinels_that_do_not_answer_are_an_outage(redis_sentinel_group: SentinelGroup) -> None:
    dead = "sentinel://:hunter2-secret@127.0.0.1:9;sentinel://127.0.0.1:19"
    backend = backend_from_url(dead, name="x", timeout=0.5, options={"master_name": "m"})
    with pytest.raises(BackendUnavailable) as raised:
        backend.connect()
    assert not isinstance(raised.value, StoreRefused)
    assert "hunter2-secret" not in str(raised.value)


# -- Cluster ---------------------------------------------------------------------------------------


def test_a_cluster_client_works_and_the_feed_is_sharded(
    redis_cluster_group: RedisClusterGroup,
) -> None:
    from redis.cluster import ClusterNode, RedisCluster

    client = RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in redis_cluster_group.ports],
        password=TEST_PASSWORD,
    )
    name = f"c-{uuid.uuid4().hex[:8]}"
    feeds = [
        LeaderFeed(
            "redis+cluster://unused:1",
            name=name,
            member_id=f"m{index}",
            heartbeat_interval=0.1,
            election_timeout_min=0.4,
            election_timeout_max=0.6,
            options={"client": client},
        )
        for index in range(2)
    ]
    try:
        for feed in feeds:
            feed.start()
        leader = wait_until(lambda: [f for f in feeds if f.is_leader], 5)[0]
        backend = leader.backend
        assert isinstance(backend, RedisBackend) and backend.sharded
        node = backend.feed_client()
        assert backend.channel.encode() in node.execute_command("PUBSUB", "SHARDCHANNELS")
        leader.stop()  # the resignation reaches the other member through SSUBSCRIBE
        wait_until(lambda: any(f.is_leader for f in feeds if f is not leader), 0.4)
    finally:
        for feed in feeds:
            feed.stop()
        client.close()


def test_a_key_prefix_that_splits_the_election_across_slots_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="different Redis Cluster hash slots"):
        backend_from_url("redis+cluster://h:7000", name="x", options={"key_prefix": "a{}"})
    # "{}" is no hash tag: each key would be hashed whole, to a slot of its own.
    # One tag for all keys: fine.
    backend_from_url("redis+cluster://h:7000", name="x", options={"key_prefix": "a{b}"})


def test_a_cluster_url_to_a_plain_server_says_so(redis_url: str) -> None:
    port = redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    backend = backend_from_url(f"redis+cluster://:{TEST_PASSWORD}@127.0.0.1:{port}", name="x")
    with pytest.raises(StoreRefused, match="not part of a Redis Cluster"):
        backend.connect()


# -- TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["CERT_REQUIRED", "required"])
def test_celery_spellings_of_ssl_cert_reqs_in_a_rediss_url(
    tls_server: TlsRedisServer, tls_files: TlsFiles, spelling: str
) -> None:
    url = tls_server.url(query=f"?ssl_cert_reqs={spelling}&ssl_ca_certs={tls_files.ca}")
    backend = backend_from_url(url, name=f"t-{uuid.uuid4().hex[:8]}")
    backend.connect()
    assert backend.claim(0, "a", "tok", min_term=1, min_version=1).ok
    backend.close()


def test_the_ssl_option_takes_broker_use_ssl_as_celery_writes_it(
    tls_server: TlsRedisServer, tls_files: TlsFiles
) -> None:
    use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(tls_files.ca)}
    # A redis:// URL with TLS settings is TLS, as kombu makes it.
    backend = backend_from_url(
        tls_server.url("redis"), name=f"t-{uuid.uuid4().hex[:8]}", options={"ssl": use_ssl}
    )
    backend.connect()
    assert backend.read().record is None
    backend.close()


def test_an_unknown_ssl_cert_reqs_is_one_configuration_line() -> None:
    with pytest.raises(ConfigurationError) as raised:
        backend_from_url("rediss://:pw@h:6380/0?ssl_cert_reqs=CERT_MAYBE", name="x")
    assert str(raised.value) == (
        "backend URL: ssl_cert_reqs must be CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE "
        "(or required, optional, none), got 'CERT_MAYBE'"
    )
    with pytest.raises(ConfigurationError, match="unknown key"):
        backend_from_url("rediss://h/0", name="x", options={"ssl": {"ssl_ca_cert": "/x"}})


def test_a_worker_on_a_tls_broker_takes_broker_use_ssl_and_leads(
    tls_server: TlsRedisServer, tls_files: TlsFiles, workers: Workers
) -> None:
    worker = workers.start(
        {
            "broker_url": tls_server.url(),
            "broker_use_ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": str(tls_files.ca)},
        }
    )
    workers.leads(worker)
    assert "options ssl from it" in worker.log()
    assert TEST_PASSWORD not in worker.log()


def test_tls_mismatches_are_one_error_each_that_says_so(
    redis_url: str, tls_server: TlsRedisServer, workers: Workers
) -> None:
    plain_to_tls = workers.start(
        {"broker_url": redis_url, "leaderfeed_backend": tls_server.url("redis")}
    )
    unknown_ca = workers.start(
        {
            "broker_url": redis_url,
            "leaderfeed_backend": tls_server.url(query="?ssl_cert_reqs=CERT_REQUIRED"),
        }
    )
    for worker in (plain_to_tls, unknown_ca):
        worker.wait_ready(30)
    wait_until(lambda: errors(plain_to_tls) and errors(unknown_ca), 15, interval=0.1)
    (plain,) = errors(plain_to_tls)
    assert "the store speaks TLS and the backend URL does not" in plain
    assert "use rediss://" in plain
    (ca,) = errors(unknown_ca)
    assert "the store's TLS certificate was not accepted (self-signed certificate" in ca
    assert "ssl_ca_certs" in ca
    for worker in (plain_to_tls, unknown_ca):
        assert TEST_PASSWORD not in worker.log()


# -- wait_replicas -------------------------------------------------------------------------------


@pytest.fixture
def master_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    master = RedisServer(password=TEST_PASSWORD).start()
    replica = RedisServer(password=TEST_PASSWORD, replica_of=master.port).start()
    yield master, replica
    replica.close()
    master.close()


def test_wait_replicas_acts_and_announces_only_acknowledged_writes(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_and_replica
    name = f"w-{uuid.uuid4().hex[:8]}"
    writer = backend_from_url(master.url, name=name, options={"wait_replicas": 1})
    watcher = backend_from_url(master.url, name=name)
    writer.connect()
    watcher.connect()
    feed = watcher.subscribe()
    try:
        claimed = writer.claim(0, "a", "tok", min_term=1, min_version=1)
        assert claimed.ok
        record = claimed.observation.record
        assert record is not None
        wait_until(lambda: feed.poll(0.1), 2, message="the acknowledged claim announced")
        assert replica.client().get(f"leaderfeed:{{{name}}}:leader") is not None
        assert writer.write_entry(record.term, "tok", "job", None, "v1")

        replica.cut_replication()  # the master no longer has a replica to acknowledge
        with pytest.raises(BackendUnavailable, match="0 of 1 replica"):
            writer.renew(record.term, "tok")
        assert feed.poll(0.3) == []  # an unacknowledged write is not announced
        with pytest.raises(BackendUnavailable, match="acknowledged"):
            writer.write_entry(record.term, "tok", "job", "v1", "v2")
        # A refused compare-and-set writes nothing, so it needs no acknowledgement.
        assert not writer.renew(record.term, "wrong-token").ok
    finally:
        feed.close()
        writer.close()
        watcher.close()


def test_wait_replicas_takes_a_mark_as_made_only_once_acknowledged(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_and_replica
    name = f"w-{uuid.uuid4().hex[:8]}"
    marker = backend_from_url(master.url, name=name, options={"wait_replicas": 1})
    marker.connect()
    try:
        assert marker.mark_once("k1", "v1", 60) is None
        # Acknowledged: the replica has it (in memory) by the time mark_once returns.
        assert replica.client().get(f"leaderfeed:{{{name}}}:mark:k1") == b"v1"
        replica.cut_replication()
        with pytest.raises(BackendUnavailable, match="0 of 1 replica"):
            marker.mark_once("k2", "v2", 60)
        # Retried with its own value (the worker's next try): still not acknowledged, so still
        # not made - a retry must not pass a mark the replicas never had.
        with pytest.raises(BackendUnavailable, match="0 of 1 replica"):
            marker.mark_once("k2", "v2", 60)
        # Another value over a held mark writes nothing, so it needs no acknowledgement.
        assert marker.mark_once("k1", "other", 60) == "v1"
    finally:
        marker.close()


def test_marks_share_the_hash_slot_of_their_election_whatever_their_key() -> None:
    from redis.crc import key_slot

    backend = RedisBackend("redis://h/0", name="slot-test")
    assert isinstance(backend, RedisBackend)
    slot = key_slot(backend.record_key.encode())
    for key in ("plain", "{other}", "}{", "a{b}c", ""):
        assert key_slot((backend.mark_prefix + key).encode()) == slot


# -- URLs and options, no server -----------------------------------------------------------------


def test_every_password_of_a_list_of_sentinels_is_hidden_and_every_host_shown() -> None:
    url = "sentinel://:first-Pa55@s1.example:26379/0;sentinel://:second-Pa55@s2.example:26380"
    backend = backend_from_url(url, name="x", options={"master_name": "m"})
    assert (
        backend.display_url == "sentinel://:***@s1.example:26379/0;sentinel://:***@s2.example:26380"
    )
    told = backend.redact(f"cannot reach {url}: second-Pa55 refused on s2.example")
    assert "Pa55" not in told and "s2.example" in told and "sentinel" in told


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("redis://h/0", {"master_name": "m"}, "option 'master_name' is for a sentinel://"),
        ("unix:///tmp/r.sock", {"ssl": True}, "option 'ssl' is for TCP connections"),
        ("redis://h/0", {"wait_replicas": -1}, "'wait_replicas' must be a whole number >= 0"),
        ("sentinel://h:1", {"master_name": "m", "sentinel_kwargs": 3}, "must be a mapping"),
        ("redis+cluster://h:7000/2", {}, "a Cluster has only database 0"),
    ],
)
def test_options_that_do_not_fit_the_url_are_refused_in_one_line(
    url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        backend_from_url(url, name="x", options=options)
