"""Sending events to websocket clients through the channel layer.

Writes call ``send_event_on_commit`` so nothing is broadcast for a transaction
that rolled back. The in-memory channel layer (embedded mode) is built on
asyncio queues that belong to the server's event loop and are not thread-safe,
so a send from another thread (a Celery worker thread, a sync view) is handed
to that loop with ``run_coroutine_threadsafe`` instead of touching the layer
from the calling thread. With Redis every process may send directly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

EVENTS_GROUP = "events"

_server_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def register_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Record the event loop that owns the in-memory channel layer."""
    global _server_loop
    with _lock:
        _server_loop = loop


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def send_event(group: str, event: dict[str, Any], *, timeout: float = 5.0) -> None:
    """Send ``event`` to every websocket consumer in ``group``."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "event.message", "event": event}
    loop = _server_loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is not None and running is not loop and loop.is_running():
        future = asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        future.result(timeout)
    elif running is not None:
        running.create_task(layer.group_send(group, message))
    else:
        async_to_sync(layer.group_send)(group, message)


def send_event_on_commit(group: str, event: dict[str, Any]) -> None:
    """Send ``event`` once the current database transaction commits."""

    def _send() -> None:
        try:
            send_event(group, event)
        except Exception:  # a lost live update must never break the write path
            logger.exception("could not send event %s to %s", event.get("type"), group)

    transaction.on_commit(_send)
