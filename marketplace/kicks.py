"""Enqueueing the coordinator's Celery tasks once the current transaction commits.

Every write path that creates work for a task (a funded job to dispatch, a transaction
to send) calls one of these, so no job waits for a beat tick; beat only catches what a
lost message missed. ``enqueue`` is the single point tests replace to run tasks inline.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from django.db import transaction

logger = logging.getLogger("aitbc.marketplace")


def enqueue(task_name: str, *args: Any, countdown: float | None = None) -> None:
    """Send ``task_name`` to the workers now, or ``countdown`` seconds from now (not transactional)."""
    from aitbc_site.celery import app

    try:
        app.send_task(task_name, args=args, countdown=countdown)
    except Exception:  # a lost kick is caught up by beat; it must never break the write path
        logger.exception("could not enqueue %s", task_name)


def on_commit(task_name: str, *args: Any) -> None:
    # Looked up at call time so a test's replacement of ``enqueue`` is honoured.
    transaction.on_commit(lambda: enqueue(task_name, *args))


def outbox() -> None:
    on_commit("marketplace.outbox_process")


def dispatch_job(job_id: str) -> None:
    on_commit("marketplace.dispatch_job", job_id)


def dispatch_pending() -> None:
    on_commit("marketplace.dispatch_pending")


# A deposit's payout batch is checked this long after a job's charge commits: one check per
# deposit per interval covers every job completing meanwhile, and none runs beside the answer.
PAYOUT_CHECK_S = 0.5


def deposit_payout(deposit_id: str) -> None:
    def kick() -> None:
        if cache.add(f"marketplace:payout-check:{deposit_id}", 1, timeout=PAYOUT_CHECK_S):
            enqueue("marketplace.deposit_payout", deposit_id, countdown=PAYOUT_CHECK_S)

    transaction.on_commit(kick)
