"""Building, signing and submitting transactions for a wallet key (no Django).

Shared by the CLI and the web service. A wallet signs only transactions it
builds itself from fields (``build_transaction``), never bytes handed to it.
"""

from __future__ import annotations

import time
from typing import Any

from chain.client import ChainClient
from chain.protocol.encoding import is_int
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key, decode_address
from chain.protocol.tx import TX_FIELDS, build_transaction, check_fields, tx_id
from wallet.errors import WalletError

UNSIGNED_FIELDS = TX_FIELDS - {"signature"}
FINAL_STATUSES = ("committed", "rejected")


def check_transfer(*, to: str, amount: Any, fee: Any = None, memo: str = "") -> None:
    """The checks a transfer can fail before anything is signed or sent."""
    decode_address(to)
    if not is_int(amount) or amount == 0:
        raise ProtocolError("malformed", "amount must be an integer number of uait, greater than 0")
    if fee is not None and not is_int(fee):
        raise ProtocolError("malformed", "fee must be an integer number of uait")
    if type(memo) is not str:
        raise ProtocolError("malformed", "memo must be a string")


def build_transfer(
    client: ChainClient,
    key: Key,
    *,
    to: str,
    amount: int,
    fee: int | None = None,
    memo: str = "",
    nonce: int | None = None,
) -> dict[str, Any]:
    """A signed transfer from ``key``: chain id and minimum fee from the node's status, nonce from its account."""
    check_transfer(to=to, amount=amount, fee=fee, memo=memo)
    status = client.status()
    if fee is None:
        fee = int(status["params"]["min_fee"])
    if nonce is None:
        # The account nonce counts committed transactions only: a second send while
        # one is pending gets "duplicate" from the node, which is the safe answer
        # (a retried request must not turn into a second payment).
        nonce = int(client.account(key.address)["nonce"])
    return build_transaction(
        key,
        chain_id=status["chain_id"],
        type="transfer",
        nonce=nonce,
        fee=fee,
        payload={"to": to, "amount": amount},
        memo=memo,
    )


def check_unsigned_fields(fields: Any, *, address: str, pubkey: str) -> dict[str, Any]:
    """Check transaction fields given to be signed by the wallet ``address``.

    ``from`` and ``pubkey`` may be left out (they are the wallet's); if given they
    must be this wallet's. A ``signature`` field is refused: the wallet signs
    what it rebuilds from the fields, not something already signed.
    """
    if not isinstance(fields, dict):
        raise ProtocolError("malformed", "a transaction is a JSON object")
    if "signature" in fields:
        raise WalletError("the transaction already has a signature; give its fields without one")
    if fields.get("from", address) != address:
        raise WalletError(f"the transaction is from {fields['from']!r}, not this wallet ({address})")
    if fields.get("pubkey", pubkey) != pubkey:
        raise WalletError("the transaction's pubkey is not this wallet's")
    complete = {"from": address, "pubkey": pubkey, "memo": ""} | fields
    unknown = sorted(complete.keys() - UNSIGNED_FIELDS)
    if unknown:
        raise ProtocolError("malformed", f"unknown transaction fields: {', '.join(unknown)}")
    # Types and payload before asking for a password; build_transaction checks again.
    check_fields(complete | {"signature": "00" * 64})
    return complete


def sign_fields(key: Key, fields: Any) -> dict[str, Any]:
    """The transaction ``fields`` describe, rebuilt and signed by ``key``."""
    complete = check_unsigned_fields(fields, address=key.address, pubkey=key.pubkey_hex)
    return build_transaction(
        key,
        chain_id=complete["chain_id"],
        type=complete["type"],
        nonce=complete["nonce"],
        fee=complete["fee"],
        payload=complete["payload"],
        memo=complete["memo"],
    )


def wait_for_transaction(
    client: ChainClient, tx: dict[str, Any] | str, *, timeout: float = 60.0, interval: float = 0.5
) -> dict[str, Any]:
    """Poll the node until the transaction is committed or rejected; its last answer.

    Raises ``TimeoutError`` if it is still pending (or unknown) after ``timeout``
    seconds. ``not_found`` is polled through: a node may store it a moment late.
    """
    ident = tx if isinstance(tx, str) else tx_id(tx)
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = client.transaction(ident)
        except ProtocolError as exc:
            if exc.code not in ("not_found", "rate_limited"):
                raise
            answer = {"id": ident, "status": "unknown"}
        if answer.get("status") in FINAL_STATUSES:
            return answer
        if time.monotonic() >= deadline:
            raise TimeoutError(f"transaction {ident} is still {answer.get('status')} after {timeout:g}s")
        time.sleep(interval)
