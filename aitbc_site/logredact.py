"""Redaction of secrets that travel in URLs (gateway keys under ``/k/<key>``)."""

from __future__ import annotations

import re

_KEY_IN_PATH = re.compile(r"^/k/[^/]+")


def redact_path(path: str) -> str:
    return _KEY_IN_PATH.sub("/k/***", path)
