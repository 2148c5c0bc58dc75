"""The periodic safety net (beat): everything here also happens on its own when events
arrive; the sweep catches what a lost message, a crash or downtime missed.

Each step selects candidates, then changes each one in its own transaction through the
same conditional services as the event path, so running the sweep twice, late, or in
two workers at once does the right thing once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from chain.client import ChainUnavailable
from chain.protocol.errors import ProtocolError
from marketplace import chain
from marketplace.models import Job, OutboxTx
from marketplace.services import deposits, history, providers
from marketplace.services.dispatch import attempt_failed, cancelled_run_ended, lock_job, push_cancel, release_slot
from marketplace.services.settlement import refund_job

logger = logging.getLogger("aitbc.marketplace.sweep")


@dataclass
class SweepReport:
    offline: int = 0
    missed_deadlines: int = 0
    expired: int = 0
    grace_ended: int = 0
    refunds: int = 0


def sweep() -> SweepReport:
    report = SweepReport()
    report.offline = providers.providers_mark_silent_offline()
    report.missed_deadlines = fail_missed_deadlines()
    report.expired = expire_jobs()
    report.grace_ended = end_cancel_grace()
    report.refunds = queue_missing_refunds()
    try:
        view = chain.chain_view()
    except (ChainUnavailable, ProtocolError) as exc:
        logger.warning("sweep: the node is unavailable (%s); deposit timeouts wait", exc)
        view = None
    deposits.deposits_sweep(view=view)
    providers.purge_auth_nonces()
    return report


def fail_missed_deadlines() -> int:
    now = timezone.now()
    late = list(Job.objects.filter(state=Job.ASSIGNED, accept_by__lt=now).values_list("id", "provider_id")) + list(
        Job.objects.filter(state=Job.RUNNING, deadline_at__lt=now).values_list("id", "provider_id")
    )
    count = 0
    for job_id, provider in late:
        job = Job.objects.filter(pk=job_id).values_list("state", flat=True).first()
        reason = "did not accept in time" if job == Job.ASSIGNED else "missed its deadline"
        if attempt_failed(job_id=job_id, provider=provider, reason=reason, counter="jobs_failed"):
            count += 1
    return count


def expire_jobs() -> int:
    now = timezone.now()
    count = 0
    waiting = (Job.SUBMITTED, Job.FUNDED, Job.ASSIGNED, Job.RUNNING)
    for job_id in Job.objects.filter(state__in=waiting, expires_at__lt=now).values_list("id", flat=True):
        with transaction.atomic():
            job = lock_job(job_id)
            if job is None or job.state not in waiting or job.expires_at >= now:
                continue
            state = job.state
            if state in Job.IN_FLIGHT:
                push_cancel(job)
                release_slot(job)
            if history.transition(job, to=Job.EXPIRED, from_states=(state,), reason="not completed in time"):
                refund_job(job)
                count += 1
    return count


def end_cancel_grace() -> int:
    now = timezone.now()
    count = 0
    for job_id in Job.objects.filter(state=Job.CANCELLED, cancel_grace_until__lt=now).values_list("id", flat=True):
        with transaction.atomic():
            job = lock_job(job_id)
            if job is not None and job.cancel_grace_until is not None and job.cancel_grace_until < now:
                cancelled_run_ended(job=job, reason="no result within the grace period")
                count += 1
    return count


def queue_missing_refunds() -> int:
    """Refunds that a crash between a decision and its row could have missed (normally none)."""
    refund_rows = OutboxTx.objects.filter(job=OuterRef("pk"), purpose=OutboxTx.JOB_REFUND)
    candidates = (
        Job.objects.filter(state__in=Job.TO_REFUND, escrow_funded=True, cancel_grace_until__isnull=True)
        .exclude(Exists(refund_rows))
        .values_list("id", flat=True)
    )
    count = 0
    for job_id in candidates:
        with transaction.atomic():
            job = lock_job(job_id)
            if job is not None and job.state in Job.TO_REFUND:
                refund_job(job)
                count += 1
    return count
