"""Assigning funded jobs to providers, the providers' answers, and failover.

A job is assigned to the best eligible offer (``matching``) by taking one of the offer's
slots with a conditional UPDATE (``active < concurrency``), so no provider ever holds more
jobs than it offered, whatever runs concurrently. The JOB is pushed after commit to the
provider's channel-layer group (its websockets, and its long polls, which wake on it).

A provider that disconnects, errors, rejects, or misses its deadline loses the job: the
attempt is recorded against it, the slot is freed, and the job goes back to ``funded``
for the next eligible provider, never one that tried it before. After
``conf.MAX_ATTEMPTS`` failures the job fails and is refunded. Only one attempt is ever
paid: the one whose receipt is accepted (``settlement``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from aitbc_site.errors import ApiError
from aitbc_site.events import send_event_on_commit
from marketplace import conf, kicks
from marketplace.models import Deposit, Job, JobAttempt, Offer, Provider
from marketplace.services import history, matching
from marketplace.services.providers import provider_group

logger = logging.getLogger("aitbc.marketplace.dispatch")


class NotAssigned(ApiError):
    status = 409
    code = "not_assigned"


def lock_job(job_id: str) -> Job | None:
    """Lock a job (and first its deposit, per the models' lock order); None if there is none."""
    # The deposit is found through the job and locked in one query; a job's deposit never changes.
    list(Deposit.objects.select_for_update(of=("self",)).filter(jobs__pk=job_id).values_list("pk", flat=True))
    return Job.objects.select_for_update().filter(pk=job_id).first()


def job_input_document(job: Job) -> dict[str, Any]:
    """What the receipt's ``input_sha256`` covers (docs/marketplace.md)."""
    return {"model": job.model, "input": job.input, "options": job.options}


def job_wire(job: Job) -> dict[str, Any]:
    """The JOB of docs/marketplace.md."""
    return {
        "id": job.id,
        "model": job.model,
        "input": job.input,
        "options": job.options,
        "deadline_ms": int(job.deadline_at.timestamp() * 1000),
    }


def _push(address: str, message: dict[str, Any]) -> None:
    send_event_on_commit(provider_group(address), message)


def take_slot(candidates: list[matching.Candidate], *, now: datetime, recheck_online: bool = False):
    """Take a slot of the first candidate that still has one; that candidate, or None.

    Each try is a conditional UPDATE (``active < concurrency``), so concurrent dispatchers
    never overfill an offer. ``recheck_online``: the candidates were read before the
    caller's transaction, so the provider's presence is checked again by the UPDATE.
    """
    for candidate in candidates:
        offers = Offer.objects.filter(pk=candidate.offer.pk, withdrawn=False, active__lt=F("concurrency"))
        if recheck_online:
            offers = offers.filter(provider__online=True, provider__last_seen_at__gte=matching.online_since(now))
        if offers.update(active=F("active") + 1):
            return candidate
        # Otherwise another dispatcher took its last slot first.
    return None


def assignment(job: Job, offer: Offer, *, now: datetime) -> dict[str, Any]:
    """The job's fields once assigned to ``offer`` (whose provider is loaded)."""
    pushed = offer.provider.ws_connections > 0
    return {
        "provider": offer.provider,
        "offer": offer,
        "input_price": offer.input_price,
        "output_price": offer.output_price,
        "context_length": offer.context_length,
        "attempts": job.attempts + 1,
        "assigned_at": now,
        "started_at": None,
        "accept_by": now + timedelta(seconds=conf.ACCEPT_TIMEOUT_S),
        "deadline_at": min(now + timedelta(seconds=conf.RUN_TIMEOUT_S), job.expires_at),
        # A websocket gets the push; a long poll hands the job over when it claims it.
        "delivered_at": now if pushed else None,
    }


def assignment_reason(offer: Offer, attempt: int) -> str:
    return f"assigned to {offer.provider.name} (attempt {attempt})"


def push_job(job: Job) -> None:
    """Send the JOB to its provider once the assignment commits."""
    _push(job.provider_id, {"type": "job", "job": job_wire(job)})


def job_assign(*, job_id: str) -> str | None:
    """Give a funded job to the best eligible provider; its address, or None if none can take it now."""
    # Most calls are kicks for jobs assigned already (the gateway assigns its own): a read
    # says so without waiting for the write lock.
    if not Job.objects.filter(pk=job_id, state=Job.FUNDED).exists():
        return None
    with transaction.atomic():
        job = lock_job(job_id)
        now = timezone.now()
        if job is None or job.state != Job.FUNDED or job.expires_at <= now:
            return None
        tried = list(JobAttempt.objects.filter(job=job).values_list("provider_id", flat=True)) if job.attempts else []
        candidates = matching.eligible_offers(
            model=job.model,
            max_price=job.max_price,
            input_tokens=job.input_tokens_estimate,
            max_tokens=job.options["max_tokens"],
            exclude=tried,
            now=now,
        )
        taken = take_slot(candidates, now=now)
        if taken is None:
            return None
        offer = taken.offer
        fields = assignment(job, offer, now=now)
        JobAttempt.objects.create(job=job, provider=offer.provider, number=fields["attempts"], assigned_at=now)
        history.transition(
            job,
            to=Job.ASSIGNED,
            from_states=(Job.FUNDED,),
            reason=assignment_reason(offer, fields["attempts"]),
            **fields,
        )
        push_job(job)
        return offer.provider_id


def dispatch_pending(*, limit: int = 500) -> int:
    """Assign waiting jobs, oldest first, while providers have room; how many were assigned."""
    assigned = 0
    full: set[str] = set()
    waiting = Job.objects.filter(state=Job.FUNDED).order_by("created_at", "id").values_list("id", "model")
    for job_id, model in waiting[:limit]:
        if model in full:
            continue
        if job_assign(job_id=job_id):
            assigned += 1
        elif not Offer.objects.filter(
            model=model,
            withdrawn=False,
            active__lt=F("concurrency"),
            provider__online=True,
            provider__last_seen_at__gte=matching.online_since(),
        ).exists():
            full.add(model)  # no slot left for this model: the other jobs for it wait too
    return assigned


def poll_claim(*, provider: str) -> dict[str, Any] | None:
    """Hand a long-polling provider the oldest job assigned to it and not yet delivered."""
    while True:
        job = (
            Job.objects.filter(provider_id=provider, state=Job.ASSIGNED, delivered_at__isnull=True)
            .order_by("assigned_at")
            .first()
        )
        if job is None:
            return None
        if Job.objects.filter(pk=job.pk, provider_id=provider, state=Job.ASSIGNED, delivered_at__isnull=True).update(
            delivered_at=timezone.now()
        ):
            return job_wire(job)


def _held_by(job: Job | None, provider: str, states: tuple[str, ...]) -> Job:
    if job is None:
        raise ApiError("no such job", code="not_found", status=404)
    if job.provider_id != provider or job.state not in states:
        raise NotAssigned(f"job {job.id} is not assigned to you (any more)")
    return job


def provider_accepted(*, provider: str, job_id: str, at: datetime | None = None) -> str:
    """The provider started the job (``at``: when its message arrived); the job's state.

    The inference starts as the provider sends this, and the coordinator's work here
    competes with it for the CPU: one conditional UPDATE moves the job (it holds no other
    lock while it does, so it needs none of the deposit's), and its attempt and history follow.
    """
    at = at or timezone.now()
    with transaction.atomic():
        moved = Job.objects.filter(pk=job_id, provider_id=provider, state=Job.ASSIGNED).update(
            state=Job.RUNNING, reason="accepted", started_at=at, updated_at=timezone.now()
        )
        job = Job.objects.filter(pk=job_id).only("id", "owner_id", "model", "state", "provider_id").first()
        if not moved:
            if job is not None and job.provider_id == provider and job.state == Job.RUNNING:
                return job.state  # said twice
            _held_by(job, provider, (Job.ASSIGNED,))
        JobAttempt.objects.filter(job_id=job_id, provider_id=provider).update(state=JobAttempt.RUNNING)
        history.record(job, Job.RUNNING, "accepted", provider=provider, at=at)
        return Job.RUNNING


def provider_rejected(*, provider: str, job_id: str, reason: str) -> None:
    with transaction.atomic():
        _held_by(lock_job(job_id), provider, Job.IN_FLIGHT)
        attempt_failed(job_id=job_id, provider=provider, reason=f"rejected: {reason}", counter="jobs_rejected")


def provider_failed(*, provider: str, job_id: str, reason: str) -> None:
    with transaction.atomic():
        job = lock_job(job_id)
        if job is not None and job.state == Job.CANCELLED and job.provider_id == provider:
            cancelled_run_ended(job=job, reason=f"provider stopped: {reason}")
            return
        _held_by(job, provider, Job.IN_FLIGHT)
        attempt_failed(job_id=job_id, provider=provider, reason=f"failed: {reason}", counter="jobs_failed")


def release_slot(job: Job) -> None:
    """Give the job's offer slot back (the caller holds the job's lock and moves it out of flight)."""
    if job.offer_id is not None:
        Offer.objects.filter(pk=job.offer_id, active__gt=0).update(active=F("active") - 1)
    # Only when a job waits for a slot: a task per completed job would compete with the answer
    # it completes, for nothing. A job that starts waiting later (funded, or handed back) kicks
    # its own dispatch, and beat's dispatch pass catches any kick that was lost.
    if Job.objects.filter(state=Job.FUNDED).exists():
        kicks.dispatch_pending()


def attempt_failed(*, job_id: str, provider: str, reason: str, counter: str) -> bool:
    """The provider loses the job: record it against the provider and give the job to the next one.

    Nothing happens (False) if the provider does not hold the job any more. ``counter``
    is the reputation counter to raise (``jobs_failed`` or ``jobs_rejected``).
    """
    from marketplace.services.settlement import refund_job

    with transaction.atomic():
        job = lock_job(job_id)
        if job is None or job.provider_id != provider or job.state not in Job.IN_FLIGHT:
            return False
        now = timezone.now()
        release_slot(job)
        JobAttempt.objects.filter(job=job, provider_id=provider).update(
            state=JobAttempt.FAILED, reason=reason[:300], ended_at=now
        )
        Provider.objects.filter(pk=provider).update(**{counter: F(counter) + 1})
        # It may still be working (a missed deadline): tell it to stop; a late result is refused anyway.
        _push(provider, {"type": "cancel", "job_id": job.id})
        history.record(job, "failed", reason, provider=provider)
        cleared = {
            "provider": None,
            "offer": None,
            "delivered_at": None,
            "accept_by": None,
            "deadline_at": None,
            "started_at": None,
        }
        if job.attempts >= conf.MAX_ATTEMPTS:
            history.transition(
                job,
                to=Job.FAILED,
                from_states=Job.IN_FLIGHT,
                reason=f"{job.attempts} providers failed it; last: {reason}",
                **cleared,
            )
            refund_job(job)
        else:
            history.transition(job, to=Job.FUNDED, from_states=Job.IN_FLIGHT, reason="reassigned", **cleared)
            kicks.dispatch_job(job.id)
        return True


def cancelled_run_ended(*, job: Job, reason: str) -> None:
    """A cancelled job's provider stopped without a paid result: free its slot, refund the client.

    The caller holds the job's lock.
    """
    from marketplace.services.settlement import refund_job

    if job.state != Job.CANCELLED or job.cancel_grace_until is None:
        return
    release_slot(job)
    JobAttempt.objects.filter(job=job, provider_id=job.provider_id).update(
        state=JobAttempt.CANCELLED, ended_at=timezone.now()
    )
    Job.objects.filter(pk=job.pk).update(cancel_grace_until=None)
    job.cancel_grace_until = None
    history.record(job, "cancelled", reason, provider=job.provider_id or "")
    refund_job(job)


def push_cancel(job: Job) -> None:
    if job.provider_id:
        _push(job.provider_id, {"type": "cancel", "job_id": job.id})
