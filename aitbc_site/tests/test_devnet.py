"""``python manage.py devnet``: one command brings up a working system and stops all of it."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from websockets.sync.client import ClientConnection, connect

from conftest import Spawned, clean_env, manage_argv, pid_alive, wait_until

STARTUP_TIMEOUT = 120
RECEIVE_TIMEOUT = 30
# The devnet's parts take ports P .. P+20 (nodes at P+6+10i, providers at P+8+10j).
PORT_BLOCK = 21


def admin_session(base_url: str, password: str) -> requests.Session:
    """A session logged in as ``admin`` through the admin's login form."""
    session = requests.Session()
    form = session.get(f"{base_url}/admin/login/", timeout=10)
    assert form.status_code == 200
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert match, "the login form carries no CSRF token"
    answer = session.post(
        f"{base_url}/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": match.group(1), "username": "admin", "password": password, "next": "/admin/"},
        headers={"Referer": f"{base_url}/admin/login/"},
        allow_redirects=False,
        timeout=10,
    )
    assert answer.status_code == 302, f"admin login failed ({answer.status_code})"
    assert "sessionid" in session.cookies
    return session


def next_event(socket: ClientConnection, event_type: str) -> dict:
    """The next event of ``event_type``; others (blocks, jobs) may arrive first."""
    deadline = time.monotonic() + RECEIVE_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {event_type!r} event within {RECEIVE_TIMEOUT}s")
        try:
            event = json.loads(socket.recv(timeout=remaining))
        except TimeoutError:
            pytest.fail(f"no {event_type!r} event within {RECEIVE_TIMEOUT}s")
        if event.get("type") == event_type:
            return event


@pytest.mark.process
def test_devnet_serves_a_logged_in_round_trip_and_stops_every_process(
    spawn: Callable[..., Spawned], free_port_range: Callable[[int], int], tmp_path: Path
) -> None:
    port = free_port_range(PORT_BLOCK)
    data_dir = tmp_path / "data"
    network_file = data_dir / "devnet" / "network.json"
    devnet = spawn(manage_argv("devnet", "--port", str(port)), env=clean_env(AITBC_DATA_DIR=data_dir), name="devnet")

    def network_written() -> bool:
        devnet.assert_running()
        return network_file.exists()

    wait_until(network_written, timeout=STARTUP_TIMEOUT, interval=0.2, message="network.json")
    network = json.loads(network_file.read_text())
    base_url = network["dashboard_url"]
    assert base_url == f"http://127.0.0.1:{port}"
    pids = [entry["pid"] for entry in network["processes"]]
    assert devnet.pid in pids
    assert network["coordinator"]["pid"] in pids

    health = requests.get(f"{base_url}/health", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["mode"] == "embedded"
    assert requests.get(f"{base_url}/admin/login/", timeout=10).status_code == 200

    password_file = Path(network["admin"]["password_file"])
    assert password_file.stat().st_mode & 0o077 == 0, "the admin password file is readable by others"
    session = admin_session(base_url, password_file.read_text().strip())

    with connect(
        f"ws://127.0.0.1:{port}/ws/events/",
        additional_headers={"Cookie": f"sessionid={session.cookies['sessionid']}", "Origin": base_url},
        open_timeout=RECEIVE_TIMEOUT,
    ) as socket:
        assert next_event(socket, "hello") == {"type": "hello", "user": "admin"}

        queued = session.post(
            f"{base_url}/v1/system/ping", headers={"X-CSRFToken": session.cookies["csrftoken"]}, timeout=10
        )
        assert queued.status_code == 202, queued.text
        token = queued.json()["token"]

        assert next_event(socket, "ping")["token"] == token

    devnet.process.send_signal(signal.SIGTERM)
    assert devnet.process.wait(timeout=60) == 0, devnet.log()[-4000:]
    wait_until(
        lambda: not any(pid_alive(pid) for pid in pids),
        timeout=30,
        message=f"every devnet process ({pids}) to exit",
    )
