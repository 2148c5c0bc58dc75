"""Settings come from the environment, and a bad value stops start-up naming its variable.

Settings are read once at import, so each case runs a fresh interpreter with a clean
environment (no DATABASE_URL or REDIS_URL from this run) and its own data directory.
"""

from __future__ import annotations

import re
import secrets
import stat
import string
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, clean_env, manage_argv

pytestmark = pytest.mark.process

SETUP_DJANGO = "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'aitbc_site.settings'; django.setup()"
PRINT_SECRET_KEY = SETUP_DJANGO + "; from django.conf import settings; print(settings.SECRET_KEY)"


def random_secret(length: int = 64) -> str:
    alphabet = string.ascii_letters + string.digits + "!@#%^&*(-_=+)"
    return "".join(secrets.choice(alphabet) for _ in range(length))


GOOD_KEY = random_secret()
PRODUCTION_ENV = {"AITBC_ENV": "production", "SECRET_KEY": GOOD_KEY, "ALLOWED_HOSTS": "example.com"}


def run_python(code: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=clean_env(AITBC_DATA_DIR=data_dir, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


BAD_ENVIRONMENTS: dict[str, tuple[dict[str, str], str]] = {
    "port-not-a-number": ({"PORT": "abc"}, "PORT"),
    "port-zero": ({"PORT": "0"}, "PORT"),
    "database-mysql": ({"DATABASE_URL": "mysql://user@127.0.0.1/aitbc"}, "DATABASE_URL"),
    "database-nonsense": ({"DATABASE_URL": "nonsense"}, "DATABASE_URL"),
    "redis-http": ({"REDIS_URL": "http://x"}, "REDIS_URL"),
    "redis-ca-without-tls": (
        {"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_CA_FILE": "ca.crt"},
        "REDIS_CA_FILE",
    ),
    "redis-ca-missing": (
        {"REDIS_URL": "rediss://127.0.0.1:6379/0", "REDIS_CA_FILE": "/nonexistent/aitbc/ca.crt"},
        "REDIS_CA_FILE",
    ),
    "log-level-unknown": ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    "prod-no-key": ({"AITBC_ENV": "production", "ALLOWED_HOSTS": "example.com"}, "SECRET_KEY"),
    "prod-short-key": (
        {"AITBC_ENV": "production", "SECRET_KEY": "short", "ALLOWED_HOSTS": "example.com"},
        "SECRET_KEY",
    ),
    "prod-no-hosts": ({"AITBC_ENV": "production", "SECRET_KEY": GOOD_KEY}, "ALLOWED_HOSTS"),
    "prod-debug-on": (
        {"AITBC_ENV": "production", "SECRET_KEY": GOOD_KEY, "ALLOWED_HOSTS": "example.com", "DEBUG": "1"},
        "DEBUG",
    ),
    "prod-low-variety-key": (
        {"AITBC_ENV": "production", "SECRET_KEY": "abcd" * 20, "ALLOWED_HOSTS": "example.com"},
        "SECRET_KEY",
    ),
    "prod-placeholder-key": (
        {"AITBC_ENV": "production", "SECRET_KEY": GOOD_KEY[:40] + "-CHANGE-ME", "ALLOWED_HOSTS": "example.com"},
        "SECRET_KEY",
    ),
    "prod-placeholder-redis-password": (
        {**PRODUCTION_ENV, "REDIS_URL": "redis://:CHANGE-ME@redis.internal:6379/0"},
        "REDIS_URL",
    ),
    "prod-placeholder-database-password": (
        {**PRODUCTION_ENV, "DATABASE_URL": "postgres://aitbc:CHANGE-ME@db.internal:5432/aitbc"},
        "DATABASE_URL",
    ),
    "prod-placeholder-metrics-token": ({**PRODUCTION_ENV, "METRICS_TOKEN": "CHANGE-ME"}, "METRICS_TOKEN"),
    "debug-not-a-boolean": ({"DEBUG": "maybe"}, "DEBUG"),
    "secret-file-missing": ({"SECRET_KEY_FILE": "/nonexistent/aitbc/secret"}, "SECRET_KEY_FILE"),
    "unknown-environment": ({"AITBC_ENV": "staging"}, "AITBC_ENV"),
}


@pytest.fixture(scope="module")
def startup_failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """Start Django once per bad environment, all at once: case -> (exit code, stderr)."""
    children = {}
    for case, (env, _variable) in BAD_ENVIRONMENTS.items():
        children[case] = subprocess.Popen(
            [sys.executable, "-c", SETUP_DJANGO],
            cwd=PROJECT_ROOT,
            env=clean_env(AITBC_DATA_DIR=tmp_path_factory.mktemp(case), **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    results = {}
    try:
        for case, child in children.items():
            _stdout, stderr = child.communicate(timeout=120)
            results[case] = (child.returncode, stderr)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    return results


@pytest.mark.parametrize("case", BAD_ENVIRONMENTS)
def test_bad_variable_stops_startup_with_an_error_naming_it(
    startup_failures: dict[str, tuple[int, str]], case: str
) -> None:
    env, variable = BAD_ENVIRONMENTS[case]
    returncode, stderr = startup_failures[case]

    assert returncode != 0, f"start-up succeeded with {env}"
    # The traceback quotes settings.py, which names every variable; the error itself is
    # the last line, and that is where the variable must be named.
    error = last_line(stderr)
    assert error.startswith("django.core.exceptions.ImproperlyConfigured:"), stderr
    assert variable in error, stderr


def test_production_key_too_short_is_refused_even_from_a_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("django-insecure-" + "x" * 60)

    result = run_python(
        SETUP_DJANGO, tmp_path / "data", AITBC_ENV="production", SECRET_KEY_FILE=str(key_file), ALLOWED_HOSTS="a.b"
    )

    assert result.returncode != 0
    assert "SECRET_KEY" in last_line(result.stderr)


def test_secret_key_is_read_from_the_file_a_file_variable_names(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(GOOD_KEY + "\n")

    result = run_python(PRINT_SECRET_KEY, tmp_path / "data", SECRET_KEY_FILE=str(key_file))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == GOOD_KEY


def test_generated_secret_key_is_private_and_reused(tmp_path: Path) -> None:
    first = run_python(PRINT_SECRET_KEY, tmp_path)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "secret_key"

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = first.stdout.strip()
    assert len(key) >= 50
    assert key == key_file.read_text().strip()

    second = run_python(PRINT_SECRET_KEY, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == key


def test_each_data_directory_gets_its_own_secret_key(tmp_path: Path) -> None:
    one = run_python(PRINT_SECRET_KEY, tmp_path / "one")
    two = run_python(PRINT_SECRET_KEY, tmp_path / "two")

    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert one.stdout.strip() != two.stdout.strip()


def test_production_settings_pass_the_deployment_checklist(tmp_path: Path) -> None:
    result = subprocess.run(
        manage_argv("check", "--deploy"),
        cwd=PROJECT_ROOT,
        env=clean_env(
            AITBC_DATA_DIR=tmp_path, AITBC_ENV="production", SECRET_KEY=GOOD_KEY, ALLOWED_HOSTS="example.com"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr

    assert result.returncode == 0, output
    # Warnings from other checks (the API schema's, say) are not this test's business;
    # the deployment checklist's own (security.*) must all be met.
    assert not re.search(r"\(security\.[WE]\d+\)", output), output
    # Production never writes a generated key: SECRET_KEY is required there.
    assert not (tmp_path / "secret_key").exists()
