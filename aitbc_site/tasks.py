from __future__ import annotations

import os
import time

from celery import shared_task

from aitbc_site.events import send_event, user_group


@shared_task(name="aitbc_site.ping")
def ping(user_id: int, token: str, queued_at: float) -> dict:
    """Round trip through the broker, a worker and the channel layer."""
    event = {"type": "ping", "token": token, "latency_ms": round((time.time() - queued_at) * 1000, 1)}
    send_event(user_group(user_id), event)
    return event


@shared_task(name="aitbc_site.echo", bind=True)
def echo(self, value: object) -> dict:
    """Return ``value`` with where it ran: checks that a worker takes tasks from a queue."""
    return {"value": value, "hostname": self.request.hostname, "pid": os.getpid()}


@shared_task(name="aitbc_site.clear_expired_sessions")
def clear_expired_sessions() -> None:
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    Session.objects.filter(expire_date__lt=timezone.now()).delete()
