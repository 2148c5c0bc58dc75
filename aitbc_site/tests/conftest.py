from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery
from celery import _state as celery_state
from celery._state import _set_task_join_will_block

from conftest import Spawned, clean_env, manage_argv, wait_until


@pytest.fixture
def memory_app(unique_name: Callable[[str], str]) -> Iterator[Celery]:
    """A Celery app on the in-memory broker, as embedded mode runs it."""
    # No Django fixup: it would close the test thread's database connection (inside the
    # test's transaction) when the worker starts.
    app = Celery("aitbc-embedded-test", broker="memory://", backend="cache+memory://", set_as_current=False, fixups=[])
    app.conf.task_default_queue = unique_name("embedded-queue")
    app.conf.broker_transport = "aitbc_site.embedded:MemoryTransport"
    app.conf.broker_transport_options = {"polling_interval": 1.0}
    # The worker's pool threads look tasks up in Celery's default app (a plain
    # WorkController does not bind its app to them as `celery worker` does); in
    # `serve` that is the project's app, here it must be this one.
    previous_default = celery_state.default_app
    app.set_default()
    yield app
    celery_state.set_default_app(previous_default)
    app.close()
    # Starting a worker sets this process-wide flag (result.get() refuses to run inside
    # a task); clear it so later tests may wait for results.
    _set_task_join_will_block(False)


class Served:
    def __init__(self, process: Spawned, url: str) -> None:
        self.process = process
        self.url = url


@pytest.fixture
def start_serve(spawn: Callable[..., Spawned], free_port: int, tmp_path: Path) -> Callable[..., Served]:
    """``start_serve(**env)``: ``manage.py serve --migrate`` on a free port with its own data directory.

    Returns once the server answers HTTP (whatever its health says).
    """

    def _start(**env: str) -> Served:
        url = f"http://127.0.0.1:{free_port}"
        process = spawn(
            manage_argv("serve", "--migrate", "--host", "127.0.0.1", "--port", str(free_port)),
            env=clean_env(AITBC_DATA_DIR=tmp_path / "serve-data", **env),
            name="serve",
        )

        def answers() -> bool:
            process.assert_running()
            requests.get(f"{url}/health", timeout=5)
            return True

        wait_until(answers, timeout=60, interval=0.2, message=f"serve to answer at {url}")
        return Served(process, url)

    return _start
