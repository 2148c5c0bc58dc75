"""Genesis, block headers, votes and commits (documented in ``docs/protocol.md``)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from chain.protocol.encoding import canonical_json, is_hex, is_int
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key, address_from_pubkey_hex, decode_address, domain_tag, verify

DOMAIN_BLOCK = domain_tag("block")
DOMAIN_VOTE = domain_tag("vote")
DOMAIN_GENESIS = domain_tag("genesis")

PARAMS = {"block_time_ms": 1000, "min_fee": 1000, "max_block_txs": 5000, "min_escrow_blocks": 10}
PARAM_BOUNDS = {
    "block_time_ms": (50, 3_600_000),
    "min_fee": (0, 2**53 - 1),
    "max_block_txs": (1, 100_000),
    "min_escrow_blocks": (1, 10_000_000),
}
GENESIS_FIELDS = {"chain_id", "genesis_time", "params", "validators", "allocations"}
CHAIN_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
TIME_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def _bad(message: str) -> ProtocolError:
    return ProtocolError("malformed", message)


def check_genesis(genesis: Any) -> dict[str, Any]:
    """Validate a genesis document; unknown fields in ``params`` are an error."""
    if not isinstance(genesis, dict):
        raise _bad("genesis must be a JSON object")
    if set(genesis) != GENESIS_FIELDS:
        raise _bad(f"genesis must have exactly the fields {', '.join(sorted(GENESIS_FIELDS))}")
    if type(genesis["chain_id"]) is not str or not CHAIN_ID.fullmatch(genesis["chain_id"]):
        raise _bad("genesis chain_id must be 1-63 characters of [a-z0-9._-]")
    if type(genesis["genesis_time"]) is not str or not TIME_FORMAT.fullmatch(genesis["genesis_time"]):
        raise _bad("genesis_time must be an RFC 3339 UTC time like 2026-11-27T00:00:00Z")
    params = genesis["params"]
    if not isinstance(params, dict):
        raise _bad("params must be an object")
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise _bad(f"unknown genesis params: {', '.join(sorted(unknown))}")
    missing = set(PARAMS) - set(params)
    if missing:
        raise _bad(f"missing genesis params: {', '.join(sorted(missing))}")
    for name, (low, high) in PARAM_BOUNDS.items():
        if not is_int(params[name]) or not low <= params[name] <= high:
            raise _bad(f"params.{name} must be an integer in [{low}, {high}]")
    validators = genesis["validators"]
    if not isinstance(validators, list) or not validators:
        raise _bad("validators must be a non-empty list")
    seen: set[str] = set()
    for entry in validators:
        if not isinstance(entry, dict) or set(entry) != {"address", "pubkey", "power"}:
            raise _bad("each validator is {address, pubkey, power}")
        decode_address(entry["address"])
        if not is_hex(entry["pubkey"], 32) or address_from_pubkey_hex(entry["pubkey"]) != entry["address"]:
            raise _bad(f"validator {entry['address']}: pubkey does not give its address")
        if not is_int(entry["power"]) or entry["power"] < 1:
            raise _bad(f"validator {entry['address']}: power must be a positive integer")
        if entry["address"] in seen:
            raise _bad(f"validator {entry['address']} is listed twice")
        seen.add(entry["address"])
    allocations = genesis["allocations"]
    if not isinstance(allocations, list):
        raise _bad("allocations must be a list")
    funded: set[str] = set()
    for entry in allocations:
        if not isinstance(entry, dict) or set(entry) != {"address", "amount"}:
            raise _bad("each allocation is {address, amount}")
        decode_address(entry["address"])
        if not is_int(entry["amount"]):
            raise _bad(f"allocation to {entry['address']}: amount must be an integer in [0, 2^53 - 1]")
        if entry["address"] in funded:
            raise _bad(f"allocation to {entry['address']} is listed twice")
        funded.add(entry["address"])
    return genesis


def genesis_id(genesis: dict[str, Any]) -> str:
    return hashlib.sha256(DOMAIN_GENESIS + canonical_json(genesis)).hexdigest()


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def format_time_ms(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC with milliseconds."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def tx_root(tx_ids: list[str]) -> str:
    """SHA-256 over the concatenated 32-byte ids, in block order."""
    digest = hashlib.sha256()
    for tx_id in tx_ids:
        digest.update(bytes.fromhex(tx_id))
    return digest.hexdigest()


def block_header(
    *,
    chain_id: str,
    height: int,
    prev_id: str,
    time_ms: int,
    proposer: str,
    tx_ids: list[str],
    round: int = 0,
    evidence_ids: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "height": height,
        "round": round,
        "prev_id": prev_id,
        "time_ms": time_ms,
        "proposer": proposer,
        "tx_count": len(tx_ids),
        "tx_root": tx_root(tx_ids),
        "evidence_root": tx_root(evidence_ids or []),
    }


HEADER_FIELDS = frozenset(
    {"chain_id", "height", "round", "prev_id", "time_ms", "proposer", "tx_count", "tx_root", "evidence_root"}
)


def evidence_id(evidence: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(evidence)).hexdigest()


def block_id(header: dict[str, Any]) -> str:
    return hashlib.sha256(DOMAIN_BLOCK + canonical_json(header)).hexdigest()


def vote_body(*, chain_id: str, height: int, round: int, step: str, block_id: str | None) -> dict[str, Any]:
    """What a validator signs for a prevote or precommit (``block_id`` None votes for nothing)."""
    if step not in ("prevote", "precommit"):
        raise ValueError("a vote is a prevote or a precommit")
    return {"chain_id": chain_id, "height": height, "round": round, "type": step, "block_id": block_id or ""}


def sign_vote(key: Key, body: dict[str, Any]) -> str:
    return key.sign(DOMAIN_VOTE, canonical_json(body)).hex()


def verify_vote(pubkey_hex: str, body: dict[str, Any], signature_hex: str) -> bool:
    if not is_hex(signature_hex, 64):
        return False
    return verify(bytes.fromhex(pubkey_hex), DOMAIN_VOTE + canonical_json(body), bytes.fromhex(signature_hex))


def make_commit(key: Key, *, chain_id: str, height: int, round: int, block_id: str) -> dict[str, Any]:
    body = vote_body(chain_id=chain_id, height=height, round=round, step="precommit", block_id=block_id)
    return {
        "height": height,
        "round": round,
        "block_id": block_id,
        "signatures": [{"validator": key.address, "signature": sign_vote(key, body)}],
    }


def verify_commit(
    commit: Any, *, chain_id: str, height: int, block_id: str, validators: dict[str, tuple[str, int]]
) -> None:
    """Check that ``commit`` holds precommits of more than 2/3 of the voting power.

    ``validators`` maps address -> (pubkey hex, power) for the validator set at ``height``.
    """
    if not isinstance(commit, dict) or commit.get("height") != height or commit.get("block_id") != block_id:
        raise _bad("commit is not for this block")
    round_ = commit.get("round")
    if not is_int(round_):
        raise _bad("commit round must be an integer")
    signatures = commit.get("signatures")
    if not isinstance(signatures, list):
        raise _bad("commit signatures must be a list")
    body = vote_body(chain_id=chain_id, height=height, round=round_, step="precommit", block_id=block_id)
    total = sum(power for _pub, power in validators.values())
    signed = 0
    seen: set[str] = set()
    for entry in signatures:
        if not isinstance(entry, dict):
            raise _bad("commit signature entries are objects")
        address = entry.get("validator")
        if type(address) is not str or address in seen or address not in validators:
            raise _bad(f"commit signature from unknown or repeated validator {address!r}")
        pubkey, power = validators[address]
        if not verify_vote(pubkey, body, entry.get("signature", "")):
            raise ProtocolError("bad_signature", f"precommit of {address} does not verify")
        seen.add(address)
        signed += power
    if 3 * signed <= 2 * total:
        raise _bad(f"commit holds {signed} of {total} voting power, not more than 2/3")
