"""Celery tasks of the coordinator: thin wrappers that take ids and call a service.

Write paths enqueue them on commit (``kicks``) so nothing waits for a tick; beat runs
them as the safety net (``BEAT_SCHEDULE``, synced into django-celery-beat at start-up).
Every one is idempotent and safe to run twice at once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from celery import shared_task
from django.core.cache import cache

from chain.client import ChainUnavailable
from chain.protocol.errors import ProtocolError
from marketplace import kicks
from marketplace.services import deposits, dispatch, outbox, sweep

logger = logging.getLogger("aitbc.marketplace.tasks")

BEAT_SCHEDULE: dict[str, tuple[str, int]] = {
    "marketplace outbox": ("marketplace.outbox_process", 1),
    "marketplace dispatch": ("marketplace.dispatch_pending", 5),
    "marketplace sweep": ("marketplace.sweep", 5),
}

# While transactions are in flight the outbox checks on them again this soon, so a
# provider's pay follows its block closely instead of waiting for the next beat tick.
OUTBOX_FOLLOW_UP_S = 0.5


@shared_task(name="marketplace.outbox_process")
def outbox_process() -> dict:
    try:
        report = outbox.outbox_process()
    except (ChainUnavailable, ProtocolError) as exc:
        logger.warning("outbox: the node is unavailable (%s); retrying on the next tick", exc)
        return {"error": str(exc)}
    if report.in_flight and cache.add("marketplace:outbox-follow-up", 1, timeout=OUTBOX_FOLLOW_UP_S):
        kicks.enqueue("marketplace.outbox_process", countdown=OUTBOX_FOLLOW_UP_S)
    return asdict(report)


@shared_task(name="marketplace.dispatch_job")
def dispatch_job(job_id: str) -> str | None:
    return dispatch.job_assign(job_id=job_id)


@shared_task(name="marketplace.deposit_payout")
def deposit_payout(deposit_id: str) -> None:
    deposits.deposit_payout_due(deposit_id=deposit_id)


@shared_task(name="marketplace.dispatch_pending")
def dispatch_pending() -> int:
    return dispatch.dispatch_pending()


@shared_task(name="marketplace.sweep")
def run_sweep() -> dict:
    return asdict(sweep.sweep())
