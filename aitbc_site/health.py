"""``GET /health``: is this process able to serve?

Checks the database, the channel layer and the Celery broker, each with a
short timeout, and answers 200 when all are up or 503 naming what is down.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from aitbc_site import embedded
from aitbc_site.env import redact_url

CHECK_TIMEOUT = 2.0


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


async def _check_channel_layer() -> str:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel("health.")
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "health.check", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("channel layer returned another message")
    return "ok"


def _check_broker() -> str:
    if settings.EMBEDDED:
        worker = embedded.current()
        if worker is not None and not worker.is_alive():
            raise RuntimeError("embedded worker thread has stopped")
        return "ok (in-process)"
    from aitbc_site.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT)
        conn.default_channel.client.ping()
    return "ok"


def _check_chain() -> str | None:
    """On a node: the chain's height and whether its block producer is working. None elsewhere."""
    from chain import node
    from chain.models import ChainState

    state = ChainState.objects.filter(singleton=1).values_list("chain_id", "height").first()
    if state is None:
        return None
    producer = node.producer()
    if producer is not None:
        if not producer.is_alive():
            raise RuntimeError("block producer has stopped")
        if producer.last_error:
            raise RuntimeError(f"block production failing: {producer.last_error}")
    return f"{state[0]} at height {state[1]}"


async def _run(name: str, check) -> tuple[str, bool, str]:
    try:
        if asyncio.iscoroutinefunction(check):
            result = await asyncio.wait_for(check(), CHECK_TIMEOUT)
        else:
            # The database check stays on Django's sync thread, where the request's
            # connection lives; the broker check may block, so it gets its own.
            sensitive = check in (_check_database, _check_chain)
            result = await asyncio.wait_for(sync_to_async(check, thread_sensitive=sensitive)(), CHECK_TIMEOUT + 1)
        return name, True, result
    except TimeoutError:
        return name, False, f"timed out after {CHECK_TIMEOUT:g}s"
    except Exception as exc:
        return name, False, f"{type(exc).__name__}: {exc}"


async def health(request):
    started = time.monotonic()
    results = await asyncio.gather(
        _run("database", _check_database),
        _run("channel_layer", _check_channel_layer),
        _run("broker", _check_broker),
        _run("chain", _check_chain),
    )
    results = [r for r in results if r[2] is not None]
    checks = {name: detail for name, _ok, detail in results}
    down = [name for name, ok, _detail in results if not ok]
    body = {
        "status": "ok" if not down else "unavailable",
        "mode": "embedded" if settings.EMBEDDED else "redis",
        "checks": checks,
        "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
    }
    if not settings.EMBEDDED:
        body["redis"] = redact_url(settings.REDIS_URL)
    if down:
        body["down"] = down
        body["error"] = {"code": "unavailable", "message": "down: " + ", ".join(down)}
    return JsonResponse(body, status=200 if not down else 503)
