"""The explorer's pages: blocks, transactions, accounts and escrows, read from the node.

Server-rendered behind login; each page's live parts are fragments that
``live.js`` refreshes when a block arrives (``aitbc_site.pages``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse

from aitbc_site.pages import Fragment, render_page
from chain import dashboard
from chain.protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

BLOCKS_PER_PAGE = 20
MAX_BLOCK_TXS_SHOWN = 200
NODE_DOWN = "the chain node cannot be reached right now"


def node_read(fn, **fallback: Any) -> dict[str, Any]:
    """``fn()``'s context, or ``fallback`` with ``node_error`` when the node is unreachable."""
    try:
        return fn()
    except dashboard.NodeUnavailable as exc:
        logger.warning("dashboard: %s", exc)
        return {"node_error": NODE_DOWN, **fallback}


def _not_found(exc: ProtocolError) -> Http404:
    return Http404(exc.message)


def _blocks(before: int | None) -> dict[str, Any]:
    status = dashboard.status()
    head = status["height"]
    top = min(head, before - 1) if before else head
    start = max(1, top - BLOCKS_PER_PAGE + 1)
    blocks = dashboard.call(lambda c: c.blocks(start, BLOCKS_PER_PAGE)) if top >= 1 else []
    rows = [
        {
            "height": b["height"],
            "id": b["id"],
            "time": b["time"],
            "txs": len(b["tx_ids"]),
            "rejected": len(b.get("results") or {}),
            "proposer": b["header"].get("proposer", ""),
        }
        for b in reversed(blocks)
    ]
    return {"status": status, "blocks": rows, "older": start - 1 if start > 1 else None, "paged": bool(before)}


@login_required
def explorer(request: HttpRequest) -> HttpResponse:
    before = request.GET.get("before")
    before_height = int(before) if before and before.isdigit() else None
    return render_page(
        request,
        "chain/explorer.html",
        {
            "blocks": Fragment("chain/_blocks.html", lambda: node_read(lambda: _blocks(before_height), blocks=[])),
            "transactions": Fragment(
                "chain/_transactions.html",
                lambda: node_read(
                    lambda: {
                        "transactions": dashboard.call(lambda c: c.recent_transactions(25)),
                        "pending": dashboard.call(lambda c: c.recent_transactions(25, pending=True)),
                    },
                    transactions=[],
                    pending=[],
                ),
            ),
            "escrows": Fragment(
                "chain/_escrows.html",
                lambda: node_read(lambda: {"escrows": dashboard.call(lambda c: c.escrow_list(limit=20))}, escrows=[]),
            ),
        },
        {"nav": "explorer"},
    )


@login_required
def block(request: HttpRequest, height: int) -> HttpResponse:
    def build() -> dict[str, Any]:
        try:
            detail = dashboard.call(lambda c: c.block(height))
        except ProtocolError as exc:
            raise _not_found(exc) from exc
        [full] = dashboard.call(lambda c: c.blocks_full(height, 1)) or [None]
        bodies = full["block"]["txs"] if full else []
        results = detail.get("results") or {}
        txs = []
        for tx_id, body in list(zip(detail["tx_ids"], bodies, strict=False))[:MAX_BLOCK_TXS_SHOWN]:
            payload = body.get("payload") or {}
            txs.append(
                {
                    "id": tx_id,
                    "type": body.get("type"),
                    "from": body.get("from"),
                    "to": payload.get("to") or payload.get("arbiter") or "",
                    "amount": payload.get("amount"),
                    "fee": body.get("fee"),
                    "error": results.get(tx_id),
                }
            )
        head = dashboard.status()["height"]
        return {
            "block": detail,
            "header": detail["header"],
            "txs": txs,
            "tx_total": len(detail["tx_ids"]),
            "signatures": len((detail.get("commit") or {}).get("signatures") or []),
            "confirmations": head - height,
            "next_height": height + 1 if height < head else None,
        }

    return render_page(
        request,
        "chain/block.html",
        {"block": Fragment("chain/_block.html", lambda: node_read(build))},
        {"nav": "explorer", "height": height},
    )


@login_required
def transaction(request: HttpRequest, tx_id: str) -> HttpResponse:
    def build() -> dict[str, Any]:
        try:
            detail = dashboard.call(lambda c: c.transaction(tx_id))
        except ProtocolError as exc:
            raise _not_found(exc) from exc
        tx = detail["tx"]
        return {"tx": detail, "body": tx, "payload": tx.get("payload") or {}}

    return render_page(
        request,
        "chain/transaction.html",
        {"tx": Fragment("chain/_transaction.html", lambda: node_read(build))},
        {"nav": "explorer", "tx_id": tx_id},
    )


@login_required
def account(request: HttpRequest, address: str) -> HttpResponse:
    def build() -> dict[str, Any]:
        try:
            detail = dashboard.call(lambda c: c.account(address))
            txs = dashboard.call(lambda c: c.account_transactions(address, 50))
            escrows = dashboard.call(lambda c: c.escrow_list(payer=address, limit=20))
        except ProtocolError as exc:
            raise _not_found(exc) from exc
        return {"account": detail, "transactions": txs, "escrows": escrows, "address": address}

    return render_page(
        request,
        "chain/account.html",
        {"account": Fragment("chain/_account.html", lambda: node_read(build))},
        {"nav": "explorer", "address": address},
    )


@login_required
def escrow(request: HttpRequest, escrow_id: str) -> HttpResponse:
    def build() -> dict[str, Any]:
        try:
            detail = dashboard.call(lambda c: c.escrow(escrow_id))
        except ProtocolError as exc:
            raise _not_found(exc) from exc
        return {"escrow": detail}

    return render_page(
        request,
        "chain/escrow.html",
        {"escrow": Fragment("chain/_escrow.html", lambda: node_read(build))},
        {"nav": "explorer", "escrow_id": escrow_id},
    )
