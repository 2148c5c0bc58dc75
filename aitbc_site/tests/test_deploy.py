"""``deploy/systemd``: each unit's command line starts the role it names.

Not under systemd: each unit's ExecStartPre and ExecStart are read, their ``${VAR}``
filled from the test's environment (the test's Redis and a scratch PostgreSQL database),
``/opt/aitbc`` replaced by this checkout, and run directly. Then each role is checked
doing its job: the web answers /health in Redis mode, a worker runs a queued task, beat
sends due tasks from the database schedule, the node serves its chain, and the provider
registers its offer with the web process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from conftest import PROJECT_ROOT, Spawned, clean_env, find_free_port, redis_url_with_db, wait_until

UNITS = PROJECT_ROOT / "deploy" / "systemd"
INSTALL_ROOT = "/opt/aitbc"

pytestmark = pytest.mark.process


def unit_commands(name: str, env: dict[str, str]) -> tuple[list[list[str]], list[str]]:
    """(ExecStartPre argvs, ExecStart argv) of a unit, as systemd would expand them for worker 1."""
    pre, start = [], None
    for line in (UNITS / name).read_text().splitlines():
        key, sep, value = line.partition("=")
        if not sep or key.strip() not in ("ExecStartPre", "ExecStart"):
            continue
        value = value.replace("%i", "1").replace("%H", "testhost").replace(INSTALL_ROOT, str(PROJECT_ROOT))
        # systemd's ${VAR} as a word of its own is exactly one argument, even when empty.
        argv = [re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word) for word in shlex.split(value)]
        argv[0] = argv[0].replace(str(PROJECT_ROOT / ".venv" / "bin"), str(Path(sys.executable).parent))
        if key.strip() == "ExecStart":
            start = argv
        else:
            pre.append(argv)
    assert start, f"{name} has no ExecStart"
    return pre, start


def test_every_role_has_a_unit() -> None:
    names = {p.name for p in UNITS.glob("*.service")}
    assert names == {
        "aitbc-web.service",
        "aitbc-worker@.service",
        "aitbc-beat.service",
        "aitbc-node.service",
        "aitbc-provider.service",
    }
    for name in names:
        text = (UNITS / name).read_text()
        assert "EnvironmentFile=/etc/aitbc/" in text and "WorkingDirectory=/opt/aitbc" in text


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A fresh PostgreSQL database on the test server, dropped afterwards."""
    import psycopg

    base = os.environ.get("AITBC_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    name = f"aitbc_deploy_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    root, _, rest = base.rpartition("/")
    query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    try:
        yield f"{root}/{name}{query}"
    finally:
        with psycopg.connect(base.replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_each_unit_starts_its_role_against_redis_and_postgresql(
    spawn: Callable[..., Spawned], redis_url: str, scratch_database: str, tmp_path: Path, unique_name
) -> None:
    from chain.tests.support import fixed_keys
    from chain.tests.test_node_process import write_node_files

    web_port, node_port, provider_port = find_free_port(), find_free_port(), find_free_port()
    # A Redis database of its own, so the units' default queue holds only this test's tasks.
    redis = redis_url_with_db(redis_url, 13)
    web_env = {
        "AITBC_DATA_DIR": str(tmp_path / "web"),
        "DATABASE_URL": scratch_database,
        "REDIS_URL": redis,
        "AITBC_CHANNEL_PREFIX": unique_name("deploy"),
        "HOST": "127.0.0.1",
        "PORT": str(web_port),
        "LOG_LEVEL": "INFO",
        "AITBC_WORKER_CONCURRENCY": "2",
        "AITBC_NODE_URL": f"http://127.0.0.1:{node_port}",
    }

    def start(unit: str, env: dict[str, str]) -> Spawned:
        pre, argv = unit_commands(unit, env)
        for command in pre:
            subprocess.run(command, cwd=PROJECT_ROOT, env=clean_env(**env), check=True, timeout=300)
        return spawn(argv, env=clean_env(**env), name=unit)

    node_files = write_node_files(tmp_path / "node", fixed_keys(), block_time_ms=200)
    node_env = {
        "AITBC_DATA_DIR": str(node_files.data_dir),
        "AITBC_GENESIS": str(node_files.genesis_path),
        "AITBC_VALIDATOR_KEY": str(node_files.keystore_path),
        "AITBC_VALIDATOR_PASSWORD_FILE": str(node_files.password_path),
        "HOST": "127.0.0.1",
        "PORT": str(node_port),
        "AITBC_PUBLIC_URL": "",
        "AITBC_PEERS": "",
    }
    node = start("aitbc-node.service", node_env)
    node_url = f"http://127.0.0.1:{node_port}"
    wait_until(
        lambda: node.assert_running() or requests.get(f"{node_url}/status", timeout=5).json()["height"] >= 2,
        timeout=120,
        message="the node unit to produce blocks",
    )

    web = start("aitbc-web.service", web_env)
    base = f"http://127.0.0.1:{web_port}"

    def healthy() -> dict:
        web.assert_running()
        answer = requests.get(f"{base}/health", timeout=5)
        return answer.json() if answer.status_code == 200 else None

    assert wait_until(healthy, timeout=120, interval=0.3, message="the web unit's /health")["mode"] == "redis"

    worker = start("aitbc-worker@.service", web_env)
    beat = start("aitbc-beat.service", web_env)
    from celery import Celery

    app = Celery("deploy-test", broker=redis, backend=redis)
    try:
        result = app.send_task("aitbc_site.echo", args=["deployed"])
        answer = result.get(timeout=120)
    finally:
        app.close()
    worker.assert_running()
    assert answer["value"] == "deployed" and answer["hostname"] == "worker1@testhost"
    wait_until(
        lambda: beat.assert_running() or "Sending due task" in beat.log(),
        timeout=60,
        message="beat to send a due task from the database schedule",
    )

    provider_env = {
        "AITBC_DATA_DIR": str(tmp_path / "provider"),
        "AITBC_PROVIDER_BACKEND": "llamacpp",
        "AITBC_PROVIDER_MODEL": "smollm2:135m",
        "AITBC_PROVIDER_NAME": "deployed-provider",
        "AITBC_COORDINATOR_URL": base,
        "HOST": "127.0.0.1",
        "PORT": str(provider_port),
    }
    provider = start("aitbc-provider.service", provider_env)

    def registered() -> bool:
        provider.assert_running()
        providers = requests.get(f"{base}/v1/providers", timeout=5).json()
        return any(p["name"] == "deployed-provider" for p in providers)

    try:
        wait_until(registered, timeout=120, interval=0.5, message="the provider unit to register with the web unit")
    except BaseException:
        print(provider.log()[-3000:], web.log()[-3000:])
        raise
    assert json.loads(requests.get(f"http://127.0.0.1:{provider_port}/health", timeout=5).text)
