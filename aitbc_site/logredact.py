"""Redaction of secrets that travel in URLs and headers (gateway keys under ``/k/<key>``).

``redact_path`` cleans a request path for the access log. ``KeyRedactingFilter`` cleans
any log record: Django's own request log ("Unauthorized: /k/<key>/api/chat") and
anything else that quotes a path or a key. ``install`` puts the filter on the handlers
that write the logs, so it sees records from every logger.
"""

from __future__ import annotations

import logging
import re

_KEY_IN_PATH = re.compile(r"^/k/[^/]+")
# Anywhere in a text: a key in a gateway path, or a gateway key itself (``aitbc_`` + 40 URL-safe characters).
_KEY_ANYWHERE = re.compile(r"/k/[^/\s\"'?]+|\baitbc_[A-Za-z0-9_-]{20,}")


def redact_path(path: str) -> str:
    return _KEY_IN_PATH.sub("/k/***", path)


def redact_text(text: str) -> str:
    return _KEY_ANYWHERE.sub(lambda m: "/k/***" if m.group(0).startswith("/k/") else "aitbc_***", text)


class KeyRedactingFilter(logging.Filter):
    """Rewrites a record whose message holds a gateway key; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return True
        if "/k/" in message or "aitbc_" in message:
            redacted = redact_text(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_installed = KeyRedactingFilter()


def install() -> None:
    """Filter the root logger's handlers and Django's request loggers (idempotent)."""
    targets: list[logging.Filterer] = [
        *logging.getLogger().handlers,
        logging.getLogger("django.request"),
        logging.getLogger("django.server"),
    ]
    for target in targets:
        if _installed not in target.filters:
            target.addFilter(_installed)
