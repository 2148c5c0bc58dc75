"""Deposits: one escrow (arbiter: the coordinator) that many jobs draw on with no block wait.

Books (``Deposit``): a job reserves its ``max_price`` when accepted, under the deposit's
row lock and a conditional UPDATE (never beyond ``amount - charged - reserved``); at
completion the reservation is released and the metered charge added to ``charged``. The
charges are paid to providers in batches, one ``escrow_pay`` per provider, when enough
jobs or uait are owed or the oldest charge is old enough (``conf.PAYOUT_BATCH_*``).
``paid`` counts committed payouts only, so after each one ``paid`` equals the escrow's
``paid`` on the chain and ``amount - paid`` its ``remaining``. Closing (asked, or near
the escrow's timeout) waits for the jobs in flight, pays what is owed, then refunds the
rest to the payer.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Min, Sum
from django.utils import timezone

from aitbc_site.errors import ApiError
from chain.client import ChainClient
from chain.protocol.tx import tx_id
from marketplace import chain, conf, kicks
from marketplace.chain import ChainView, required_escrow_blocks
from marketplace.models import Deposit, DepositPayout, Job, OutboxTx
from marketplace.services import history, payments
from marketplace.services.outbox import enqueue_foreign, enqueue_own, enqueue_own_once, submit_now

logger = logging.getLogger("aitbc.marketplace.deposits")


def deposit_open(
    *,
    owner: AbstractBaseUser,
    escrow_tx: dict[str, Any] | None = None,
    wallet: str | None = None,
    password: str | None = None,
    amount: int | None = None,
    timeout_blocks: int | None = None,
    client: ChainClient | None = None,
) -> Deposit:
    """Record a deposit paid by ``escrow_tx`` (or signed now from a stored wallet) and send its lock.

    The deposit is ``pending`` until the lock commits, then ``open``. A refusal for good
    by the node is raised to the caller (and the deposit is ``failed``).
    """
    client = client or chain.get_chain_client()
    view = chain.chain_view(client)
    # A deposit outlives many jobs: it must time out at least twice as late as one job's escrow.
    min_blocks = 2 * required_escrow_blocks(view)
    if escrow_tx is not None:
        tx = escrow_tx
        payments.check_escrow_lock(tx, view=view, min_amount=1, min_blocks=min_blocks)
    else:
        tx = payments.sign_escrow_lock_with_wallet(
            owner=owner,
            address=wallet or "",
            password=password or "",
            amount=amount or 0,
            label="deposit",
            timeout_blocks=max(min_blocks, timeout_blocks or 0),
            view=view,
            client=client,
        )
    try:
        with transaction.atomic():
            deposit = Deposit.objects.create(
                owner=owner,
                payer=tx["from"],
                escrow_id=tx_id(tx),
                amount=tx["payload"]["amount"],
                timeout_height=tx["payload"]["timeout_height"],
            )
            row = enqueue_foreign(purpose=OutboxTx.DEPOSIT_LOCK, tx=tx, deposit=deposit)
    except IntegrityError:
        raise ApiError("this escrow pays for another job or deposit already", code="escrow_used", status=409) from None
    row = submit_now(row.pk, client=client)
    if row.status == OutboxTx.FAILED:
        raise payments.refusal(row, f"deposit {deposit.id} failed")
    deposit.refresh_from_db()
    return deposit


def accepts_jobs_until(deposit: Deposit, view: ChainView) -> int:
    """The last height at which a job may still start on this deposit (it must settle before the timeout)."""
    return deposit.timeout_height - required_escrow_blocks(view)


def reserve(*, deposit_id: str, owner_id: int, max_price: int, view: ChainView) -> Deposit:
    """Reserve ``max_price`` of the caller's deposit for a new job (inside the caller's transaction)."""
    deposit = Deposit.objects.select_for_update().filter(pk=deposit_id, owner_id=owner_id).first()
    if deposit is None:
        raise ApiError(f"no deposit {deposit_id} among yours", code="not_found", status=404)
    if deposit.state != Deposit.OPEN:
        raise ApiError(f"deposit {deposit_id} is {deposit.state}, not open", code="deposit_not_open", status=409)
    if view.height > accepts_jobs_until(deposit, view):
        raise ApiError(
            f"deposit {deposit_id} times out at height {deposit.timeout_height}: too soon for a new job",
            code="deposit_expiring",
            status=409,
        )
    reserved = Deposit.objects.filter(
        pk=deposit.pk, state=Deposit.OPEN, amount__gte=F("charged") + F("reserved") + max_price
    ).update(reserved=F("reserved") + max_price)
    if not reserved:
        raise ApiError(
            f"deposit {deposit_id} has {deposit.available} uait left, less than max_price {max_price}",
            code="insufficient_deposit",
            status=409,
        )
    return deposit


def release(*, job: Job) -> None:
    """A deposit job ended without a charge: its reservation returns to the deposit."""
    Deposit.objects.filter(pk=job.deposit_id).update(reserved=F("reserved") - job.max_price)
    _finalize_if_closing(job.deposit_id)


def job_charged(*, job: Job, charge: int) -> None:
    """A deposit job completed: release its reservation and owe ``charge``; a batch may be due after.

    The payout check is a task enqueued once this commits (``kicks.deposit_payout``: at
    most one per deposit per ``kicks.PAYOUT_CHECK_S``), after the client's answer has
    gone: a crash in between loses nothing, since the job stays owed (``completed``, no
    payout) and ``deposits_sweep`` pays owed charges and moves closing deposits along.
    """
    Deposit.objects.filter(pk=job.deposit_id).update(
        reserved=F("reserved") - job.max_price, charged=F("charged") + charge
    )
    if charge == 0:
        history.transition(
            job, to=Job.SETTLED, from_states=(Job.COMPLETED,), reason="nothing to pay", settled_at=timezone.now()
        )
    kicks.deposit_payout(job.deposit_id)


def deposit_payout_due(*, deposit_id: str) -> None:
    """Pay the deposit's batch if one is due, and finish closing it if that was its last job."""
    with transaction.atomic():
        payout_batch(deposit_id=deposit_id)
        _finalize_if_closing(deposit_id)


def payout_batch(*, deposit_id: str, force: bool = False) -> list[DepositPayout]:
    """Pay what the deposit owes its providers if a batch is due (or ``force``); the payouts queued.

    The caller holds the deposit's lock, or this takes it.
    """
    deposit = Deposit.objects.select_for_update().get(pk=deposit_id)
    owed = Job.objects.filter(deposit=deposit, state=Job.COMPLETED, payout__isnull=True, charge__gt=0)
    stats = owed.aggregate(count=Count("id"), total=Sum("charge"), oldest=Min("completed_at"))
    if not stats["count"]:
        return []
    due = (
        force
        or stats["count"] >= conf.PAYOUT_BATCH_COUNT
        or stats["total"] >= conf.PAYOUT_BATCH_AMOUNT
        or stats["oldest"] <= timezone.now() - timedelta(seconds=conf.PAYOUT_BATCH_AGE_S)
    )
    if not due:
        return []
    payouts = []
    # The deposit's lock keeps completions out while the batch is cut, so sums and jobs agree.
    for row in owed.values("provider_id").annotate(total=Sum("charge"), jobs=Count("id")).order_by("provider_id"):
        payout = DepositPayout.objects.create(
            deposit=deposit, provider=row["provider_id"], amount=row["total"], jobs=row["jobs"]
        )
        owed.filter(provider_id=row["provider_id"]).update(payout=payout)
        enqueue_own(
            purpose=OutboxTx.DEPOSIT_PAYOUT,
            kind="escrow_pay",
            payload={"escrow": deposit.escrow_id, "to": row["provider_id"], "amount": row["total"]},
            deposit=deposit,
            payout=payout,
        )
        payouts.append(payout)
    return payouts


def close(*, deposit_id: str, owner_id: int | None, reason: str) -> Deposit:
    """Stop taking jobs; once those in flight end, pay what is owed and refund the rest."""
    with transaction.atomic():
        query = Deposit.objects.select_for_update().filter(pk=deposit_id)
        if owner_id is not None:
            query = query.filter(owner_id=owner_id)
        deposit = query.first()
        if deposit is None:
            raise ApiError(f"no deposit {deposit_id} among yours", code="not_found", status=404)
        if deposit.state in (Deposit.PENDING, Deposit.OPEN):
            Deposit.objects.filter(pk=deposit.pk).update(state=Deposit.CLOSING, reason=reason[:300])
        _finalize_if_closing(deposit.pk)
    deposit.refresh_from_db()
    return deposit


def _finalize_if_closing(deposit_id: str) -> None:
    deposit = Deposit.objects.select_for_update().get(pk=deposit_id)
    if deposit.state != Deposit.CLOSING or deposit.reserved > 0:
        return
    if not OutboxTx.objects.filter(deposit=deposit, purpose=OutboxTx.DEPOSIT_LOCK, status=OutboxTx.COMMITTED).exists():
        return  # its lock is still on its way (lock_final decides)
    payout_batch(deposit_id=deposit.pk, force=True)
    if DepositPayout.objects.filter(deposit=deposit, state=DepositPayout.QUEUED).exists():
        return  # the refund goes after the last payout commits, never before
    enqueue_own_once(
        purpose=OutboxTx.DEPOSIT_REFUND, kind="escrow_refund", payload={"escrow": deposit.escrow_id}, deposit=deposit
    )


# -- the chain's answers (called by settlement.on_tx_final, deposit locked) -------------------


def lock_final(row: OutboxTx) -> None:
    deposit = Deposit.objects.get(pk=row.deposit_id)
    if row.status == OutboxTx.COMMITTED:
        Deposit.objects.filter(pk=deposit.pk, state=Deposit.PENDING).update(
            state=Deposit.OPEN, opened_at=timezone.now()
        )
        _finalize_if_closing(deposit.pk)
    else:
        Deposit.objects.filter(pk=deposit.pk, state__in=(Deposit.PENDING, Deposit.CLOSING)).update(
            state=Deposit.FAILED, reason=f"the chain refused the escrow: {row.error_code}: {row.error_message}"[:300]
        )


def payout_final(row: OutboxTx) -> None:
    payout = DepositPayout.objects.get(pk=row.payout_id)
    now = timezone.now()
    if row.status == OutboxTx.COMMITTED:
        DepositPayout.objects.filter(pk=payout.pk).update(state=DepositPayout.COMMITTED)
        Deposit.objects.filter(pk=row.deposit_id).update(paid=F("paid") + payout.amount)
        reason = f"paid in a batch of {payout.jobs} ({payout.amount} uait to {payout.provider})"
    else:
        logger.error("deposit %s: payout %s refused: %s", row.deposit_id, payout.pk, row.error_code)
        DepositPayout.objects.filter(pk=payout.pk).update(state=DepositPayout.REJECTED)
        reason = f"payout refused by the chain: {row.error_code}"
    for job in Job.objects.filter(payout=payout, state=Job.COMPLETED):
        history.transition(job, to=Job.SETTLED, from_states=(Job.COMPLETED,), reason=reason, settled_at=now)
    _finalize_if_closing(row.deposit_id)


def refund_final(row: OutboxTx) -> None:
    deposit = Deposit.objects.get(pk=row.deposit_id)
    refunded = deposit.amount - deposit.paid if row.status == OutboxTx.COMMITTED else 0
    Deposit.objects.filter(pk=deposit.pk).update(
        state=Deposit.CLOSED,
        refunded=refunded,
        closed_at=timezone.now(),
        reason=(deposit.reason + f"; refunded {refunded} uait").strip("; ")[:300],
    )


# -- beat ---------------------------------------------------------------------------------------


def deposits_sweep(*, view: ChainView | None) -> None:
    """Pay aged charges; close deposits near their timeout; move closing ones along. Idempotent."""
    for deposit_id in (
        Job.objects.filter(deposit__isnull=False, state=Job.COMPLETED, payout__isnull=True, charge__gt=0)
        .values_list("deposit_id", flat=True)
        .distinct()
    ):
        with transaction.atomic():
            payout_batch(deposit_id=deposit_id)
    if view is not None:
        for deposit in Deposit.objects.filter(state=Deposit.OPEN):
            if view.height > accepts_jobs_until(deposit, view):
                close(deposit_id=deposit.pk, owner_id=None, reason="its escrow times out soon")
    for deposit_id in Deposit.objects.filter(state=Deposit.CLOSING).values_list("id", flat=True):
        with transaction.atomic():
            _finalize_if_closing(deposit_id)
