"""Redis with a password and Redis over TLS, exactly as settings build their clients.

Each test starts its own redis-server on a free loopback port: one with
``requirepass``, one with TLS (and a password) whose certificates come from a CA made
here with the ``openssl`` CLI. Settings are read once per process, so the client side
runs in fresh interpreters with nothing but ``REDIS_URL`` (and ``REDIS_CA_FILE``) to
go on: a probe that sends through the channel layer, queues Celery tasks and calls
``/health``, and a ``celery worker`` that runs the tasks and answers through the
layer. A wrong password, a missing one and an untrusted CA must each give a 503 naming
the parts that are down, with the reason, and never the password.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from conftest import PROJECT_ROOT, Spawned, clean_env, find_free_port, wait_until

pytestmark = pytest.mark.process

# URL-special characters, so every client must percent-decode the password the same way.
PASSWORD = "pw/" + secrets.token_urlsafe(18) + "@:+%"
WRONG_PASSWORD = "wrong-" + secrets.token_urlsafe(18)

# Runs in a fresh interpreter: the layer, the broker, the results and /health, all built
# by settings from the environment. Prints one JSON line.
PROBE = r"""
import asyncio, json, os, sys, time, uuid

import django

os.environ["DJANGO_SETTINGS_MODULE"] = "aitbc_site.settings"
django.setup()

from channels.layers import get_channel_layer
from django.test import Client

from aitbc_site import shared_state
from aitbc_site.events import user_group
from aitbc_site.tasks import echo, ping

out = {}
response = Client().get("/health")
out["health"] = [response.status_code, response.json()]

if sys.argv[1] == "full":
    layer = get_channel_layer()
    user_id = 4242
    direct, via_worker = uuid.uuid4().hex, uuid.uuid4().hex

    async def round_trips():
        channel = await layer.new_channel()
        await layer.group_add(user_group(user_id), channel)
        await layer.group_send(user_group(user_id), {"type": "event.message", "event": {"token": direct}})
        first = await asyncio.wait_for(layer.receive(channel), 10)
        # Broker -> worker -> the worker's own channel layer -> here.
        ping.delay(user_id, via_worker, time.time())
        second = await asyncio.wait_for(layer.receive(channel), 60)
        return first["event"]["token"], second["event"]["token"]

    got_direct, got_via_worker = asyncio.run(round_trips())
    out["layer_direct"] = got_direct == direct
    out["layer_via_worker"] = got_via_worker == via_worker
    # The result comes back through the result backend, from another process.
    result = echo.delay("hello").get(timeout=60)
    out["echo"] = result["value"]
    out["worker_pid_differs"] = result["pid"] != os.getpid()
    shared_state.counter_add("probe_total", 2)
    out["shared_counter"] = shared_state.counters().get("probe_total")

print(json.dumps(out))
"""


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    other_ca: Path  # a CA that signed nothing the server shows


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=AITBC test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return key, cert


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    directory = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = make_ca(directory, "ca")
    _other_key, other_cert = make_ca(directory, "other-ca")
    server_key, csr, server_cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(server_key), "-out", str(csr), "-subj", "/CN=127.0.0.1",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(server_cert), "-days", "2", "-extfile", str(extensions),
        cwd=directory,
    )  # fmt: skip
    return Certificates(ca=ca_cert, server_cert=server_cert, server_key=server_key, other_ca=other_cert)


@dataclass(frozen=True)
class RedisServer:
    port: int
    process: subprocess.Popen
    log_path: Path
    tls: bool

    def url(self, password: str | None = PASSWORD) -> str:
        auth = f":{quote(password, safe='')}@" if password is not None else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"


def start_redis(directory: Path, extra: list[str], *, tls: bool, ca: Path | None = None) -> RedisServer:
    directory.mkdir(parents=True, exist_ok=True)
    port = find_free_port()
    listen = ["--port", "0", "--tls-port", str(port)] if tls else ["--port", str(port)]
    argv = [
        "redis-server", *listen, "--bind", "127.0.0.1", "--requirepass", PASSWORD,
        "--save", "", "--appendonly", "no", "--dir", str(directory), *extra,
    ]  # fmt: skip
    log_path = directory / "redis.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = RedisServer(port, process, log_path, tls)
    ssl_options = {"ssl_ca_certs": str(ca)} if tls else {}

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with {process.returncode}:\n{log_path.read_text()}")
        client = redis.Redis.from_url(server.url(), socket_timeout=2, socket_connect_timeout=2, **ssl_options)
        try:
            return client.ping()
        finally:
            client.close()

    wait_until(answers, timeout=20, message=f"redis-server on port {port}")
    return server


def stop_redis(server: RedisServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis-password"), [], tls=False)
    yield server
    stop_redis(server)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[RedisServer]:
    tls = [
        "--tls-cert-file", str(certificates.server_cert), "--tls-key-file", str(certificates.server_key),
        "--tls-ca-cert-file", str(certificates.ca), "--tls-auth-clients", "no",
    ]  # fmt: skip
    server = start_redis(tmp_path_factory.mktemp("redis-tls"), tls, tls=True, ca=certificates.ca)
    yield server
    stop_redis(server)


@pytest.fixture(scope="module")
def migrated_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose SQLite database is migrated (health checks the chain tables)."""
    data_dir = tmp_path_factory.mktemp("redis-hardened-data")
    subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "manage.py"), "migrate", "--no-input"],
        cwd=PROJECT_ROOT,
        env=clean_env(AITBC_DATA_DIR=data_dir),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return data_dir


def client_env(data_dir: Path, redis_url: str, ca_file: Path | None = None) -> dict[str, str]:
    env = {"AITBC_DATA_DIR": str(data_dir), "REDIS_URL": redis_url, "LOG_LEVEL": "WARNING"}
    if ca_file is not None:
        env["REDIS_CA_FILE"] = str(ca_file)
    return clean_env(**env)


def run_probe(env: dict[str, str], mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"probe failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def start_worker(spawn: Callable[..., Spawned], env: dict[str, str]) -> Spawned:
    argv = [
        sys.executable, "-m", "celery", "-A", "aitbc_site", "worker", "--pool", "solo", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
        "--hostname", f"hardened-{secrets.token_hex(4)}@%h",
    ]  # fmt: skip
    return spawn(argv, env=env, name="worker")


def assert_everything_works(probe: dict) -> None:
    status, body = probe["health"]
    assert status == 200, body
    assert body["mode"] == "redis"
    assert {name: body["checks"][name] for name in ("database", "channel_layer", "broker")} == {
        "database": "ok",
        "channel_layer": "ok",
        "broker": "ok",
    }
    assert probe["layer_direct"] and probe["layer_via_worker"], probe
    assert probe["echo"] == "hello" and probe["worker_pid_differs"], probe
    assert probe["shared_counter"] == 2.0, probe


def assert_down_with(probe: dict, reason: str, *secrets_: str) -> None:
    status, body = probe["health"]
    assert status == 503, body
    assert {"channel_layer", "broker"} <= set(body["down"]), body
    for part in ("channel_layer", "broker"):
        assert reason.lower() in body["checks"][part].lower(), body
    assert body["checks"]["database"] == "ok", body
    text = json.dumps(body)
    for secret in secrets_:
        assert secret not in text and quote(secret, safe="") not in text


def test_password_protected_redis_carries_layer_broker_results_and_health(
    password_redis: RedisServer, migrated_data_dir: Path, spawn: Callable[..., Spawned]
) -> None:
    env = client_env(migrated_data_dir, password_redis.url())
    worker = start_worker(spawn, env)

    probe = run_probe(env, "full")

    worker.assert_running()
    assert_everything_works(probe)
    assert PASSWORD not in json.dumps(probe["health"]) and quote(PASSWORD, safe="") not in json.dumps(probe)
    assert PASSWORD not in worker.log() and quote(PASSWORD, safe="") not in worker.log()


@pytest.mark.parametrize(
    ("password", "reason"),
    [(WRONG_PASSWORD, "invalid username-password pair"), (None, "authentication")],
    ids=["wrong-password", "no-password"],
)
def test_password_redis_refuses_a_wrong_or_missing_password_with_a_clear_503(
    password_redis: RedisServer, migrated_data_dir: Path, password: str | None, reason: str
) -> None:
    probe = run_probe(client_env(migrated_data_dir, password_redis.url(password)), "health")

    assert_down_with(probe, reason, PASSWORD, WRONG_PASSWORD)


def test_tls_redis_with_a_private_ca_carries_layer_broker_results_and_health(
    tls_redis: RedisServer, certificates: Certificates, migrated_data_dir: Path, spawn: Callable[..., Spawned]
) -> None:
    env = client_env(migrated_data_dir, tls_redis.url(), certificates.ca)
    worker = start_worker(spawn, env)

    probe = run_probe(env, "full")

    worker.assert_running()
    assert_everything_works(probe)
    assert PASSWORD not in worker.log() and quote(PASSWORD, safe="") not in worker.log()


@pytest.mark.parametrize("trust", ["other-ca", "system-cas"])
def test_tls_redis_with_an_untrusted_certificate_gives_a_clear_503(
    tls_redis: RedisServer, certificates: Certificates, migrated_data_dir: Path, trust: str
) -> None:
    ca_file = certificates.other_ca if trust == "other-ca" else None

    probe = run_probe(client_env(migrated_data_dir, tls_redis.url(), ca_file), "health")

    assert_down_with(probe, "certificate verify failed", PASSWORD)


def test_tls_redis_refuses_a_plain_connection(tls_redis: RedisServer, migrated_data_dir: Path) -> None:
    plain = tls_redis.url().replace("rediss://", "redis://", 1)

    probe = run_probe(client_env(migrated_data_dir, plain), "health")

    status, body = probe["health"]
    assert status == 503, body
    assert {"channel_layer", "broker"} <= set(body["down"]), body
