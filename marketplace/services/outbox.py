"""The outbox: every transaction the coordinator sends to the chain, tracked until final.

Rows are written in the same database transaction as the decision they carry out (a
job's pay, a deposit's refund), so a decision is never lost and never sent twice: one
row per (job, purpose) and (deposit, purpose), and one escrow per lock.

What became final is learned by reading the new blocks (one request per pass, whatever
the number in flight); a transaction no block has shown for ``conf.TRACK_FALLBACK_S``
is asked about directly.

The coordinator's own transactions get their nonce when the row is created, under the
row lock of its ``CoordinatorAccount``: nonce order is the order of decisions. They are
signed when first sent (the chain id and fee come from the node then) and sent in nonce
order, at most the node's window ahead of the account nonce. ``outbox_process`` is safe
to run twice at once: every status change is a conditional UPDATE on the row's status
and transaction id, and submitting the same signed bytes twice is ``duplicate``.

Recovery, each without any risk of a second payment:
- dropped from a block (the sender could not pay the fee) or unknown to the node: the
  same signed bytes are sent again (same id: it can only ever be included once);
- ``bad_nonce`` below the account nonce (another transaction used that nonce): that
  version can never be included, so the row gets a fresh nonce and a new signature;
- refused at admission for good (``escrow_closed``, ...): the row fails, and a 1 uait
  transfer to itself takes its nonce so the transactions after it are not stuck.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from chain.client import ChainClient, ChainUnavailable
from chain.protocol.errors import ProtocolError
from chain.protocol.tx import NONCE_WINDOW, build_transaction, tx_id
from marketplace import chain, conf, kicks
from marketplace.keys import coordinator_address, coordinator_key
from marketplace.models import CoordinatorAccount, Deposit, DepositPayout, Job, OutboxCursor, OutboxTx

logger = logging.getLogger("aitbc.marketplace.outbox")

# Refusals that say "not now" rather than "never": the row waits and is sent again.
_RETRY_OWN = frozenset({"insufficient_funds", "mempool_full", "rate_limited", "bad_nonce", "duplicate"})
_RETRY_FOREIGN = frozenset({"mempool_full", "rate_limited"})
_BLOCKS_PER_READ = 200


@dataclass
class OutboxReport:
    submitted: int = 0
    committed: int = 0
    rejected: int = 0
    failed: int = 0
    requeued: int = 0
    renumbered: int = 0
    in_flight: int = 0


# -- writing rows (inside the caller's transaction) ------------------------------------------


def enqueue_own(
    *,
    purpose: str,
    kind: str,
    payload: dict[str, Any],
    job: Job | None = None,
    deposit: Deposit | None = None,
    payout: DepositPayout | None = None,
) -> OutboxTx:
    """Queue a transaction the coordinator signs, with the next nonce of its account.

    The caller is inside ``transaction.atomic`` and holds its deposit and job locks
    already: the account row is locked last (``models``' lock order).
    """
    address = coordinator_address()
    CoordinatorAccount.objects.get_or_create(address=address)
    account = CoordinatorAccount.objects.select_for_update().get(address=address)
    nonce = account.next_nonce
    CoordinatorAccount.objects.filter(address=address).update(next_nonce=F("next_nonce") + 1)
    row = OutboxTx.objects.create(
        purpose=purpose,
        kind=kind,
        job=job,
        deposit=deposit,
        payout=payout,
        sender=address,
        own=True,
        nonce=nonce,
        payload=payload,
    )
    kicks.outbox()
    return row


def enqueue_own_once(
    *, purpose: str, job: Job | None = None, deposit: Deposit | None = None, **kwargs: Any
) -> OutboxTx:
    """``enqueue_own`` unless that job's or deposit's row for ``purpose`` exists; the row either way."""
    existing = OutboxTx.objects.filter(purpose=purpose, job=job, deposit=deposit).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():
            return enqueue_own(purpose=purpose, job=job, deposit=deposit, **kwargs)
    except IntegrityError:
        # Another writer queued it first; the unique constraint keeps it to one.
        return OutboxTx.objects.get(purpose=purpose, job=job, deposit=deposit)


def enqueue_foreign(
    *, purpose: str, tx: dict[str, Any], job: Job | None = None, deposit: Deposit | None = None
) -> OutboxTx:
    """Queue a transaction a client signed (an escrow_lock), to be sent as it is."""
    row = OutboxTx.objects.create(
        purpose=purpose,
        kind=tx["type"],
        job=job,
        deposit=deposit,
        sender=tx["from"],
        own=False,
        nonce=tx["nonce"],
        payload=tx["payload"],
        tx=tx,
        tx_id=tx_id(tx),
    )
    kicks.outbox()
    return row


# -- processing ----------------------------------------------------------------------------


def outbox_process(*, client: ChainClient | None = None) -> OutboxReport:
    """One pass: learn what became final, repair nonces, sign, send. Idempotent."""
    client = client or chain.get_chain_client()
    report = OutboxReport()
    # Read before looking for rows in flight, and usually a status read already (a busy pass,
    # the sweep, a job): beat's idle pass every second then costs the node nothing.
    known = chain.chain_view(client, max_age=conf.OUTBOX_IDLE_STATUS_MAX_AGE_S)
    if not OutboxTx.objects.filter(status__in=(OutboxTx.QUEUED, OutboxTx.SUBMITTED)).exists():
        # Nothing in flight (beat's usual pass): the blocks up to that height cannot hold a row
        # sent after it was read, so reading starts past them. A row queued meanwhile waits a pass.
        OutboxCursor.objects.filter(singleton=1, height__lt=known.height).update(height=known.height)
        return report
    view = chain.chain_view(client, max_age=0)
    key = coordinator_key()
    own_nonce = int(client.account(key.address)["nonce"])
    _track(client, own_nonce, view, report)
    _resync(client, key.address, own_nonce, report)
    _sign(key, view)
    _submit(client, key.address, own_nonce, report)
    report.in_flight = OutboxTx.objects.filter(status__in=(OutboxTx.QUEUED, OutboxTx.SUBMITTED)).count()
    return report


def submit_now(row_id: int, *, client: ChainClient | None = None) -> OutboxTx:
    """Send one client-signed row right away (a job or deposit request waits for the node's answer).

    A refusal for good fails the row (and its job or deposit) before this returns; the
    node being unreachable leaves it queued for the outbox task.
    """
    client = client or chain.get_chain_client()
    row = OutboxTx.objects.get(pk=row_id)
    if row.own or row.status != OutboxTx.QUEUED:
        return row
    try:
        # Blocks from here on are read for it (see _scan_blocks): start reading before it can be in one.
        OutboxCursor.objects.get_or_create(singleton=1, defaults={"height": chain.chain_view(client).height})
        [result] = client.submit_batch([row.tx])
    except (ChainUnavailable, ProtocolError) as exc:
        logger.warning("could not send %s now (%s); the outbox will retry", row.tx_id, exc)
        return row
    if "id" in result:
        _mark_submitted(row)
    else:
        _refused(client, row, result.get("error") or {}, None)
    row.refresh_from_db()
    return row


def _track(client: ChainClient, own_nonce: int, view: chain.ChainView, report: OutboxReport) -> None:
    _scan_blocks(client, view.height, report)
    # Rows no block has shown for a while (dropped, lost, or waiting behind a gap), and the
    # coordinator's rows below its account nonce, which must be final by now.
    cutoff = timezone.now() - timedelta(seconds=conf.TRACK_FALLBACK_S)
    rows = list(
        OutboxTx.objects.filter(status=OutboxTx.SUBMITTED)
        .filter(Q(submitted_at__lte=cutoff) | Q(own=True, nonce__lt=own_nonce))
        .order_by("submitted_at", "id")[: conf.OUTBOX_TRACK_LIMIT]
    )
    for row in rows:
        try:
            answer = client.transaction(row.tx_id)
        except ProtocolError as exc:
            if exc.code != "not_found":
                continue
            answer = None
        if answer is None:
            _requeue(row, "unknown to the node: sending it again", report)
        elif answer["status"] == "committed" or (answer["status"] == "rejected" and answer.get("height") is not None):
            _finish(row, answer, report, from_status=OutboxTx.SUBMITTED)
        elif answer["status"] == "rejected":
            error = answer.get("error") or {}
            if error.get("code") == "bad_nonce" and not row.own:
                _fail(row, error, report, from_status=OutboxTx.SUBMITTED)
            else:
                # Dropped before inclusion (fee unaffordable, or its nonce taken): the same bytes
                # again, or a fresh nonce from _resync when that one is gone.
                _requeue(row, f"dropped by the node ({error.get('code', '?')}): sending it again", report)


def _scan_blocks(client: ChainClient, height: int, report: OutboxReport) -> None:
    cursor, created = OutboxCursor.objects.get_or_create(singleton=1, defaults={"height": height})
    if created:
        return  # nothing was sent before this height
    if cursor.height > height:
        # The chain is shorter than what was read: a new chain under the same database.
        logger.warning("outbox: the chain is at height %d, below the %d already read", height, cursor.height)
        OutboxCursor.objects.filter(singleton=1).update(height=height)
        return
    start = cursor.height + 1
    while start <= height:
        blocks = client.blocks(start, _BLOCKS_PER_READ)
        if not blocks:
            return
        included: dict[str, tuple[int, str | None]] = {}
        for block in blocks:
            results = block.get("results") or {}
            for included_id in block["tx_ids"]:
                included[included_id] = (block["height"], results.get(included_id))
        ids = list(included)
        for chunk in range(0, len(ids), 500):
            rows = OutboxTx.objects.filter(
                tx_id__in=ids[chunk : chunk + 500], status__in=(OutboxTx.SUBMITTED, OutboxTx.QUEUED)
            )
            for row in rows:
                block_height, code = included[row.tx_id]
                answer = {
                    "status": "rejected" if code else "committed",
                    "height": block_height,
                    "error": {"code": code, "message": "rejected in its block"} if code else None,
                }
                _finish(row, answer, report, from_status=row.status)
        last = blocks[-1]["height"]
        # Two workers may read the same blocks: finishing is conditional, and the cursor only moves up.
        OutboxCursor.objects.filter(singleton=1, height__lt=last).update(height=last)
        start = last + 1


def _resync(client: ChainClient, address: str, own_nonce: int, report: OutboxReport) -> None:
    with transaction.atomic():
        CoordinatorAccount.objects.get_or_create(address=address)
        # Never allocate a nonce the chain has used already (a new database, a restored backup).
        CoordinatorAccount.objects.select_for_update().filter(address=address, next_nonce__lt=own_nonce).update(
            next_nonce=own_nonce
        )
    stale = list(
        OutboxTx.objects.filter(own=True, sender=address, status=OutboxTx.QUEUED, nonce__lt=own_nonce).order_by("nonce")
    )
    renumber = []
    for row in stale:
        if row.tx_id:
            try:
                answer = client.transaction(row.tx_id)
            except ProtocolError:
                answer = None
            if answer and answer.get("height") is not None:
                _finish(row, answer, report, from_status=OutboxTx.QUEUED)
                continue
        renumber.append(row)
    if not renumber:
        return
    with transaction.atomic():
        account = CoordinatorAccount.objects.select_for_update().get(address=address)
        next_nonce = max(account.next_nonce, own_nonce)
        for row in renumber:
            # Allocation and the row's change in one transaction under the account lock: a
            # nonce is used only if the row really takes it, so no gap is left behind.
            moved = OutboxTx.objects.filter(pk=row.pk, status=OutboxTx.QUEUED, nonce=row.nonce).update(
                nonce=next_nonce, tx=None, tx_id=""
            )
            if moved:
                logger.warning("outbox row %s: nonce %d was used elsewhere; now %d", row.pk, row.nonce, next_nonce)
                next_nonce += 1
                report.renumbered += 1
        CoordinatorAccount.objects.filter(address=address).update(next_nonce=next_nonce)


def _sign(key, view: chain.ChainView) -> None:
    rows = OutboxTx.objects.filter(own=True, status=OutboxTx.QUEUED, tx__isnull=True).order_by("nonce")
    for row in rows[: conf.OUTBOX_BATCH]:
        tx = build_transaction(
            key, chain_id=view.chain_id, type=row.kind, nonce=row.nonce, fee=view.min_fee, payload=row.payload
        )
        # Ed25519 signatures are deterministic: two workers signing one row write the same bytes.
        OutboxTx.objects.filter(pk=row.pk, status=OutboxTx.QUEUED, nonce=row.nonce, tx__isnull=True).update(
            tx=tx, tx_id=tx_id(tx)
        )


def _submit(client: ChainClient, address: str, own_nonce: int, report: OutboxReport) -> None:
    own = list(
        OutboxTx.objects.filter(
            own=True,
            sender=address,
            status=OutboxTx.QUEUED,
            tx__isnull=False,
            nonce__gte=own_nonce,
            nonce__lte=own_nonce + NONCE_WINDOW,
        ).order_by("nonce")[: conf.OUTBOX_BATCH]
    )
    foreign = list(OutboxTx.objects.filter(own=False, status=OutboxTx.QUEUED).order_by("id")[: conf.OUTBOX_BATCH])
    rows = own + foreign
    if not rows:
        return
    results = client.submit_batch([row.tx for row in rows])
    for row, result in zip(rows, results, strict=True):
        if "id" in result:
            if _mark_submitted(row):
                report.submitted += 1
        else:
            _refused(client, row, result.get("error") or {}, report)


def _refused(client: ChainClient, row: OutboxTx, error: dict[str, Any], report: OutboxReport | None) -> None:
    code = error.get("code", "")
    report = report or OutboxReport()
    if code == "duplicate":
        # The same bytes are known already (another worker sent them): track them from here.
        try:
            client.transaction(row.tx_id)
        except ProtocolError:
            if row.own:
                logger.error("outbox row %s: another transaction holds nonce %d (two coordinators?)", row.pk, row.nonce)
                return
            _fail(row, error, report, from_status=OutboxTx.QUEUED)
            return
        _mark_submitted(row)
        return
    if row.own and code in _RETRY_OWN:
        if code == "insufficient_funds":
            logger.warning("the coordinator %s cannot pay the fee of %s; fund it", row.sender, row.tx_id)
        return
    if not row.own and code in _RETRY_FOREIGN:
        return
    _fail(row, error, report, from_status=OutboxTx.QUEUED)


def _mark_submitted(row: OutboxTx) -> bool:
    return bool(
        OutboxTx.objects.filter(pk=row.pk, status=OutboxTx.QUEUED, tx_id=row.tx_id).update(
            status=OutboxTx.SUBMITTED, submitted_at=timezone.now(), attempts=F("attempts") + 1
        )
    )


def _requeue(row: OutboxTx, why: str, report: OutboxReport) -> None:
    if OutboxTx.objects.filter(pk=row.pk, status=OutboxTx.SUBMITTED, tx_id=row.tx_id).update(
        status=OutboxTx.QUEUED, error_message=why[:300]
    ):
        logger.info("outbox row %s (%s): %s", row.pk, row.tx_id, why)
        report.requeued += 1


def _lock_owner(row: OutboxTx) -> None:
    # Models' lock order: the deposit, then the job, then the coordinator's account (which
    # the consequences may allocate from, and which _resync holds while it changes rows),
    # all before the row itself changes.
    deposit_id = row.deposit_id or (
        Job.objects.filter(pk=row.job_id).values_list("deposit_id", flat=True).first() if row.job_id else None
    )
    if deposit_id:
        list(Deposit.objects.select_for_update().filter(pk=deposit_id))
    if row.job_id:
        list(Job.objects.select_for_update().filter(pk=row.job_id))
    list(CoordinatorAccount.objects.select_for_update().filter(address=coordinator_address()))


def _finish(row: OutboxTx, answer: dict[str, Any], report: OutboxReport, *, from_status: str) -> None:
    from marketplace.services.settlement import on_tx_final

    committed = answer["status"] == "committed"
    error = answer.get("error") or {}
    with transaction.atomic():
        _lock_owner(row)
        changed = OutboxTx.objects.filter(pk=row.pk, status=from_status, tx_id=row.tx_id).update(
            status=OutboxTx.COMMITTED if committed else OutboxTx.REJECTED,
            height=answer.get("height"),
            error_code=str(error.get("code", ""))[:32],
            error_message=str(error.get("message", ""))[:300],
            finished_at=timezone.now(),
        )
        if not changed:
            return
        row.refresh_from_db()
        on_tx_final(row)
    if committed:
        report.committed += 1
    else:
        report.rejected += 1


def _fail(row: OutboxTx, error: dict[str, Any], report: OutboxReport, *, from_status: str) -> None:
    from marketplace.services.settlement import on_tx_final

    code = str(error.get("code", "refused"))[:32]
    logger.warning("outbox row %s (%s %s) refused: %s %s", row.pk, row.purpose, row.tx_id, code, error.get("message"))
    with transaction.atomic():
        _lock_owner(row)
        changed = OutboxTx.objects.filter(pk=row.pk, status=from_status, tx_id=row.tx_id).update(
            status=OutboxTx.FAILED,
            error_code=code,
            error_message=str(error.get("message", ""))[:300],
            finished_at=timezone.now(),
        )
        if not changed:
            return
        row.refresh_from_db()
        if row.own:
            # Never admitted, so its nonce is still free: fill it, or every later transaction waits.
            OutboxTx.objects.create(
                purpose=OutboxTx.NONCE_FILL,
                kind="transfer",
                sender=row.sender,
                own=True,
                nonce=row.nonce,
                payload={"to": row.sender, "amount": 1},
            )
            kicks.outbox()
        on_tx_final(row)
    report.failed += 1
