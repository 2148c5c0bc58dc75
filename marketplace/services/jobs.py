"""Submitting, cancelling and disputing jobs (the client's side).

A job is refused before anything is locked when no online provider could run it under
its max price. Paid by an escrow (the client's signed escrow_lock, or one the wallet
service signs for a logged-in user), it starts ``submitted`` and becomes ``funded`` when
the lock commits; paid from a deposit, it reserves its max price and starts ``funded``
at once. Either way dispatch is enqueued on commit.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from aitbc_site.errors import ApiError
from chain.client import ChainClient
from chain.protocol.tx import tx_id
from marketplace import chain, conf, kicks
from marketplace.models import Job, JobAttempt, Offer, OutboxTx, Provider, new_job_id
from marketplace.services import deposits, dispatch, history, matching, outbox, payments
from marketplace.services.dispatch import lock_job, push_cancel, release_slot
from marketplace.services.settlement import refund_job


@dataclass(frozen=True)
class JobRequest:
    model: str
    job_input: dict[str, Any]
    max_tokens: int
    max_price: int
    temperature_milli: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = True  # False: the provider sends no chunks, only the result (docs/marketplace.md)

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "max_tokens": self.max_tokens,
            "temperature_milli": self.temperature_milli,
            "stop": list(self.stop),
        }
        if self.seed is not None:
            options["seed"] = self.seed
        if not self.stream:
            options["stream"] = False
        return options


@dataclass(frozen=True)
class Payment:
    """Exactly one way to pay: a signed escrow_lock, a stored wallet and its password, or a deposit."""

    escrow_tx: dict[str, Any] | None = None
    wallet: str | None = None
    password: str | None = field(default=None, repr=False)
    deposit: str | None = None

    @property
    def kind(self) -> str:
        if self.deposit is not None:
            return Job.DEPOSIT
        return Job.WALLET if self.wallet is not None else Job.ESCROW


@dataclass(frozen=True)
class SubmittedJob:
    job: Job
    token: str | None  # for anonymous clients: shown once, stored hashed


def hash_job_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def job_submit(
    *,
    owner: AbstractBaseUser | None,
    request: JobRequest,
    payment: Payment,
    client: ChainClient | None = None,
    offers: list[Offer] | None = None,
    assign: bool = False,
    savepoint: bool = True,
) -> SubmittedJob:
    """Accept a job and its payment; see the module's docstring.

    ``offers``: the online offers for the model (providers loaded), read by the caller
    already. ``assign``: a job paid from a deposit goes to a provider with a free slot
    in the same transaction, its JOB pushed first thing after the commit (else it waits
    ``funded`` for dispatch). ``savepoint=False``: inside a caller's transaction that ends
    on any error, no savepoint is taken (two statements fewer).
    """
    client = client or chain.get_chain_client()
    anonymous = owner is None or not owner.is_authenticated
    if anonymous and payment.kind != Job.ESCROW:
        raise ApiError("paying with a stored wallet or a deposit needs a login", code="not_authenticated", status=403)
    estimate = matching.estimate_input_tokens(request.job_input)
    limits = {"max_price": request.max_price, "input_tokens": estimate, "max_tokens": request.max_tokens}
    if offers is None:
        candidates = matching.eligible_offers(model=request.model, require_capacity=False, **limits)
    else:
        candidates = matching.rank_offers(offers, **limits)
    if not candidates:
        raise _no_eligible_offer(request, estimate)
    view = chain.chain_view(client)
    job_id = new_job_id()
    lock_tx = None
    if payment.kind == Job.ESCROW:
        lock_tx = payment.escrow_tx
        payments.check_escrow_lock(
            lock_tx, view=view, min_amount=request.max_price, min_blocks=chain.required_escrow_blocks(view)
        )
    elif payment.kind == Job.WALLET:
        lock_tx = payments.sign_escrow_lock_with_wallet(
            owner=owner,
            address=payment.wallet,
            password=payment.password or "",
            amount=request.max_price,
            label=job_id,
            timeout_blocks=chain.required_escrow_blocks(view),
            view=view,
            client=client,
        )
    token = secrets.token_urlsafe(24) if anonymous else None
    now = timezone.now()
    try:
        with transaction.atomic(savepoint=savepoint):
            deposit = None
            fields: dict[str, Any] = {"state": Job.SUBMITTED}
            steps = [(Job.SUBMITTED, f"paid by {payment.kind}")]
            taken = None
            if payment.kind == Job.DEPOSIT:
                deposit = deposits.reserve(
                    deposit_id=payment.deposit, owner_id=owner.pk, max_price=request.max_price, view=view
                )
                fields = {"state": Job.FUNDED, "funded_at": now}
                steps.append((Job.FUNDED, "reserved on the deposit"))
                if assign:
                    free = [c for c in candidates if c.offer.active < c.offer.concurrency]
                    taken = dispatch.take_slot(free, now=now, recheck_online=True)
            job = Job(
                id=job_id,
                owner=None if anonymous else owner,
                token_hash=hash_job_token(token) if token else "",
                model=request.model,
                input=request.job_input,
                options=request.options(),
                input_tokens_estimate=estimate,
                max_price=request.max_price,
                payment=payment.kind,
                payer=lock_tx["from"] if lock_tx else deposit.payer,
                escrow_id=tx_id(lock_tx) if lock_tx else None,
                escrow_amount=lock_tx["payload"]["amount"] if lock_tx else None,
                escrow_timeout_height=lock_tx["payload"]["timeout_height"] if lock_tx else None,
                deposit=deposit,
                expires_at=now + timedelta(seconds=conf.JOB_TTL_S),
                **fields,
            )
            row = None
            if taken is not None:
                # Created assigned: the JOB is the first thing sent after the commit.
                offer = taken.offer
                assigned = dispatch.assignment(job, offer, now=now)
                for name, value in assigned.items():
                    setattr(job, name, value)
                job.state = Job.ASSIGNED
                job.reason = dispatch.assignment_reason(offer, job.attempts)
                job.save(force_insert=True)
                JobAttempt.objects.create(job=job, provider=offer.provider, number=job.attempts, assigned_at=now)
                dispatch.push_job(job)
                steps.append((Job.ASSIGNED, job.reason))
                history.record_created(job, steps, provider=offer.provider_id)
            else:
                job.reason = steps[-1][1] if deposit is not None else ""
                job.save(force_insert=True)
                history.record_created(job, steps)
                if deposit is not None:
                    kicks.dispatch_job(job.id)
                else:
                    row = outbox.enqueue_foreign(purpose=OutboxTx.JOB_LOCK, tx=lock_tx, job=job)
    except IntegrityError:
        raise ApiError("this escrow pays for another job or deposit already", code="escrow_used", status=409) from None
    if row is not None:
        row = outbox.submit_now(row.pk, client=client)
        if row.status == OutboxTx.FAILED:
            raise payments.refusal(row, f"job {job.id} is unfunded")
        job.refresh_from_db()
    return SubmittedJob(job=job, token=token)


def _no_eligible_offer(request: JobRequest, estimate: int) -> ApiError:
    cheapest = matching.cheapest_worst_case(model=request.model, input_tokens=estimate, max_tokens=request.max_tokens)
    if cheapest is None:
        detail = f"no online provider serves {request.model!r} with room for {estimate} + {request.max_tokens} tokens"
    else:
        detail = (
            f"the cheapest online offer for {request.model!r} may charge up to {cheapest} uait for this job "
            f"({estimate} input tokens estimated, max_tokens {request.max_tokens}), above max_price {request.max_price}"
        )
    return ApiError(f"{detail}; nothing was locked", code="no_eligible_offer", status=409)


def job_cancel(*, job_id: str, reason: str = "cancelled by its client") -> Job:
    """Cancel a job that has not completed; its money comes back (``refund_job``).

    A running job's provider is told to stop; a result it sends within
    ``conf.CANCEL_GRACE_S`` is still paid for the work done, and the rest refunded.
    """
    with transaction.atomic():
        job = lock_job(job_id)
        if job is None:
            raise ApiError("no such job", code="not_found", status=404)
        now = timezone.now()
        state = job.state
        if state in (Job.SUBMITTED, Job.FUNDED):
            history.transition(job, to=Job.CANCELLED, from_states=(state,), reason=reason)
            refund_job(job)
        elif state == Job.ASSIGNED or (state == Job.RUNNING and conf.CANCEL_GRACE_S == 0):
            push_cancel(job)
            release_slot(job)
            JobAttempt.objects.filter(job=job, provider_id=job.provider_id).update(
                state=JobAttempt.CANCELLED, ended_at=now
            )
            history.transition(job, to=Job.CANCELLED, from_states=(state,), reason=reason)
            refund_job(job)
        elif state == Job.RUNNING:
            push_cancel(job)
            history.transition(
                job,
                to=Job.CANCELLED,
                from_states=(state,),
                reason=f"{reason}; its provider may still report the work done",
                cancel_grace_until=now + timedelta(seconds=conf.CANCEL_GRACE_S),
            )
        else:
            raise ApiError(f"job {job.id} is {state}: it cannot be cancelled", code="not_cancellable", status=409)
        return job


def job_dispute(*, job_id: str, reason: str) -> Job:
    """The client disputes a completed job's result: recorded against the provider's reputation.

    The payment stands (the receipt proves the metered work was done; the coordinator
    cannot judge its quality), which keeps providers paid promptly.
    """
    with transaction.atomic():
        job = lock_job(job_id)
        if job is None:
            raise ApiError("no such job", code="not_found", status=404)
        if job.state not in (Job.COMPLETED, Job.SETTLED) or job.completed_at is None:
            raise ApiError(
                f"job {job.id} is {job.state}: only completed jobs can be disputed", code="not_disputable", status=409
            )
        if job.disputed_at is not None:
            raise ApiError(f"job {job.id} was disputed already", code="already_disputed", status=409)
        now = timezone.now()
        if now - job.completed_at > timedelta(seconds=conf.DISPUTE_WINDOW_S):
            raise ApiError(
                f"job {job.id} completed more than {conf.DISPUTE_WINDOW_S} s ago: the dispute window is closed",
                code="dispute_window_closed",
                status=409,
            )
        provider = (
            JobAttempt.objects.filter(job=job, state=JobAttempt.COMPLETED).values_list("provider_id", flat=True).first()
        )
        Job.objects.filter(pk=job.pk).update(disputed_at=now, dispute_reason=reason[:500])
        job.disputed_at, job.dispute_reason = now, reason[:500]
        if provider:
            Provider.objects.filter(pk=provider).update(jobs_disputed=F("jobs_disputed") + 1)
        history.record(job, "disputed", reason, provider=provider or "")
        return job
