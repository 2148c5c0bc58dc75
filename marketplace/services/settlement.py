"""Results, receipts, charges, and what the chain's answers mean for jobs.

A result is paid only if its signed receipt passes every check of docs/marketplace.md:
the signature, the assigned provider, this job and coordinator, the model, the input and
output digests, and counts within the job's limits. A refused receipt pays nothing and
counts as the provider's failure: the job goes to the next provider, and the client is
charged once, for the run that completed.

The charge is ``job_charge`` of the receipt's counts at the offer's prices, capped at the
job's ``max_price`` and what its escrow holds. A per-job escrow is then paid to the
provider (``escrow_pay``) and, once that pay is committed, what remains is refunded
(``escrow_refund``): the refund never goes before the pay, so a provider is never left
unpaid by a closed escrow. A deposit job adds its charge to the deposit's next payout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from chain.protocol.errors import ProtocolError
from chain.protocol.market import input_digest, job_charge, output_digest, verify_receipt
from marketplace import kicks
from marketplace.keys import coordinator_address
from marketplace.models import Job, JobAttempt, OutboxTx, Provider
from marketplace.services import deposits, history
from marketplace.services.dispatch import (
    NotAssigned,
    attempt_failed,
    cancelled_run_ended,
    job_input_document,
    lock_job,
    release_slot,
)
from marketplace.services.outbox import enqueue_own_once

logger = logging.getLogger("aitbc.marketplace.settlement")

MAX_OUTPUT_CHARS = 1_000_000
# Completed outputs up to this size travel with the owner's "completed" event (docs/marketplace.md).
OUTCOME_EVENT_MAX_CHARS = 65_536


@dataclass(frozen=True)
class ResultOutcome:
    accepted: bool
    charge: int | None = None
    problem: str = ""
    state: str = ""  # the job's state after an accepted result


def receipt_problem(job: Job, receipt: dict[str, Any], output: str) -> str:
    """Why ``receipt`` does not account for ``output`` of this run of ``job``; "" when it does."""
    if receipt["job_id"] != job.id:
        return f"receipt is for job {receipt['job_id']!r}"
    if receipt["coordinator"] != coordinator_address():
        return "receipt is addressed to another coordinator"
    if receipt["provider"] != job.provider_id:
        return "receipt is signed by another provider than the one assigned"
    if receipt["model"] != job.model:
        return f"receipt model {receipt['model']!r} is not the job's {job.model!r}"
    if receipt["input_sha256"] != input_digest(job_input_document(job)):
        return "receipt input_sha256 is not the digest of the job's input"
    if receipt["output_sha256"] != output_digest(output):
        return "receipt output_sha256 is not the digest of the output"
    if receipt["output_tokens"] > job.options["max_tokens"]:
        return f"receipt output_tokens {receipt['output_tokens']} exceed max_tokens {job.options['max_tokens']}"
    if job.context_length is not None and receipt["input_tokens"] > job.context_length:
        return f"receipt input_tokens {receipt['input_tokens']} exceed the offer's context_length {job.context_length}"
    return ""


def job_charge_for(job: Job, receipt: dict[str, Any]) -> int:
    """The metered price, never above the max price nor what the escrow holds."""
    charge = job_charge(
        input_tokens=receipt["input_tokens"],
        output_tokens=receipt["output_tokens"],
        input_price=job.input_price or 0,
        output_price=job.output_price or 0,
    )
    cap = job.max_price if job.escrow_amount is None else min(job.max_price, job.escrow_amount)
    return min(charge, cap)


def provider_result(*, provider: str, job_id: str, output: Any, signed_receipt: Any) -> ResultOutcome:
    """A provider's result. Accepted: the job is completed and its payment queued. Refused: the
    provider is not paid and the job fails over (``NotAssigned`` if it does not hold the job)."""
    problem = ""
    receipt: dict[str, Any] | None = None
    if type(output) is not str or len(output) > MAX_OUTPUT_CHARS:
        problem = f"output must be a string of at most {MAX_OUTPUT_CHARS} characters"
    else:
        try:
            receipt = verify_receipt(signed_receipt)
        except ProtocolError as exc:
            problem = exc.message
    with transaction.atomic():
        job = lock_job(job_id)
        now = timezone.now()
        in_grace = (
            job is not None
            and job.state == Job.CANCELLED
            and job.cancel_grace_until is not None
            and now <= job.cancel_grace_until
        )
        if job is None or job.provider_id != provider or not (job.state in Job.IN_FLIGHT or in_grace):
            # A late result from a provider that lost the job: it is not paid, whatever it says.
            raise NotAssigned(f"job {job_id} is not assigned to you (any more): result refused")
        if not problem:
            problem = receipt_problem(job, receipt, output)
        if problem:
            logger.warning("job %s: receipt from %s refused: %s", job.id, provider, problem)
            if in_grace:
                Provider.objects.filter(pk=provider).update(jobs_failed=F("jobs_failed") + 1)
                cancelled_run_ended(job=job, reason=f"receipt refused: {problem}")
            else:
                attempt_failed(
                    job_id=job.id, provider=provider, reason=f"receipt refused: {problem}", counter="jobs_failed"
                )
            return ResultOutcome(accepted=False, problem=problem)
        charge = job_charge_for(job, receipt)
        _complete(job, receipt=receipt, signed_receipt=signed_receipt, output=output, charge=charge, now=now)
        return ResultOutcome(accepted=True, charge=charge, state=job.state)


def _complete(
    job: Job, *, receipt: dict[str, Any], signed_receipt: dict[str, Any], output: str, charge: int, now
) -> None:
    release_slot(job)
    JobAttempt.objects.filter(job=job, provider_id=job.provider_id).update(state=JobAttempt.COMPLETED, ended_at=now)
    # The attempt was assigned when the job was (a failed-over job's fields are those of its current attempt).
    latency_ms = int((now - job.assigned_at).total_seconds() * 1000) if job.assigned_at else 0
    Provider.objects.filter(pk=job.provider_id).update(
        jobs_completed=F("jobs_completed") + 1, latency_ms_total=F("latency_ms_total") + latency_ms
    )
    was_cancelled = job.state == Job.CANCELLED
    outcome = {
        "output": output,
        "input_tokens": receipt["input_tokens"],
        "output_tokens": receipt["output_tokens"],
        "charge": charge,
        "finish_reason": receipt.get("finish_reason", "stop"),
        "created_at": job.created_at.isoformat(),
        "started_at": (job.started_at or job.assigned_at or job.created_at).isoformat(),
        "completed_at": now.isoformat(),
    }
    history.transition(
        job,
        to=Job.COMPLETED,
        from_states=(*Job.IN_FLIGHT, Job.CANCELLED),
        reason=(
            f"completed after the cancel: the work done is paid ({charge} uait)"
            if was_cancelled
            else f"completed: {receipt['input_tokens']} + {receipt['output_tokens']} tokens, {charge} uait"
        ),
        output=output,
        receipt=signed_receipt,
        input_tokens=receipt["input_tokens"],
        output_tokens=receipt["output_tokens"],
        charge=charge,
        completed_at=now,
        cancel_grace_until=None,
        # What a waiting gateway answers with, so it need not read the job back (a large output is read).
        owner_detail={"outcome": outcome} if len(output) <= OUTCOME_EVENT_MAX_CHARS else None,
    )
    if job.deposit_id is not None:
        deposits.job_charged(job=job, charge=charge)
    elif charge > 0:
        enqueue_own_once(
            purpose=OutboxTx.JOB_PAY,
            kind="escrow_pay",
            payload={"escrow": job.escrow_id, "to": job.provider_id, "amount": charge},
            job=job,
        )
    else:
        _queue_job_refund(job)


def _queue_job_refund(job: Job) -> None:
    enqueue_own_once(purpose=OutboxTx.JOB_REFUND, kind="escrow_refund", payload={"escrow": job.escrow_id}, job=job)


def refund_job(job: Job) -> None:
    """Give a cancelled, expired or failed job's money back (the caller holds its locks).

    A deposit job releases its reservation at once. A per-job escrow is refunded once its
    lock has committed; a lock still pending is refunded when it commits (``on_tx_final``).
    """
    if job.deposit_id is not None:
        deposits.release(job=job)
        history.transition(
            job, to=Job.REFUNDED, from_states=Job.TO_REFUND, reason="reservation released", refunded_at=timezone.now()
        )
    elif job.escrow_funded and job.cancel_grace_until is None:
        _queue_job_refund(job)


# -- the chain's answers ----------------------------------------------------------------------


def on_tx_final(row: OutboxTx) -> None:
    """A row of the outbox became final (committed, rejected in a block, or refused).

    Called inside the outbox's transaction, with the row's deposit and job locked.
    """
    handler = _HANDLERS.get(row.purpose)
    if handler is not None:
        handler(row)


def _error(row: OutboxTx) -> str:
    return f"{row.error_code}: {row.error_message}".strip(": ")


def _job_lock_final(row: OutboxTx) -> None:
    job = Job.objects.get(pk=row.job_id)
    if row.status == OutboxTx.COMMITTED:
        Job.objects.filter(pk=job.pk).update(escrow_funded=True)
        job.escrow_funded = True
        if history.transition(
            job, to=Job.FUNDED, from_states=(Job.SUBMITTED,), reason="escrow committed", funded_at=timezone.now()
        ):
            kicks.dispatch_job(job.id)
        elif job.state in Job.TO_REFUND:
            # Cancelled or expired while its escrow was on its way: refund it now that it exists.
            refund_job(job)
    else:
        history.transition(
            job,
            to=Job.UNFUNDED,
            from_states=(Job.SUBMITTED, Job.CANCELLED, Job.EXPIRED),
            reason=f"the chain refused the escrow: {_error(row)}",
        )


def _job_pay_final(row: OutboxTx) -> None:
    job = Job.objects.get(pk=row.job_id)
    if row.status == OutboxTx.COMMITTED:
        history.record(job, "paid", f"{row.payload['amount']} uait to {row.payload['to']}", provider=job.provider_id)
        if (job.escrow_amount or 0) - row.payload["amount"] > 0:
            _queue_job_refund(job)
        else:
            history.transition(
                job, to=Job.SETTLED, from_states=(Job.COMPLETED,), reason="paid", settled_at=timezone.now(), refund=0
            )
    else:
        logger.error("job %s: pay to %s failed: %s", job.id, job.provider_id, _error(row))
        history.record(job, "pay_failed", _error(row), provider=job.provider_id or "")
        _queue_job_refund(job)


def _job_refund_final(row: OutboxTx) -> None:
    job = Job.objects.get(pk=row.job_id)
    done = row.status == OutboxTx.COMMITTED or row.error_code == "escrow_closed"
    paid = OutboxTx.objects.filter(job=job, purpose=OutboxTx.JOB_PAY, status=OutboxTx.COMMITTED).exists()
    refund = (job.escrow_amount or 0) - ((job.charge or 0) if paid else 0) if row.status == OutboxTx.COMMITTED else 0
    reason = f"refunded {refund} uait" if done else f"refund failed: {_error(row)}"
    now = timezone.now()
    if job.state == Job.COMPLETED:
        history.transition(
            job, to=Job.SETTLED, from_states=(Job.COMPLETED,), reason=reason, settled_at=now, refund=refund
        )
    else:
        history.transition(
            job, to=Job.REFUNDED, from_states=Job.TO_REFUND, reason=reason, refunded_at=now, refund=refund
        )


_HANDLERS = {
    OutboxTx.JOB_LOCK: _job_lock_final,
    OutboxTx.JOB_PAY: _job_pay_final,
    OutboxTx.JOB_REFUND: _job_refund_final,
    OutboxTx.DEPOSIT_LOCK: deposits.lock_final,
    OutboxTx.DEPOSIT_PAYOUT: deposits.payout_final,
    OutboxTx.DEPOSIT_REFUND: deposits.refund_final,
}
