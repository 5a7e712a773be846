"""Redis as deployed: every connection setting reaches redis-py's pools, sync and asyncio, and the relay
works through real unix sockets, TLS, Sentinel; a missing Redis stops `relay serve` and `relay worker` at
once, saying which Redis (never its password) and why."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.connection
import redis.sentinel
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis import Redis
from rq import Worker

from relay.dev.redis_server import (
    EmbeddedRedis,
    EmbeddedSentinel,
    TlsFiles,
    find_redis_server,
    free_port,
    supports_tls,
)
from relay.errors import RedisUnavailable, SettingsError
from relay.infra.redis_client import check_redis, connect, connect_async, describe_redis
from relay.ingress.app import create_app
from relay.mapping.config import RelayConfig
from relay.settings import Settings, load_settings
from tests.conftest import (
    ADMIN_HEADERS,
    KNOWN_PHLO,
    Sandbox,
    clean_environment,
    drain_queue,
    missing,
    poll,
    with_admin_token,
)
from tests.worker.test_delivery_to_runner import FORM
from tests.worker.test_worker_processes import worker_process

PASSWORD = "master-Pa55word"
SENTINEL_PASSWORD = "sentinel-Pa55word"
MASTER = "mymaster"
DB = 3  # not 0: the URL's db must reach the master found through Sentinel


def redis_settings(base: Settings, **redis_fields: Any) -> Settings:
    """The test's settings with only these Redis settings, validated as if read from the environment."""
    fields = {key: value for key, value in base.model_dump().items() if not key.startswith("redis_")}
    return load_settings(_env_file=None, **fields, **redis_fields)


def bare(**redis_fields: Any) -> Settings:
    return load_settings(_env_file=None, **redis_fields)


def self_signed(directory: Path) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost: the server's, its CA, and a client's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay-test-redis")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "redis.crt", directory / "redis.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return TlsFiles(cert_file=cert_file, key_file=key_file, ca_file=cert_file)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return self_signed(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, certs: TlsFiles) -> Iterator[EmbeddedRedis]:
    """A Redis as deployed: a password, a unix socket and (when the binary has TLS) a TLS port."""
    data = tmp_path_factory.mktemp("deployed")
    tls = certs if supports_tls() else None
    with EmbeddedRedis(
        data, appendonly=False, password=PASSWORD, unix_socket=data / "redis.sock", tls=tls
    ) as server:
        yield server


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory, deployed: EmbeddedRedis) -> Iterator[EmbeddedSentinel]:
    with EmbeddedSentinel(
        tmp_path_factory.mktemp("sentinel"), deployed, MASTER, password=SENTINEL_PASSWORD
    ) as server:
        yield server


@pytest.fixture
def master(deployed: EmbeddedRedis) -> Iterator[Redis]:
    """A plain client of the deployed Redis, emptied before the test."""
    client = Redis(host=deployed.host, port=deployed.port, password=PASSWORD, db=DB)
    client.flushall()
    yield client
    client.close()


def sentinel_fields(sentinel: EmbeddedSentinel, scheme: str = "redis") -> dict[str, Any]:
    # The URL's host is never contacted (.invalid never resolves): Sentinel names the master.
    return {
        "redis_url": f"{scheme}://:{PASSWORD}@not-used.invalid/{DB}",
        "redis_sentinels": [sentinel.address],
        "redis_sentinel_master": MASTER,
        "redis_sentinel_password": SENTINEL_PASSWORD,
    }


# --- every setting reaches the pool: sync and asyncio, plain and blocking ---------------------------------

FLAVOURS = {
    "sync": (redis.connection, redis.sentinel, redis.ConnectionPool, redis.BlockingConnectionPool),
    "async": (
        redis.asyncio.connection,
        redis.asyncio.sentinel,
        redis.asyncio.ConnectionPool,
        redis.asyncio.BlockingConnectionPool,
    ),
}


def client_of(flavour: str, settings: Settings, **options: Any) -> Any:
    return connect(settings, **options) if flavour == "sync" else connect_async(settings, **options)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("blocking", [False, True])
def test_redis_url_and_options_reach_the_pool(flavour: str, blocking: bool) -> None:
    connection, _, pool_class, blocking_class = FLAVOURS[flavour]
    settings = bare(redis_url=f"redis://relay:{PASSWORD}@redis.internal:6380/2")
    options = {"max_connections": 7, "timeout": 3} if blocking else {}
    pool = client_of(flavour, settings, blocking_pool=blocking, socket_timeout=4, **options).connection_pool
    assert type(pool) is (blocking_class if blocking else pool_class)
    assert pool.connection_class is connection.Connection
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.internal", 6380, 2)
    assert (kwargs["username"], kwargs["password"], kwargs["socket_timeout"]) == ("relay", PASSWORD, 4)
    if blocking:
        assert (pool.max_connections, pool.timeout) == (7, 3)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("blocking", [False, True])
def test_rediss_gets_every_tls_setting(flavour: str, blocking: bool, tmp_path: Path) -> None:
    connection, _, _, _ = FLAVOURS[flavour]
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    settings = bare(
        redis_url="rediss://:secret@redis.example.com:25061/0",
        redis_tls_cert_reqs="optional",
        redis_tls_ca_file=files["ca"],
        redis_tls_cert_file=files["cert"],
        redis_tls_key_file=files["key"],
    )
    pool = client_of(flavour, settings, blocking_pool=blocking).connection_pool
    assert pool.connection_class is connection.SSLConnection
    assert {key: pool.connection_kwargs[key] for key in TLS_KEYS} == {
        "ssl_cert_reqs": "optional",
        "ssl_ca_certs": str(files["ca"]),
        "ssl_certfile": str(files["cert"]),
        "ssl_keyfile": str(files["key"]),
    }


TLS_KEYS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cert_reqs_none_checks_neither_certificate_nor_hostname(flavour: str) -> None:
    # What managed Redis on Procfile platforms needs: its certificate is self-signed for no known host.
    settings = bare(
        redis_url="rediss://:secret@ec2-1-2-3-4.compute.amazonaws.com:7070", redis_tls_cert_reqs="none"
    )
    connection = client_of(flavour, settings).connection_pool.make_connection()
    tls = connection if flavour == "sync" else connection.ssl_context
    assert (tls.cert_reqs, tls.check_hostname) == (ssl.CERT_NONE, False)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_unix_socket_url_reaches_the_pool(flavour: str) -> None:
    connection, _, _, _ = FLAVOURS[flavour]
    pool = client_of(flavour, bare(redis_url="unix:///run/redis/redis.sock?db=4")).connection_pool
    assert pool.connection_class is connection.UnixDomainSocketConnection
    assert (pool.connection_kwargs["path"], pool.connection_kwargs["db"]) == ("/run/redis/redis.sock", 4)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("blocking", [False, True])
@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_sentinel_settings_reach_the_master_pool_and_the_sentinels(
    flavour: str, blocking: bool, scheme: str
) -> None:
    connection, sentinel, pool_class, blocking_class = FLAVOURS[flavour]
    settings = bare(
        redis_url=f"{scheme}://relay:{PASSWORD}@/5",
        redis_tls_cert_reqs="none",
        redis_sentinels=["10.0.0.1:26379", "[fd00::2]:26380"],
        redis_sentinel_master=MASTER,
        redis_sentinel_password=SENTINEL_PASSWORD,
    )
    options = {"max_connections": 9} if blocking else {}
    pool = client_of(
        flavour, settings, blocking_pool=blocking, socket_connect_timeout=2, **options
    ).connection_pool
    assert isinstance(pool, sentinel.SentinelConnectionPool)
    assert isinstance(pool, blocking_class) is blocking
    assert isinstance(pool, pool_class)
    assert (pool.service_name, pool.is_master) == (MASTER, True)
    tls = scheme == "rediss"
    assert issubclass(pool.connection_class, sentinel.SentinelManagedConnection)
    assert issubclass(pool.connection_class, connection.SSLConnection) is tls
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("relay", PASSWORD, 5)
    assert kwargs["socket_connect_timeout"] == 2
    assert "host" not in kwargs  # Sentinel finds it
    if blocking:
        assert pool.max_connections == 9
    sentinels = [client.connection_pool for client in pool.sentinel_manager.sentinels]
    assert [(each.connection_kwargs["host"], each.connection_kwargs["port"]) for each in sentinels] == [
        ("10.0.0.1", 26379),
        ("fd00::2", 26380),
    ]
    for each in sentinels:
        assert each.connection_kwargs["password"] == SENTINEL_PASSWORD
        assert each.connection_kwargs["socket_connect_timeout"] == 2
        assert each.connection_class is (connection.SSLConnection if tls else connection.Connection)
        if tls:
            assert each.connection_kwargs["ssl_cert_reqs"] == "none"
    if tls:
        assert kwargs["ssl_cert_reqs"] == "none"


# --- describe_redis and the settings' checks: never a password -----------------------------------------


@pytest.mark.parametrize(
    ("url", "described"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://:{PASSWORD}@host:6380/0", "redis://:***@host:6380/0"),
        (
            f"rediss://default:{PASSWORD}@redis.example.com:25061/1",
            "rediss://default:***@redis.example.com:25061/1",
        ),
        (f"unix://:{PASSWORD}@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        (f"unix:///run/redis.sock?db=2&password={PASSWORD}", "unix:///run/redis.sock?db=2&password=***"),
    ],
)
def test_describe_redis_masks_the_password(url: str, described: str) -> None:
    assert describe_redis(bare(redis_url=url)) == described


def test_describe_redis_names_the_sentinel_master() -> None:
    settings = bare(
        **{
            **sentinel_fields_for(["h1:26379", "h2:26379"]),
            "redis_url": f"rediss://:{PASSWORD}@/2",
        }
    )
    assert describe_redis(settings) == "sentinel master 'mymaster' via h1:26379,h2:26379 (db 2, TLS)"


def sentinel_fields_for(addresses: list[str]) -> dict[str, Any]:
    return {
        "redis_url": f"redis://:{PASSWORD}@/0",
        "redis_sentinels": addresses,
        "redis_sentinel_master": MASTER,
        "redis_sentinel_password": SENTINEL_PASSWORD,
    }


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"redis_sentinels": ["h1:26379"]}, ["RELAY_REDIS_SENTINELS", "RELAY_REDIS_SENTINEL_MASTER"]),
        ({"redis_sentinel_master": MASTER}, ["RELAY_REDIS_SENTINELS", "RELAY_REDIS_SENTINEL_MASTER"]),
        ({**sentinel_fields_for(["h1"])}, ["RELAY_REDIS_SENTINELS", "'h1' is not host:port"]),
        ({**sentinel_fields_for(["h1:port"])}, ["RELAY_REDIS_SENTINELS", "'h1:port'"]),
        ({**sentinel_fields_for(["::1:26379"])}, ["RELAY_REDIS_SENTINELS", "'::1:26379'"]),
        ({**sentinel_fields_for(["h1:0"])}, ["RELAY_REDIS_SENTINELS", "'h1:0'"]),
        (
            {**sentinel_fields_for(["h1:1"]), "redis_url": f"unix://:{PASSWORD}@/r.sock"},
            ["RELAY_REDIS_SENTINELS", "unix://"],
        ),
        ({"redis_url": f"http://:{PASSWORD}@host:6379"}, ["RELAY_REDIS_URL", "redis://, rediss://"]),
        ({"redis_url": f"redis://:{PASSWORD}@host:port/0"}, ["RELAY_REDIS_URL", "not a valid URL"]),
        ({"redis_tls_key_file": "client.key"}, ["RELAY_REDIS_TLS_KEY_FILE", "RELAY_REDIS_TLS_CERT_FILE"]),
    ],
)
def test_redis_settings_that_cannot_work_are_refused_naming_the_variables(
    fields: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(SettingsError) as refused:
        bare(**{"redis_url": f"redis://:{PASSWORD}@host:6379/0", **fields})
    message = str(refused.value)
    assert all(name in message for name in names), message
    assert PASSWORD not in message and SENTINEL_PASSWORD not in message


def test_sentinels_are_read_from_the_environment_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REDIS_SENTINELS", '["s1.internal:26379", "[fd00::3]:26379"]')
    monkeypatch.setenv("RELAY_REDIS_SENTINEL_MASTER", MASTER)
    settings = load_settings(_env_file=None)
    assert settings.redis_sentinels == ["s1.internal:26379", "[fd00::3]:26379"]
    assert (
        describe_redis(settings) == "sentinel master 'mymaster' via s1.internal:26379,[fd00::3]:26379 (db 0)"
    )


# --- real servers: a unix socket, Sentinel, TLS --------------------------------------------------------


async def round_trip(settings: Settings, key: str) -> tuple[Any, Any]:
    """Set and get ``key`` through a sync and through an asyncio client of the settings."""
    client = connect(settings)
    try:
        client.set(key, "sync")
        through_sync = client.get(key)
    finally:
        client.close()
    async_client = connect_async(settings)
    try:
        await async_client.set(key, "async")
        through_async = await async_client.get(key)
    finally:
        await async_client.aclose()
    return through_sync, through_async


async def test_a_unix_socket_sync_and_async(
    deployed: EmbeddedRedis, master: Redis, settings: Settings
) -> None:
    unix = redis_settings(settings, redis_url=f"unix://:{PASSWORD}@{deployed.unix_socket}?db={DB}")
    assert await round_trip(unix, "relay:test:unix") == (b"sync", b"async")
    assert master.get("relay:test:unix") == b"async"  # the same Redis, and the URL's db
    client = connect(unix)
    try:
        assert "U" in str(client.client_info()["flags"])  # Redis itself says: a unix socket client
    finally:
        client.close()


async def test_sentinel_finds_the_master_sync_and_async(
    sentinel: EmbeddedSentinel, master: Redis, settings: Settings
) -> None:
    through_sentinel = redis_settings(with_admin_token(settings), **sentinel_fields(sentinel))
    assert await round_trip(through_sentinel, "relay:test:sentinel") == (b"sync", b"async")
    assert master.get("relay:test:sentinel") == b"async"  # on the master, in the URL's db


async def test_a_webhook_is_delivered_through_sentinel_by_a_burst_worker(
    aiohttp_client: Any,
    sentinel: EmbeddedSentinel,
    master: Redis,
    settings: Settings,
    config: RelayConfig,
    sandbox: Sandbox,
) -> None:
    through_sentinel = redis_settings(with_admin_token(settings), **sentinel_fields(sentinel))
    client = await aiohttp_client(create_app(through_sentinel, config))
    response = await client.post("/hooks/website-form", json=FORM)
    assert response.status == 202
    body = await response.json()
    assert master.exists(f"rq:job:{body['jobs'][0]['job_id']}")  # stored on the master before any worker

    drain_queue(through_sentinel)  # a real `relay worker --burst` that knows only the Sentinel settings

    [run] = sandbox.runs()
    assert (run["path"], run["status"]) == (f"/v1/account/{run['auth_id']}/phlo/{KNOWN_PHLO}/", 201)
    view = await (await client.get(f"/events/{body['event_id']}", headers=ADMIN_HEADERS)).json()
    assert [each["status"] for each in view["runs"]] == ["succeeded"]


def test_a_read_cut_short_leaves_no_reply_for_the_next_command_through_sentinel(
    sentinel: EmbeddedSentinel, master: Redis, settings: Settings
) -> None:
    """redis-py's own Sentinel connection kept an interrupted read's connection, reply pending, in the
    pool; the relay's disconnects it, as redis-py does for every other connection."""
    client = connect(redis_settings(settings, **sentinel_fields(sentinel)))

    class Interrupted(Exception):
        pass

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)  # while BLPOP waits on the empty list
        with pytest.raises(Interrupted):
            client.blpop(["relay:test:empty"], timeout=1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    try:
        assert client.set("relay:test:after", "value") is True  # not BLPOP's late nil
        assert client.get("relay:test:after") == b"value"
    finally:
        client.close()


def test_a_worker_through_sentinel_shuts_down_warm_and_cleanly(
    sentinel: EmbeddedSentinel, master: Redis, settings: Settings
) -> None:
    through_sentinel = redis_settings(with_admin_token(settings), **sentinel_fields(sentinel))
    worker = subprocess.Popen(
        [sys.executable, "-m", "relay", "worker"],
        env=clean_environment(**through_sentinel.as_environment()),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # SIGTERM comes while the worker waits in BLMOVE on the empty queue.
        poll(lambda: True if any(c["cmd"] == "blmove" for c in master.client_list()) else None)
        worker.terminate()
        _, stderr = worker.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert Worker.all(connection=master) == []  # its death was registered


@pytest.mark.parametrize("endpoint", ["unix", "rediss", "sentinel"])
async def test_a_worker_and_its_scheduler_work_through_each_way_to_redis(
    aiohttp_client: Any,
    endpoint: str,
    deployed: EmbeddedRedis,
    sentinel: EmbeddedSentinel,
    master: Redis,
    settings: Settings,
    config: RelayConfig,
    sandbox: Sandbox,
) -> None:
    """RQ's scheduler (a forked process) rebuilds its connection from the worker's pool: a retry that it
    has to enqueue shows that this works for a unix socket, TLS and a master found through Sentinel."""
    if endpoint == "unix":
        fields: dict[str, Any] = {"redis_url": f"unix://:{PASSWORD}@{deployed.unix_socket}?db={DB}"}
    elif endpoint == "rediss":
        tls = tls_files(deployed)
        url = f"rediss://:{PASSWORD}@127.0.0.1:{deployed.tls_port}/{DB}"
        fields = {"redis_url": url, "redis_tls_ca_file": tls.ca_file}
    else:
        fields = sentinel_fields(sentinel)
    deployed_settings = redis_settings(settings, **fields)
    sandbox.fail(429, 1, retry_after=1)  # the retry waits in RQ's scheduled registry
    client = await aiohttp_client(create_app(deployed_settings, config))
    response = await client.post("/hooks/website-form", json=FORM)
    assert response.status == 202

    def both() -> list[dict[str, Any]] | None:
        runs = sandbox.runs()
        return runs if len(runs) == 2 else None

    with worker_process(deployed_settings):
        runs = await asyncio.to_thread(poll, both, 30.0)
    assert [run["status"] for run in runs] == [429, 201]
    assert master.zcard(f"rq:scheduled:{settings.queue_name}") == 0


def tls_files(server: EmbeddedRedis) -> TlsFiles:
    if server.tls is None:
        missing(
            f"{find_redis_server()} was built without TLS (apt-get install redis-server: Debian's has TLS)"
        )
    return server.tls


def tls_settings(server: EmbeddedRedis, **fields: Any) -> Settings:
    tls_files(server)
    return bare(redis_url=f"rediss://:{PASSWORD}@127.0.0.1:{server.tls_port}/{DB}", **fields)


async def test_tls_with_cert_reqs_none_accepts_a_self_signed_certificate(deployed: EmbeddedRedis) -> None:
    # As Heroku Redis needs: the certificate is checked by no CA, and names no host the client knows.
    settings = tls_settings(deployed, redis_tls_cert_reqs="none")
    assert await round_trip(settings, "relay:test:tls") == (b"sync", b"async")


async def test_tls_required_without_the_ca_fails_saying_why(deployed: EmbeddedRedis) -> None:
    settings = tls_settings(deployed, redis_tls_cert_reqs="required")
    client = connect(settings, retry=None)
    try:
        with pytest.raises(RedisUnavailable, match=r"certificate verify failed") as refused:
            check_redis(client, settings)
    finally:
        client.close()
    assert f"cannot reach Redis at rediss://:***@127.0.0.1:{deployed.tls_port}/{DB}: " in str(refused.value)
    assert PASSWORD not in str(refused.value)
    async_client = connect_async(settings)
    try:
        with pytest.raises(redis.ConnectionError, match=r"certificate verify failed"):
            await async_client.ping()
    finally:
        await async_client.aclose()


async def test_tls_required_with_the_ca_file_verifies_the_server(deployed: EmbeddedRedis) -> None:
    tls = tls_files(deployed)
    settings = tls_settings(deployed, redis_tls_cert_reqs="required", redis_tls_ca_file=tls.ca_file)
    assert await round_trip(settings, "relay:test:tls") == (b"sync", b"async")


async def test_mutual_tls_sends_the_client_certificate(tmp_path: Path, deployed: EmbeddedRedis) -> None:
    tls = tls_files(deployed)
    with EmbeddedRedis(
        tmp_path / "mtls", appendonly=False, password=PASSWORD, tls=tls, tls_auth_clients=True
    ) as server:
        without = tls_settings(server, redis_tls_ca_file=tls.ca_file)
        client = connect(without, retry=None)
        try:
            with pytest.raises(RedisUnavailable):
                check_redis(client, without)
        finally:
            client.close()
        with_cert = tls_settings(
            server,
            redis_tls_ca_file=tls.ca_file,
            redis_tls_cert_file=tls.cert_file,
            redis_tls_key_file=tls.key_file,
        )
        assert await round_trip(with_cert, "relay:test:mtls") == (b"sync", b"async")


# --- start-up: a Redis that cannot be reached stops the process at once ------------------------------


def start(command: str, settings: Settings, **redis_fields: Any) -> subprocess.CompletedProcess[str]:
    env = {**settings.as_environment(), **redis_settings(settings, **redis_fields).as_environment()}
    return subprocess.run(
        [sys.executable, "-m", "relay", command],
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_closed_port_stops_start_up_with_the_masked_url(command: str, settings: Settings) -> None:
    port = free_port()
    result = start(command, settings, redis_url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: cannot reach Redis at redis://:***@127.0.0.1:{port}/0: "), (
        result.stderr
    )
    assert "Connection refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_wrong_password_stops_start_up_without_showing_it(
    command: str, settings: Settings, deployed: EmbeddedRedis
) -> None:
    wrong = "not-the-Pa55word"
    result = start(command, settings, redis_url=f"redis://:{wrong}@127.0.0.1:{deployed.port}/0")
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"error: cannot reach Redis at redis://:***@127.0.0.1:{deployed.port}/0: "
    )
    assert "invalid username-password pair" in result.stderr or "WRONGPASS" in result.stderr, result.stderr
    assert wrong not in result.stdout + result.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_unreachable_sentinels_stop_start_up_naming_them(command: str, settings: Settings) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = start(command, settings, **sentinel_fields_for([address]))
    assert result.returncode == 2
    expected = (
        f"error: cannot reach Redis at sentinel master 'mymaster' via {address} (db 0): No master found"
    )
    assert result.stderr.startswith(expected), result.stderr
    assert PASSWORD not in result.stderr and SENTINEL_PASSWORD not in result.stderr
