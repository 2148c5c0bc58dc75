"""Typed readers for environment variables.

Every reader raises ``ImproperlyConfigured`` naming the variable when its value
cannot be used, so a bad deployment stops at start-up with a message that says
what to fix. Any variable may also be given as ``<NAME>_FILE``: the path of a
file holding the value (for secrets kept out of the environment).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

# A request rate in DRF's syntax: count / unit, where the unit's first letter counts (600/min).
RATE_PATTERN = re.compile(r"^\s*([1-9][0-9]*)\s*/\s*([smhd])[a-z]*\s*$")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_raw(name: str) -> str | None:
    """The value of ``name``, or the content of the file ``<name>_FILE`` names."""
    value = os.environ.get(name)
    if value is not None:
        return value
    path = os.environ.get(f"{name}_FILE")
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE: cannot read {path!r}: {exc.strerror}") from exc


def env_str(name: str, default: str | None = None) -> str | None:
    value = env_raw(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool) -> bool:
    value = env_raw(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no, on/off), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = env_raw(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = env_raw(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    value = (env_str(name, default) or default).strip()
    if upper:
        value = value.upper()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_rate(name: str, default: str) -> str:
    """A request rate such as ``600/min`` (``N/s``, ``N/min``, ``N/hour``, ``N/day``)."""
    value = env_str(name, default) or default
    if not RATE_PATTERN.match(value.lower()):
        raise ImproperlyConfigured(f"{name} must be a rate like 600/min (per s, min, hour or day), got {value!r}")
    return value.strip()


def env_url(name: str, schemes: tuple[str, ...]) -> str | None:
    """A URL whose scheme is one of ``schemes``, or None when unset."""
    value = env_str(name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} has an unsupported scheme {parts.scheme or '(none)'!r}; expected one of {', '.join(schemes)}"
        )
    if not parts.hostname and parts.scheme not in ("sqlite", "unix"):
        raise ImproperlyConfigured(f"{name} has no host: {redact_url(value)!r}")
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ImproperlyConfigured(f"{name} has an invalid port: {redact_url(value)!r}") from None
    return value


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
