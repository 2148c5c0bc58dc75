"""Checking the escrows clients bring, and signing them for custodial wallets.

An escrow that pays for a job or a deposit must name the coordinator as its arbiter,
hold at least what it must cover, and time out late enough for the work and its
settlement (``chain.required_escrow_blocks``): a client must never be able to take the
money back while a provider is still owed.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Max

from aitbc_site.errors import ApiError
from chain.client import ChainClient
from chain.protocol.errors import HTTP_STATUS, ProtocolError
from chain.protocol.tx import Transaction, check_transaction
from marketplace.chain import ChainView, blocks_for
from marketplace.keys import coordinator_address
from marketplace.models import OutboxTx


def check_escrow_lock(tx: Any, *, view: ChainView, min_amount: int, min_blocks: int) -> Transaction:
    """Every check of a client's signed escrow_lock that can be made before the node sees it."""
    checked = check_transaction(tx, chain_id=view.chain_id, min_fee=view.min_fee)
    if checked.type != "escrow_lock":
        raise ProtocolError("malformed", f"payment must be an escrow_lock, not a {checked.type}")
    payload = checked.payload
    if payload["arbiter"] != coordinator_address():
        raise ApiError(
            f"the escrow's arbiter must be the coordinator {coordinator_address()} (GET /v1/coordinator)",
            code="wrong_arbiter",
        )
    if payload["amount"] < min_amount:
        raise ApiError(f"the escrow holds {payload['amount']} uait, less than {min_amount}", code="escrow_too_small")
    earliest = view.height + min_blocks
    if payload["timeout_height"] < earliest:
        raise ProtocolError(
            "timeout_too_short",
            f"timeout_height must be at least {earliest} (height {view.height} + {min_blocks} blocks "
            "for the work and its settlement)",
        )
    return checked


def next_payer_nonce(address: str, client: ChainClient) -> int:
    """The nonce for a new transaction of ``address``: past its committed ones and those we hold for it."""
    nonce = int(client.account(address)["nonce"])
    pending = OutboxTx.objects.filter(
        own=False, sender=address, status__in=(OutboxTx.QUEUED, OutboxTx.SUBMITTED)
    ).aggregate(m=Max("nonce"))["m"]
    return max(nonce, pending + 1) if pending is not None else nonce


def sign_escrow_lock_with_wallet(
    *,
    owner: AbstractBaseUser,
    address: str,
    password: str,
    amount: int,
    label: str,
    timeout_blocks: int,
    view: ChainView,
    client: ChainClient,
) -> dict[str, Any]:
    """An escrow_lock from the user's stored wallet, signed with its password (custodial payment).

    The wallet builds and signs the transaction from fields (``wallet.signing.sign_fields``);
    the key is derived outside any database transaction (Argon2id takes a while).
    """
    from wallet import selectors as wallet_selectors
    from wallet import services as wallet_services
    from wallet.signing import sign_fields

    wallet = wallet_selectors.wallet_get(owner=owner, address=address)
    key = wallet_services.wallet_unlock(wallet=wallet, password=password)
    # A few blocks of slack: the lock is admitted and included a moment after the height read here.
    timeout_height = view.height + timeout_blocks + max(10, blocks_for(30, view))
    fields = {
        "chain_id": view.chain_id,
        "type": "escrow_lock",
        "nonce": next_payer_nonce(address, client),
        "fee": view.min_fee,
        "payload": {
            "job_id": label,
            "amount": amount,
            "arbiter": coordinator_address(),
            "timeout_height": timeout_height,
        },
    }
    return sign_fields(key, fields)


def refusal(row: OutboxTx, what: str) -> Exception:
    """The error answering a client whose escrow_lock the node refused for good."""
    message = f"the node refused the escrow: {row.error_message or row.error_code} ({what})"
    if row.error_code in HTTP_STATUS:
        return ProtocolError(row.error_code, message)
    return ApiError(message, code=row.error_code or "refused", status=409)
