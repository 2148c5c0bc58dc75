"""Fixtures shared by every app's tests.

Real services: PostgreSQL and Redis run on the machines we test on, and a test that
needs one FAILS when it is missing (``redis_url``), it never skips. Subprocesses are
started through ``spawn`` so they are always stopped at teardown, even when the test
fails half-way. Timeouts here are failure guards, never assertions on speed.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/14"

# Environment a subprocess may inherit; everything else (DATABASE_URL, REDIS_URL,
# SECRET_KEY, ...) is left out so the child sees only what its test gives it.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT")

T = TypeVar("T")


# -- test databases ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, request: pytest.FixtureRequest
) -> None:
    """Give each test run its own test database.

    Several people (and agents) run the suite at once on one machine against the same
    PostgreSQL server and data directory; with the fixed names ``test_<NAME>`` and
    ``<data dir>/test-aitbc.sqlite3`` one run would drop or overwrite another's database.
    With ``--reuse-db`` the fixed names stay, so the database can be found again.
    """
    from django.conf import settings

    if request.config.getoption("reuse_db", default=False):
        return
    suffix = f"run{os.getpid()}"
    for db_settings in settings.DATABASES.values():
        test = db_settings.setdefault("TEST", {})
        name = test.get("NAME")
        if db_settings["ENGINE"] == "django.db.backends.sqlite3":
            if not name or name == ":memory:" or "mode=memory" in str(name):
                continue
            path = Path(name)
            test["NAME"] = str(path.with_name(f"{path.stem}-{suffix}{path.suffix}"))
        else:
            test["NAME"] = f"{name or 'test_' + db_settings['NAME']}_{suffix}"


# -- waiting ----------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, message: str = "condition"
) -> T:
    """Call ``predicate`` until it returns something truthy; return that.

    Fails the test (with ``message``) when ``timeout`` seconds pass first. The last
    exception the predicate raised, if any, is shown to help diagnose the failure.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except Exception as exc:  # the predicate may fail until the thing it waits for exists
            last_error = exc
        else:
            if result:
                return result
        if time.monotonic() > deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {message}{detail}")
        time.sleep(interval)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., object]:
    return wait_until


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- ports ------------------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_free_port_range(count: int) -> int:
    """A base port P such that P .. P+count-1 are all free right now.

    Picked at random from a range above the usual services and below the kernel's
    ephemeral ports, so two test runs at once are unlikely to pick the same block.
    """
    rng = secrets.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20000, 30000 - count)
        if all(_port_is_free(base + offset) for offset in range(count)):
            return base
    pytest.fail(f"no block of {count} free ports found")


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return find_free_port()


@pytest.fixture
def free_port_range() -> Callable[[int], int]:
    """``free_port_range(n)`` returns a base port P with P .. P+n-1 free."""
    return find_free_port_range


# -- Redis ------------------------------------------------------------------------------------


def redis_url_with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db`` of the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Redis (``AITBC_TEST_REDIS_URL``, default DB 14); fails if it is down."""
    import redis

    url = os.environ.get("AITBC_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {url} ({exc}); start it (see DEVELOPERS.md) or set AITBC_TEST_REDIS_URL",
            pytrace=False,
        )
    finally:
        client.close()
    return url


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("queue")`` gives a name no other test (or test run) uses."""
    return lambda prefix: f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


# -- subprocesses -----------------------------------------------------------------------------


def clean_env(**extra: str | os.PathLike) -> dict[str, str]:
    """A minimal environment for a child process plus ``extra``.

    Only the basics are inherited: a child never sees this run's DATABASE_URL,
    REDIS_URL or secrets unless the test passes them.
    """
    env = {name: os.environ[name] for name in _INHERITED_ENV if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({name: os.fspath(value) for name, value in extra.items()})
    return env


@pytest.fixture(name="clean_env")
def clean_env_fixture() -> Callable[..., dict[str, str]]:
    return clean_env


@dataclass
class Spawned:
    """A child process started by ``spawn``, its output going to ``log_path``."""

    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def running(self) -> bool:
        return self.process.poll() is None

    def assert_running(self) -> None:
        if not self.running():
            pytest.fail(f"pid {self.pid} exited with code {self.process.returncode}; output:\n{self.log()[-4000:]}")


def _stop_spawned(spawned: Spawned, timeout: float) -> None:
    process = spawned.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Each child leads its own process group: kill the group so grandchildren
    # (the devnet's parts) cannot outlive a failed test.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


@contextmanager
def devnet_running(
    data_dir: Path, *args: str, env: dict[str, str], startup_timeout: float = 240.0
) -> Iterator[tuple[subprocess.Popen, dict]]:
    """``manage.py devnet <args>`` writing to ``data_dir``: its process and ``network.json`` once written.

    Output goes to ``<data_dir>/devnet.log``. On exit the devnet gets SIGTERM (it
    stops its parts), then its whole process group is killed so no part outlives the test.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "devnet.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            manage_argv("devnet", *args),
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        network_file = data_dir / "devnet" / "network.json"

        def written() -> bool:
            if process.poll() is not None:
                output = log_path.read_text(errors="replace")[-4000:]
                pytest.fail(f"devnet exited with {process.returncode}:\n{output}")
            return network_file.exists()

        wait_until(written, timeout=startup_timeout, interval=0.3, message="the devnet's network.json")
        yield process, json.loads(network_file.read_text(encoding="utf-8"))
    finally:
        _stop_spawned(Spawned(process, log_path), timeout=60.0)


@pytest.fixture
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Spawned]]:
    """``spawn(argv, env=..., cwd=...)`` starts a child that is always stopped at teardown.

    The child runs from the project root in its own process group with stdout and
    stderr in a log file (``Spawned.log()``). Teardown sends SIGTERM, waits, then
    SIGKILLs the whole group.
    """
    started: list[Spawned] = []
    log_dir = tmp_path_factory.mktemp("spawn-logs")

    def _spawn(
        argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, name: str | None = None
    ) -> Spawned:
        log_path = log_dir / f"{len(started)}-{name or Path(argv[1] if len(argv) > 1 else argv[0]).name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=cwd or PROJECT_ROOT,
                env=env if env is not None else clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        spawned = Spawned(process, log_path)
        started.append(spawned)
        return spawned

    yield _spawn
    for spawned in reversed(started):
        _stop_spawned(spawned, timeout=15.0)


def manage_argv(*args: str) -> list[str]:
    """``python manage.py <args>`` with this run's interpreter."""
    return [sys.executable, str(PROJECT_ROOT / "manage.py"), *args]


@pytest.fixture(name="manage_argv")
def manage_argv_fixture() -> Callable[..., list[str]]:
    return manage_argv


@pytest.fixture(autouse=True)
def _fresh_process_caches() -> None:
    """Forget what the process keeps in memory beside the database.

    The mempool and the kept validator rows outlive a test's database, which is rolled back
    without the writes that would clear them: the next test's chain would find the previous
    test's transactions pending and its validators in the set.
    """
    from chain.mempool import mempool
    from chain.validators import forget_validator_sets

    mempool.clear()
    forget_validator_sets()
