"""The gateway's writes: a request becomes a deposit-paid job; an abandoned or broken stream ends it.

A request's job goes through the marketplace like any other (``jobs.job_submit`` with the
key's deposit, matching, dispatch, receipts, settlement). The gateway chooses its
``max_price``: the worst case (``max_tokens`` and the input estimate) at the cheapest
online offer for the model, so the deposit must cover that up front or the request is
refused before anything is reserved. The job is assigned in the transaction that creates
it when a provider has a free slot, so its JOB is the first thing sent on commit, with no
round trip through the task queue.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from aitbc_site.errors import ApiError
from chain.client import ChainClient, ChainUnavailable
from marketplace import chain
from marketplace.gateway import conf
from marketplace.gateway.keys import touch
from marketplace.gateway.models import ApiKey, GatewayJob
from marketplace.models import Deposit, Job, JobAttempt, Offer
from marketplace.services import dispatch, history, jobs, matching
from marketplace.services.settlement import refund_job

logger = logging.getLogger("aitbc.marketplace.gateway")

# A reservation still held by a job of the key: in flight, or cancelled and waiting for its provider's word.
HOLDING = (Job.SUBMITTED, Job.FUNDED, Job.ASSIGNED, Job.RUNNING, Job.CANCELLED)


@dataclass(frozen=True)
class Generation:
    """What a client asked for, whichever API it spoke."""

    model: str
    job_input: dict[str, Any]  # {"prompt"} or {"messages"}, as the job will carry it
    max_tokens: int | None = None  # None: the gateway's default, within the context
    temperature: float = 0.8
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stream: bool = True  # the client reads the answer as it is produced


def online_offers():
    return Offer.objects.filter(
        withdrawn=False, provider__online=True, provider__last_seen_at__gte=matching.online_since()
    )


def offered_models() -> list[dict[str, Any]]:
    """The models online providers offer now: each with its lowest prices, largest context and provider count."""
    models: dict[str, dict[str, Any]] = {}
    for offer in online_offers().order_by("model", "provider_id"):
        entry = models.setdefault(
            offer.model,
            {
                "model": offer.model,
                "input_price": offer.input_price,
                "output_price": offer.output_price,
                "context_length": offer.context_length,
                "providers": 0,
                "updated_at": offer.updated_at,
            },
        )
        entry["input_price"] = min(entry["input_price"], offer.input_price)
        entry["output_price"] = min(entry["output_price"], offer.output_price)
        entry["context_length"] = max(entry["context_length"], offer.context_length)
        entry["providers"] += 1
        entry["updated_at"] = max(entry["updated_at"], offer.updated_at)
    return list(models.values())


def model_not_found(model: str) -> ApiError:
    return ApiError(f"model '{model}' not found: no online provider offers it", code="model_not_found", status=404)


def _refused_payment(message: str, code: str) -> ApiError:
    return ApiError(message, code=code, status=402)


def key_spending(key: ApiKey) -> int:
    """What the key's jobs were charged plus what its jobs in flight hold reserved (uait)."""
    totals = Job.objects.filter(gateway__key=key).aggregate(
        charged=Sum("charge", filter=Q(charge__isnull=False)),
        reserved=Sum("max_price", filter=Q(charge__isnull=True, state__in=HOLDING)),
    )
    return (totals["charged"] or 0) + (totals["reserved"] or 0)


def gateway_submit(*, key: ApiKey, generation: Generation, api: str, client: ChainClient | None = None) -> Job:
    """Submit the request as a job paid from the key's deposit, and dispatch it if a provider is free.

    Raises ``ApiError``: 403 ``model_not_allowed``, 404 ``model_not_found``, 400
    ``context_length_exceeded``, 402 ``insufficient_deposit`` / ``deposit_not_open`` /
    ``spending_cap_reached``, 503 ``node_unavailable``.
    """
    model = generation.model
    if not key.allows_model(model):
        raise ApiError(f"this API key may not use model '{model}'", code="model_not_allowed", status=403)
    offers = list(matching.online_offers(model))
    if not offers:
        raise model_not_found(model)
    estimate = matching.estimate_input_tokens(generation.job_input)
    room = max(offer.context_length for offer in offers) - estimate
    max_tokens = generation.max_tokens if generation.max_tokens is not None else min(conf.DEFAULT_MAX_TOKENS, room)
    fitting = [offer for offer in offers if estimate + max_tokens <= offer.context_length]
    if max_tokens < 1 or not fitting:
        raise ApiError(
            f"about {estimate} input tokens and max_tokens {max_tokens} exceed the context of every provider "
            f"of '{model}' (at most {max(o.context_length for o in offers)} tokens)",
            code="context_length_exceeded",
            status=400,
        )
    max_price = max(
        1, min(matching.worst_case_charge(o, input_tokens=estimate, max_tokens=max_tokens) for o in fitting)
    )
    deposit = key.deposit
    if deposit.state != Deposit.OPEN:
        raise _refused_payment(f"the key's deposit {deposit.pk} is {deposit.state}, not open", "deposit_not_open")
    request = jobs.JobRequest(
        model=model,
        job_input=generation.job_input,
        max_tokens=max_tokens,
        max_price=max_price,
        temperature_milli=max(0, round(generation.temperature * 1000)),
        seed=generation.seed,
        stop=list(generation.stop),
        # An answer read whole needs no chunks: they would only take CPU from its inference.
        stream=generation.stream,
    )
    client = client or chain.get_chain_client()
    prepared_at = time.monotonic()
    try:
        chain.chain_view(client)  # fetched (or reused) before the transaction takes the write lock
        # One transaction from reservation to assignment: one write lock taken, one commit, and the
        # JOB goes to its provider as soon as it commits.
        with transaction.atomic():
            if key.spending_cap is not None:
                # The key's lock serialises its requests, so two cannot both pass the cap.
                list(ApiKey.objects.select_for_update().filter(pk=key.pk))
                spent = key_spending(key)
                if spent + max_price > key.spending_cap:
                    raise _refused_payment(
                        f"this API key's spending cap is {key.spending_cap} uait: {spent} spent or reserved, "
                        f"and this request may cost up to {max_price}",
                        "spending_cap_reached",
                    )
            # Assigned in this transaction if a provider has a free slot: its JOB leaves on commit.
            job = jobs.job_submit(
                owner=key.owner,
                request=request,
                payment=jobs.Payment(deposit=deposit.pk),
                client=client,
                offers=offers,
                assign=True,
                savepoint=False,  # any error ends this transaction
            ).job
            submitted_at = time.monotonic()
            GatewayJob.objects.create(job=job, key=key, api=api)
            touch(key)
    except ChainUnavailable as exc:
        logger.warning("chain node unavailable: %s", exc)
        raise ApiError("the chain node is unavailable; try again later", code="node_unavailable", status=503) from None
    except ApiError as exc:
        if exc.code in ("insufficient_deposit", "deposit_not_open", "deposit_expiring"):
            raise _refused_payment(
                f"{exc.message} (this request may cost up to {max_price} uait: max_tokens {max_tokens} at "
                f"the cheapest offer's price)"
                if exc.code == "insufficient_deposit"
                else exc.message,
                exc.code,
            ) from None
        if exc.code == "no_eligible_offer":
            raise model_not_found(model) from None
        raise
    job.gateway_timings = {
        "prepared": prepared_at,
        "job_submitted": submitted_at,
        "committed": time.monotonic(),
    }
    return job


def gateway_abandon(*, job_id: str) -> None:
    """The client went away mid-answer: cancel the job; what its provider produced is still paid.

    ``jobs.job_cancel`` tells a running provider to stop; the result it reports within
    the grace period is metered and paid (the client is charged for exactly that), and
    the rest of the reservation comes back.
    """
    try:
        jobs.job_cancel(job_id=job_id, reason="the gateway's client disconnected")
    except ApiError as exc:
        if exc.code != "not_cancellable":  # it completed first: charged as usual
            raise


def gateway_abort(*, job_id: str, reason: str) -> None:
    """The answer broke after its first token (its provider failed): end the job, charging nothing.

    The marketplace would hand the job to the next provider, but the client has seen
    part of one answer already and its stream is closed with an error: whichever provider
    holds the job now is told to stop and is not paid (no grace), and the deposit's
    reservation is released.
    """
    with transaction.atomic():
        job = dispatch.lock_job(job_id)
        if job is None or job.state not in (Job.SUBMITTED, Job.FUNDED, Job.ASSIGNED, Job.RUNNING):
            return
        state = job.state
        if state in Job.IN_FLIGHT:
            dispatch.push_cancel(job)
            dispatch.release_slot(job)
            JobAttempt.objects.filter(job=job, provider_id=job.provider_id).update(
                state=JobAttempt.CANCELLED, ended_at=timezone.now()
            )
        history.transition(job, to=Job.CANCELLED, from_states=(state,), reason=reason)
        refund_job(job)


@dataclass(frozen=True)
class Outcome:
    """A completed job as the gateway answers it."""

    job_id: str
    output: str
    input_tokens: int
    output_tokens: int
    charge: int
    finish_reason: str  # the receipt's: "stop", "length" or "cancelled"
    created_at: Any
    started_at: Any
    completed_at: Any


# What a stream does when it reads its job's state (after a state message, or when messages stall).
WAIT, DONE, BROKEN = "wait", "done", "broken"


@dataclass(frozen=True)
class JobState:
    verdict: str
    attempts: int = 0
    outcome: Outcome | None = None
    error: ApiError | None = None


def outcome_from_event(event: dict[str, Any]) -> Outcome | None:
    """The outcome a job's "completed" event carries for its owner (``settlement``); None without one."""
    detail = event.get("outcome")
    if event.get("state") != Job.COMPLETED or not isinstance(detail, dict):
        return None
    try:
        return Outcome(
            job_id=event["job_id"],
            output=detail["output"],
            input_tokens=detail["input_tokens"],
            output_tokens=detail["output_tokens"],
            charge=detail["charge"],
            finish_reason=detail["finish_reason"],
            created_at=datetime.fromisoformat(detail["created_at"]),
            started_at=datetime.fromisoformat(detail["started_at"]),
            completed_at=datetime.fromisoformat(detail["completed_at"]),
        )
    except (KeyError, TypeError, ValueError):
        return None  # not the shape expected: the job is read instead


def job_state(*, job_id: str) -> JobState:
    """Where a gateway job stands: still on its way, done (with its outcome), or over without an answer."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return JobState(BROKEN, error=ApiError("the job vanished", code="job_lost", status=500))
    if job.state in (Job.COMPLETED, Job.SETTLED):
        receipt = (job.receipt or {}).get("receipt") or {}
        return JobState(
            DONE,
            attempts=job.attempts,
            outcome=Outcome(
                job_id=job.pk,
                output=job.output,
                input_tokens=job.input_tokens or 0,
                output_tokens=job.output_tokens or 0,
                charge=job.charge or 0,
                finish_reason=receipt.get("finish_reason", "stop"),
                created_at=job.created_at,
                started_at=job.started_at or job.assigned_at or job.created_at,
                completed_at=job.completed_at or timezone.now(),
            ),
        )
    if job.state in (Job.SUBMITTED, Job.FUNDED, Job.ASSIGNED, Job.RUNNING):
        return JobState(WAIT, attempts=job.attempts)
    state, reason = job.state, job.reason
    if state == Job.REFUNDED:  # why it ended is the state before the refund
        last = job.events.filter(state__in=(Job.FAILED, Job.EXPIRED, Job.CANCELLED)).order_by("-at", "-id").first()
        if last is not None:
            state, reason = last.state, last.reason
    if state == Job.EXPIRED:
        error = ApiError(f"no provider answered in time ({reason})", code="timeout", status=504)
    elif state == Job.FAILED:
        error = ApiError(f"no provider could answer: {reason}", code="provider_failed", status=502)
    else:
        error = ApiError(f"the job was {state}: {reason}", code="job_cancelled", status=409)
    return JobState(BROKEN, attempts=job.attempts, error=error)


def deposit_open_signed(
    *, owner, payer, amount: int, client: ChainClient | None = None, extra_blocks: int = 0
) -> Deposit:
    """Open a deposit for ``owner`` paid by ``payer`` (a ``chain.protocol.keys.Key``): sign its escrow_lock here.

    For operators and the devnet (``apikey create --amount``): the escrow times out twice
    the required blocks plus ``extra_blocks`` ahead. The deposit is ``pending`` until the
    lock commits (``wait_deposit_open``).
    """
    from chain.protocol.tx import build_transaction
    from marketplace.keys import coordinator_address
    from marketplace.services import deposits

    client = client or chain.get_chain_client()
    view = chain.chain_view(client, max_age=0)
    lock = build_transaction(
        payer,
        chain_id=view.chain_id,
        type="escrow_lock",
        nonce=client.account(payer.address)["nonce"],
        fee=view.min_fee,
        payload={
            "job_id": "gateway-deposit",
            "amount": amount,
            "arbiter": coordinator_address(),
            "timeout_height": view.height + 2 * chain.required_escrow_blocks(view) + 20 + extra_blocks,
        },
    )
    return deposits.deposit_open(owner=owner, escrow_tx=lock, client=client)


def wait_deposit_open(*, deposit_id: str, timeout: float = 60.0) -> Deposit:
    """Wait until the coordinator saw the deposit's lock commit; the deposit (open, or as it ended)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        deposit = Deposit.objects.get(pk=deposit_id)
        if deposit.state != Deposit.PENDING or time.monotonic() > deadline:
            return deposit
        time.sleep(0.2)
