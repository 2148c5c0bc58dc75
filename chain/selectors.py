"""Reads of the ledger, shaped as the RPC answers them (``protocol.md``)."""

from __future__ import annotations

import json
from typing import Any

from django.db.models import Q

from chain.mempool import Pending, mempool
from chain.models import Account, Block, ChainState, Escrow, Transaction
from chain.protocol.block import format_time_ms
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import decode_address
from chain.validators import validators_detail


def _time(moment) -> str:
    return format_time_ms(int(moment.timestamp() * 1000))


def status(state: ChainState, *, peers: list[dict] | None = None) -> dict[str, Any]:
    validators = validators_detail(state.height + 1)
    return {
        "chain_id": state.chain_id,
        "genesis_id": state.genesis_id,
        "height": state.height,
        "latest_block_id": state.latest_block_id,
        "latest_block_time": _time(state.latest_block_time),
        "params": state.params,
        "validators": validators,
        "peers": peers or [],
        "mempool_size": len(mempool),
        "total_supply": state.total_supply,
    }


def transaction_detail(tx_id: str) -> dict[str, Any]:
    # Pending first: a transaction dropped from a block (rejected, no height) may be pending again.
    entry = mempool.get(tx_id)
    if entry is not None:
        return {"id": tx_id, "status": Transaction.PENDING, "height": None, "tx": entry.tx.tx, "error": None}
    tx = Transaction.objects.filter(id=tx_id).first()
    if tx is None:
        raise ProtocolError("not_found", f"no transaction {tx_id}")
    error = {"code": tx.error_code, "message": tx.error_message} if tx.error_code else None
    return {"id": tx.id, "status": tx.status, "height": tx.height, "tx": json.loads(tx.body), "error": error}


def account_detail(address: str) -> dict[str, Any]:
    decode_address(address)
    row = Account.objects.filter(address=address).values_list("balance", "nonce").first()
    balance, nonce = row if row else (0, 0)
    return {"address": address, "balance": balance, "nonce": nonce}


def escrow_detail(escrow_id: str) -> dict[str, Any]:
    e = Escrow.objects.filter(id=escrow_id).first()
    if e is None:
        raise ProtocolError("not_found", f"no escrow {escrow_id}")
    return {
        "id": e.id,
        "job_id": e.job_id,
        "payer": e.payer,
        "arbiter": e.arbiter,
        "amount": e.amount,
        "paid": e.paid,
        "refunded": e.refunded,
        "remaining": e.remaining,
        "timeout_height": e.timeout_height,
        "status": e.status,
        "opened_height": e.opened_height,
        "closed_height": e.closed_height,
    }


def block_dict(block: Block) -> dict[str, Any]:
    return {
        "id": block.id,
        "height": block.height,
        "header": block.header,
        "time": _time(block.time),
        "tx_ids": block.tx_ids,
        "results": block.results,
        "commit": block.commit,
        "evidence": block.evidence,
    }


def block_detail(height: int) -> dict[str, Any]:
    block = Block.objects.filter(height=height).first()
    if block is None:
        raise ProtocolError("not_found", f"no block at height {height}")
    return block_dict(block)


def blocks_range(start: int, limit: int) -> list[dict[str, Any]]:
    return [block_dict(b) for b in Block.objects.filter(height__gte=start).order_by("height")[:limit]]


def block_full(block: Block) -> dict[str, Any]:
    """A block as nodes exchange it: ``{block: {header, txs, evidence}, commit}``."""
    bodies = dict(Transaction.objects.filter(id__in=block.tx_ids).values_list("id", "body"))
    return {
        "block": {
            "header": block.header,
            "txs": [json.loads(bodies[i]) for i in block.tx_ids],
            "evidence": block.evidence,
        },
        "commit": block.commit,
    }


def blocks_full_range(start: int, limit: int) -> list[dict[str, Any]]:
    return [block_full(b) for b in Block.objects.filter(height__gte=start).order_by("height")[:limit]]


# -- explorer reads (the dashboard's explorer asks the node for these over its RPC) -----------


def transaction_summary(tx: Transaction, block_times: dict[int, Any] | None = None) -> dict[str, Any]:
    """A transaction as the explorer lists it: who, what, how much, where it stands."""
    body = json.loads(tx.body)
    payload = body.get("payload") or {}
    moment = (block_times or {}).get(tx.height) if tx.height is not None else None
    return {
        "id": tx.id,
        "type": tx.type,
        "from": tx.sender,
        "to": payload.get("to") or payload.get("arbiter") or "",
        "amount": payload.get("amount"),
        "escrow": tx.escrow or (tx.id if tx.type == "escrow_lock" else ""),
        "fee": tx.fee,
        "nonce": tx.nonce,
        "memo": body.get("memo", ""),
        "status": tx.status,
        "height": tx.height,
        "time": _time(moment) if moment is not None else None,
        "error": {"code": tx.error_code, "message": tx.error_message} if tx.error_code else None,
    }


def _summaries(txs: list[Transaction]) -> list[dict[str, Any]]:
    heights = {tx.height for tx in txs if tx.height is not None}
    times = dict(Block.objects.filter(height__in=heights).values_list("height", "time"))
    return [transaction_summary(tx, times) for tx in txs]


def recent_transactions(limit: int = 25, *, scan_blocks: int = 500) -> list[dict[str, Any]]:
    """The newest committed transactions (newest block first), looking back at most ``scan_blocks`` blocks."""
    ids: list[str] = []
    for tx_ids in (
        Block.objects.filter(tx_count__gt=0).order_by("-height").values_list("tx_ids", flat=True)[:scan_blocks]
    ):
        ids.extend(reversed(tx_ids))
        if len(ids) >= limit:
            break
    ids = ids[:limit]
    rows = {tx.id: tx for tx in Transaction.objects.filter(id__in=ids)}
    return _summaries([rows[i] for i in ids if i in rows])


def _pending_row(entry: Pending) -> Transaction:
    """A pending transaction in the shape of a stored one (never saved)."""
    c = entry.tx
    return Transaction(
        id=c.id,
        seq=0,
        sender=c.sender,
        nonce=c.nonce,
        fee=c.fee,
        type=c.type,
        spend=c.spend,
        escrow=c.payload.get("escrow", ""),
        body=c.body,
        status=Transaction.PENDING,
        received_at=entry.received_at,
    )


def pending_transactions(limit: int = 25) -> list[dict[str, Any]]:
    """The mempool, oldest first."""
    return _summaries([_pending_row(entry) for entry in mempool.oldest(limit)])


def account_transactions(address: str, limit: int = 50) -> list[dict[str, Any]]:
    """Transactions sent by ``address`` or paying it (transfers and escrow payments), newest first.

    Received ones are found in the bodies, which scans the table: fine for an explorer
    page, not for a hot path (an index on the sender would not spare the scan, and would
    cost every admission and every block an index update per transaction).
    """
    decode_address(address)
    pending = [_pending_row(entry) for entry in mempool.involving(address, limit)]
    received = f'"to":"{address}"'
    shown = {tx.id for tx in pending}
    stored = Transaction.objects.filter(Q(sender=address) | Q(body__contains=received)).order_by("-seq")
    txs = pending + [tx for tx in stored[:limit] if tx.id not in shown]
    return _summaries(txs[:limit])


def escrow_list(*, payer: str | None = None, job_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Escrows, newest first, of one payer or one job label (or the newest of all)."""
    escrows = Escrow.objects.all()
    if payer:
        decode_address(payer)
        escrows = escrows.filter(payer=payer)
    if job_id:
        escrows = escrows.filter(job_id=job_id)
    ids = list(escrows.order_by("-opened_height", "id").values_list("id", flat=True)[:limit])
    return [escrow_detail(escrow_id) for escrow_id in ids]


def block_stats(state: ChainState, *, window_s: int = 3600, bucket_s: int = 60) -> dict[str, Any]:
    """Blocks and transactions per time bucket over the last ``window_s`` seconds.

    Only the blocks that can fall in the window are read (by height, the primary key):
    at most twice as many as the block time allows, so a stalled chain reads few.
    """
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    since = now - timedelta(seconds=window_s)
    block_ms = max(1, int(state.params.get("block_time_ms", 1000)))
    lookback = min(50_000, 2 * window_s * 1000 // block_ms + 10)
    rows = list(
        Block.objects.filter(height__gt=max(0, state.height - lookback), time__gte=since)
        .order_by("height")
        .values_list("height", "time", "tx_count")
    )
    count = max(1, window_s // bucket_s)
    buckets = [{"blocks": 0, "txs": 0, "interval_ms_sum": 0, "intervals": 0} for _ in range(count)]
    previous = None
    for height, moment, tx_count in rows:
        index = min(count - 1, int((moment - since).total_seconds() // bucket_s))
        bucket = buckets[index]
        bucket["blocks"] += 1
        bucket["txs"] += tx_count
        if previous is not None and previous[0] == height - 1:
            bucket["interval_ms_sum"] += int((moment - previous[1]).total_seconds() * 1000)
            bucket["intervals"] += 1
        previous = (height, moment)
    out = []
    for index, bucket in enumerate(buckets):
        start = since + timedelta(seconds=index * bucket_s)
        out.append(
            {
                "start": _time(start),
                "blocks": bucket["blocks"],
                "txs": bucket["txs"],
                "tx_per_s": round(bucket["txs"] / bucket_s, 3),
                "interval_ms": round(bucket["interval_ms_sum"] / bucket["intervals"]) if bucket["intervals"] else None,
            }
        )
    last_minute = [r for r in rows if (now - r[1]).total_seconds() <= 60]
    return {
        "height": state.height,
        "window_s": window_s,
        "bucket_s": bucket_s,
        "buckets": out,
        "blocks": len(rows),
        "txs": sum(r[2] for r in rows),
        "tx_per_s_last_minute": round(sum(r[2] for r in last_minute) / 60, 3),
        "block_time_ms": block_ms,
    }


def explorer_search(query: str) -> dict[str, Any] | None:
    """What ``query`` names on this chain: ``{"kind", ...}`` or None.

    A height, a transaction id (an escrow's id is its lock transaction's), a block id,
    an address, or an escrow's job label.
    """
    query = query.strip()
    if not query:
        return None
    if query.isdigit() and len(query) <= 16:
        height = int(query)
        return {"kind": "block", "height": height} if Block.objects.filter(height=height).exists() else None
    if len(query) == 64 and all(c in "0123456789abcdef" for c in query.lower()):
        ident = query.lower()
        if ident in mempool:
            return {"kind": "transaction", "id": ident, "height": None}
        tx_height = Transaction.objects.filter(id=ident).values_list("height", flat=True).first()
        if tx_height is not None or Transaction.objects.filter(id=ident).exists():
            return {"kind": "transaction", "id": ident, "height": tx_height}
        height = Block.objects.filter(id=ident).values_list("height", flat=True).first()
        if height is not None:
            return {"kind": "block", "height": height}
        return None
    if query.startswith("ait1"):
        try:
            decode_address(query)
        except ProtocolError:
            return None
        return {"kind": "account", "address": query}
    escrow = Escrow.objects.filter(job_id=query).order_by("-opened_height").values_list("id", flat=True).first()
    if escrow is not None:
        return {"kind": "escrow", "id": escrow, "job_id": query}
    return None
