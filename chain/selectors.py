"""Reads of the ledger, shaped as the RPC answers them (``protocol.md``)."""

from __future__ import annotations

import json
from typing import Any

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
        "mempool_size": Transaction.objects.filter(status=Transaction.PENDING).count(),
        "total_supply": state.total_supply,
    }


def transaction_detail(tx_id: str) -> dict[str, Any]:
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
