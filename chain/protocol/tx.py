"""Transactions: building, signing, ids and stateless checks (``protocol.md``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from chain.protocol.encoding import canonical_json, is_hex, is_int
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import DOMAIN_TX, Key, address_from_pubkey_hex, decode_address, verify

TX_FIELDS = frozenset({"chain_id", "type", "from", "pubkey", "nonce", "fee", "payload", "memo", "signature"})
PAYLOAD_FIELDS: dict[str, frozenset[str]] = {
    "transfer": frozenset({"to", "amount"}),
    "escrow_lock": frozenset({"job_id", "amount", "arbiter", "timeout_height"}),
    "escrow_pay": frozenset({"escrow", "to", "amount"}),
    "escrow_refund": frozenset({"escrow"}),
    "validator_update": frozenset({"validator", "pubkey", "power"}),
}
MAX_MEMO_BYTES = 256
NONCE_WINDOW = 63
JOB_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction that passed the stateless checks; ``tx`` is its wire form."""

    id: str
    tx: dict[str, Any]
    signed_bytes: bytes
    sender: str
    nonce: int
    fee: int
    type: str
    payload: dict[str, Any]

    @property
    def body(self) -> str:
        """The canonical JSON of the whole transaction, signature included."""
        unsigned_json = self.signed_bytes[len(DOMAIN_TX) :].decode("utf-8")
        # "signature" sorts just before "type", the last top-level key; the text
        # ',"type":' cannot occur inside a JSON string, whose quotes are escaped.
        cut = unsigned_json.rfind(',"type":')
        return f'{unsigned_json[:cut]},"signature":"{self.tx["signature"]}"{unsigned_json[cut:]}'

    @property
    def spend(self) -> int:
        return spend_of(self.type, self.fee, self.payload)


def spend_of(kind: str, fee: int, payload: dict[str, Any]) -> int:
    """What the sender's balance must cover: the fee and what the type moves."""
    if kind in ("transfer", "escrow_lock"):
        return fee + payload["amount"]
    return fee


def unsigned(tx: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tx.items() if k != "signature"}


def sign_bytes(tx: dict[str, Any]) -> bytes:
    """``aitbc/tx/v1\\x00`` + canonical JSON of the transaction without ``signature``."""
    return DOMAIN_TX + canonical_json(unsigned(tx))


def checked_sign_bytes(tx: dict[str, Any]) -> bytes:
    """``sign_bytes`` of a transaction that passed ``check_fields``, written out directly.

    Its fields are then known: strings, and integers that are exactly ``int``, so the
    canonical JSON needs no general encoder (which sorts and type-dispatches every
    value, at twice the cost). Equal to ``sign_bytes`` for every such transaction.
    """
    q = encode_basestring
    payload = ",".join([f'"{k}":{q(v) if type(v) is str else v}' for k, v in sorted(tx["payload"].items())])
    text = (
        f'{{"chain_id":{q(tx["chain_id"])},"fee":{tx["fee"]},"from":{q(tx["from"])},"memo":{q(tx["memo"])},'
        f'"nonce":{tx["nonce"]},"payload":{{{payload}}},"pubkey":{q(tx["pubkey"])},"type":{q(tx["type"])}}}'
    )
    return DOMAIN_TX + text.encode("utf-8")


def tx_id_of(signed_bytes: bytes) -> str:
    return hashlib.sha256(signed_bytes).hexdigest()


def tx_id(tx: dict[str, Any]) -> str:
    return tx_id_of(sign_bytes(tx))


def build_transaction(
    key: Key,
    *,
    chain_id: str,
    type: str,
    nonce: int,
    fee: int,
    payload: dict[str, Any],
    memo: str = "",
) -> dict[str, Any]:
    """A signed transaction built here from its fields (never from foreign bytes)."""
    tx = {
        "chain_id": chain_id,
        "type": type,
        "from": key.address,
        "pubkey": key.pubkey_hex,
        "nonce": nonce,
        "fee": fee,
        "payload": dict(payload),
        "memo": memo,
    }
    check_fields(tx | {"signature": "00" * 64})
    tx["signature"] = key.sign(DOMAIN_TX, canonical_json(tx)).hex()
    return tx


def _malformed(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


def _amount(payload: dict, name: str = "amount") -> None:
    value = payload[name]
    if not is_int(value):
        raise _malformed(f"payload.{name} must be an integer in [0, 2^53 - 1]")
    if value == 0:
        raise _malformed(f"payload.{name} must be greater than 0")


def check_fields(tx: Any) -> None:
    """Exactly the nine fields with the right types, and the type's payload fields."""
    if not isinstance(tx, dict):
        raise _malformed("a transaction is a JSON object")
    keys = tx.keys()
    if keys != TX_FIELDS:
        missing = sorted(TX_FIELDS - keys)
        extra = sorted(keys - TX_FIELDS)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if extra:
            parts.append("unknown " + ", ".join(extra))
        raise _malformed("transaction fields: " + "; ".join(parts))
    if type(tx["chain_id"]) is not str or not tx["chain_id"]:
        raise _malformed("chain_id must be a non-empty string")
    kind = tx["type"]
    if type(kind) is not str or kind not in PAYLOAD_FIELDS:
        raise _malformed(f"unknown transaction type {kind!r}" if type(kind) is str else "type must be a string")
    if not is_hex(tx["pubkey"], 32):
        raise _malformed("pubkey must be 32 bytes of lowercase hex")
    if not is_hex(tx["signature"], 64):
        raise _malformed("signature must be 64 bytes of lowercase hex")
    for name in ("nonce", "fee"):
        if not is_int(tx[name]):
            raise _malformed(f"{name} must be an integer in [0, 2^53 - 1]")
    memo = tx["memo"]
    if type(memo) is not str:
        raise _malformed("memo must be a string")
    # Up to 64 characters cannot exceed 256 bytes, so most memos skip the encode.
    if len(memo) > MAX_MEMO_BYTES // 4 and len(memo.encode("utf-8")) > MAX_MEMO_BYTES:
        raise _malformed(f"memo is longer than {MAX_MEMO_BYTES} UTF-8 bytes")
    payload = tx["payload"]
    if not isinstance(payload, dict):
        raise _malformed("payload must be a JSON object")
    expected = PAYLOAD_FIELDS[kind]
    if payload.keys() != expected:
        raise _malformed(f"payload of {kind} must have exactly the fields {', '.join(sorted(expected))}")
    if type(tx["from"]) is not str:
        raise _malformed("from must be a string")
    if kind == "transfer":
        _amount(payload)
        if type(payload["to"]) is not str:
            raise _malformed("payload.to must be a string")
    elif kind == "escrow_lock":
        _amount(payload)
        job_id = payload["job_id"]
        if type(job_id) is not str or not JOB_ID.fullmatch(job_id):
            raise _malformed("payload.job_id must be 1-64 characters of [A-Za-z0-9._:-]")
        if type(payload["arbiter"]) is not str:
            raise _malformed("payload.arbiter must be a string")
        if not is_int(payload["timeout_height"]):
            raise _malformed("payload.timeout_height must be an integer in [0, 2^53 - 1]")
    elif kind == "escrow_pay":
        _amount(payload)
        if not is_hex(payload["escrow"], 32):
            raise _malformed("payload.escrow must be a transaction id (32 bytes of lowercase hex)")
        if type(payload["to"]) is not str:
            raise _malformed("payload.to must be a string")
    elif kind == "escrow_refund" and not is_hex(payload["escrow"], 32):
        raise _malformed("payload.escrow must be a transaction id (32 bytes of lowercase hex)")
    elif kind == "validator_update":
        if not is_hex(payload["pubkey"], 32):
            raise _malformed("payload.pubkey must be 32 bytes of lowercase hex")
        if not is_int(payload["power"]) or payload["power"] > 1_000_000:
            raise _malformed("payload.power must be an integer in [0, 1000000] (0 removes the validator)")
        if type(payload["validator"]) is not str:
            raise _malformed("payload.validator must be a string")
    # Addresses last: a malformed body is "malformed" before it is anything else.
    decode_address(tx["from"])
    for name in ("to", "arbiter", "validator"):
        if name in payload:
            decode_address(payload[name])
    if kind == "validator_update" and address_from_pubkey_hex(payload["pubkey"]) != payload["validator"]:
        raise _malformed("payload.pubkey does not give payload.validator")


def check_transaction(tx: Any, *, chain_id: str, min_fee: int, verify_signature: bool = True) -> Transaction:
    """Every stateless admission check of ``protocol.md``, in a fixed order.

    Order: fields and types (``malformed``), addresses (``invalid_address``),
    chain (``wrong_chain``), key and signature (``bad_signature``), fee
    (``fee_too_low``). The stateful checks (nonce, funds, escrow) belong to
    the ledger. With ``verify_signature=False`` the caller must call
    ``verify_transaction_signature`` itself (to verify many in parallel).
    """
    check_fields(tx)
    if tx["chain_id"] != chain_id:
        raise ProtocolError("wrong_chain", f"chain_id is {tx['chain_id']!r}, this chain is {chain_id!r}")
    if address_from_pubkey_hex(tx["pubkey"]) != tx["from"]:
        raise ProtocolError("bad_signature", "from is not the address of pubkey")
    try:
        signed = checked_sign_bytes(tx)
    except (UnicodeEncodeError, ValueError) as exc:
        # Only reachable for objects that did not come through parse_strict (gossip).
        raise ProtocolError("malformed", f"transaction cannot be encoded canonically: {exc}") from None
    checked = Transaction(
        id=tx_id_of(signed),
        tx=tx,
        signed_bytes=signed,
        sender=tx["from"],
        nonce=tx["nonce"],
        fee=tx["fee"],
        type=tx["type"],
        payload=tx["payload"],
    )
    if verify_signature:
        verify_transaction_signature(checked)
    if tx["fee"] < min_fee:
        raise ProtocolError("fee_too_low", f"fee {tx['fee']} is below the minimum {min_fee}")
    return checked


def signature_valid(checked: Transaction) -> bool:
    return verify(bytes.fromhex(checked.tx["pubkey"]), checked.signed_bytes, bytes.fromhex(checked.tx["signature"]))


def verify_transaction_signature(checked: Transaction) -> None:
    if not signature_valid(checked):
        raise ProtocolError("bad_signature", "the signature does not verify")
