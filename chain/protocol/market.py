"""Signed objects exchanged by the coordinator and providers (``docs/marketplace.md``).

Each is built by its signer from its own fields and signed under its own
domain tag, so a provider never signs bytes a coordinator handed it, and a
receipt can never pass for a transaction or a vote.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from chain.protocol.encoding import canonical_json, is_hex, is_int
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key, address_from_pubkey_hex, domain_tag, is_address, verify

DOMAIN_PROVIDER_AUTH = domain_tag("provider-auth")
DOMAIN_RECEIPT = domain_tag("receipt")

AUTH_FIELDS = frozenset({"coordinator", "provider", "pubkey", "purpose", "nonce", "time_ms"})
AUTH_PURPOSES = frozenset({"register", "connect", "request"})
AUTH_MAX_SKEW_MS = 60_000

RECEIPT_FIELDS = frozenset(
    {
        "job_id",
        "coordinator",
        "provider",
        "pubkey",
        "model",
        "input_sha256",
        "output_sha256",
        "input_tokens",
        "output_tokens",
        "started_ms",
        "finished_ms",
        "finish_reason",
    }
)
FINISH_REASONS = frozenset({"stop", "length", "cancelled"})


def _malformed(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


# -- provider authentication ---------------------------------------------------------------


def build_provider_auth(key: Key, *, coordinator: str, purpose: str, now_ms: int | None = None) -> dict[str, Any]:
    """A proof that the holder of ``key`` speaks to ``coordinator`` (its chain address) now.

    The provider picks the nonce and the time itself: nothing in it comes from the coordinator.
    """
    if purpose not in AUTH_PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(AUTH_PURPOSES)}")
    body = {
        "coordinator": coordinator,
        "provider": key.address,
        "pubkey": key.pubkey_hex,
        "purpose": purpose,
        "nonce": secrets.token_hex(16),
        "time_ms": int(time.time() * 1000) if now_ms is None else now_ms,
    }
    return {"auth": body, "signature": key.sign(DOMAIN_PROVIDER_AUTH, canonical_json(body)).hex()}


def verify_provider_auth(
    signed: Any, *, coordinator: str, purpose: str, now_ms: int | None = None, max_skew_ms: int = AUTH_MAX_SKEW_MS
) -> dict[str, Any]:
    """Check a provider authentication; return its body. The caller refuses reused nonces."""
    if not isinstance(signed, dict) or set(signed) != {"auth", "signature"}:
        raise _malformed("provider authentication is {auth, signature}")
    body = signed["auth"]
    if not isinstance(body, dict) or set(body) != AUTH_FIELDS:
        raise _malformed(f"auth must have exactly the fields {', '.join(sorted(AUTH_FIELDS))}")
    if body["coordinator"] != coordinator:
        raise ProtocolError("bad_signature", "this authentication is addressed to another coordinator")
    if body["purpose"] != purpose:
        raise ProtocolError("bad_signature", f"authentication for {body['purpose']!r}, expected {purpose!r}")
    if not is_hex(body["pubkey"], 32) or not is_hex(body["nonce"], 16) or not is_int(body["time_ms"]):
        raise _malformed("auth pubkey (32 bytes hex), nonce (16 bytes hex) or time_ms (integer) malformed")
    if not is_address(body["provider"]) or address_from_pubkey_hex(body["pubkey"]) != body["provider"]:
        raise ProtocolError("bad_signature", "provider is not the address of pubkey")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now - body["time_ms"]) > max_skew_ms:
        raise ProtocolError("bad_signature", "authentication is too old or from the future (check the clock)")
    if not is_hex(signed["signature"], 64) or not verify(
        bytes.fromhex(body["pubkey"]), DOMAIN_PROVIDER_AUTH + canonical_json(body), bytes.fromhex(signed["signature"])
    ):
        raise ProtocolError("bad_signature", "the authentication signature does not verify")
    return body


# -- receipts ----------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def input_digest(job_input: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the job input the coordinator dispatched."""
    return sha256_hex(canonical_json(job_input))


def output_digest(text: str) -> str:
    return sha256_hex(text.encode("utf-8"))


def build_receipt(
    key: Key,
    *,
    job_id: str,
    coordinator: str,
    model: str,
    job_input: dict[str, Any],
    output: str,
    input_tokens: int,
    output_tokens: int,
    started_ms: int,
    finished_ms: int,
    finish_reason: str,
) -> dict[str, Any]:
    """The provider's signed account of one run, verifiable by anyone with its public key."""
    receipt = {
        "job_id": job_id,
        "coordinator": coordinator,
        "provider": key.address,
        "pubkey": key.pubkey_hex,
        "model": model,
        "input_sha256": input_digest(job_input),
        "output_sha256": output_digest(output),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "started_ms": started_ms,
        "finished_ms": finished_ms,
        "finish_reason": finish_reason,
    }
    check_receipt_fields(receipt)
    return {"receipt": receipt, "signature": key.sign(DOMAIN_RECEIPT, canonical_json(receipt)).hex()}


def check_receipt_fields(receipt: Any) -> None:
    if not isinstance(receipt, dict) or set(receipt) != RECEIPT_FIELDS:
        raise _malformed(f"a receipt has exactly the fields {', '.join(sorted(RECEIPT_FIELDS))}")
    for name in ("job_id", "model"):
        if type(receipt[name]) is not str or not 0 < len(receipt[name]) <= 200:
            raise _malformed(f"receipt {name} must be a non-empty string")
    for name in ("input_sha256", "output_sha256"):
        if not is_hex(receipt[name], 32):
            raise _malformed(f"receipt {name} must be 32 bytes of lowercase hex")
    for name in ("input_tokens", "output_tokens", "started_ms", "finished_ms"):
        if not is_int(receipt[name]):
            raise _malformed(f"receipt {name} must be an integer in [0, 2^53 - 1]")
    if receipt["finished_ms"] < receipt["started_ms"]:
        raise _malformed("receipt finished_ms is before started_ms")
    if type(receipt["finish_reason"]) is not str or receipt["finish_reason"] not in FINISH_REASONS:
        raise _malformed(f"receipt finish_reason must be one of {', '.join(sorted(FINISH_REASONS))}")
    if not is_hex(receipt["pubkey"], 32):
        raise _malformed("receipt pubkey must be 32 bytes of lowercase hex")
    if not is_address(receipt["provider"]) or not is_address(receipt["coordinator"]):
        raise ProtocolError("invalid_address", "receipt provider or coordinator is not a valid address")


def verify_receipt(signed: Any) -> dict[str, Any]:
    """Check a signed receipt on its own (fields, key, signature); return the receipt."""
    if not isinstance(signed, dict) or set(signed) != {"receipt", "signature"}:
        raise _malformed("a signed receipt is {receipt, signature}")
    receipt = signed["receipt"]
    check_receipt_fields(receipt)
    if address_from_pubkey_hex(receipt["pubkey"]) != receipt["provider"]:
        raise ProtocolError("bad_signature", "receipt provider is not the address of its pubkey")
    try:
        signed_bytes = DOMAIN_RECEIPT + canonical_json(receipt)
    except (UnicodeEncodeError, ValueError) as exc:
        # Only reachable for objects that did not come through parse_strict (a lone surrogate).
        raise _malformed(f"receipt cannot be encoded canonically: {exc}") from None
    if not is_hex(signed["signature"], 64) or not verify(
        bytes.fromhex(receipt["pubkey"]), signed_bytes, bytes.fromhex(signed["signature"])
    ):
        raise ProtocolError("bad_signature", "the receipt signature does not verify")
    return receipt


# -- metering ------------------------------------------------------------------------------------


def job_charge(*, input_tokens: int, output_tokens: int, input_price: int, output_price: int) -> int:
    """``ceil((input_tokens * input_price + output_tokens * output_price) / 1000)`` uait (interfaces.md).

    Prices are uait per 1,000 tokens. Integer arithmetic: no float rounding.
    """
    total = input_tokens * input_price + output_tokens * output_price
    return -(-total // 1000)
