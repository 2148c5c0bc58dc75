"""Helpers for the chain's tests: fixed keys, genesis documents, transaction builders, replay.

Pure code (no Django import), so the process-level tests can use it on a node's SQLite
file as well as the in-process tests on the test database.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chain.ledger import EscrowState, LedgerView, apply_transaction
from chain.protocol.keys import Key
from chain.protocol.tx import build_transaction

# A copy of shared/protocol/vectors.json, byte for byte: the contract's test vectors.
VECTORS_PATH = Path(__file__).resolve().parent / "vectors.json"

CHAIN_ID = "aitbc-test-1"
MIN_FEE = 1000
MIN_ESCROW_BLOCKS = 10
GENESIS_TIME = "2026-11-27T00:00:00Z"
ALLOCATION = 1_000_000_000_000  # 1,000,000 AIT in uait


def vectors() -> dict[str, Any]:
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def named_key(name: str) -> Key:
    """A fixed key per name, so failures reproduce."""
    return Key(hashlib.sha256(b"aitbc-chain-tests/" + name.encode()).digest())


@dataclass(frozen=True)
class Keys:
    """The fixed keys of the test chain: a validator, four funded accounts, an unfunded arbiter."""

    validator: Key
    alice: Key
    bob: Key
    carol: Key
    dave: Key
    arbiter: Key

    @property
    def funded(self) -> list[Key]:
        return [self.alice, self.bob, self.carol, self.dave]


def fixed_keys() -> Keys:
    return Keys(*(named_key(name) for name in ("validator", "alice", "bob", "carol", "dave", "arbiter")))


def make_genesis(
    keys: Keys,
    *,
    chain_id: str = CHAIN_ID,
    allocation: int = ALLOCATION,
    funded: list[Key] | None = None,
    **params: int,
) -> dict[str, Any]:
    """A one-validator genesis funding ``funded`` (default: the four funded keys) and the arbiter a little."""
    funded = keys.funded if funded is None else funded
    allocations = [{"address": k.address, "amount": allocation} for k in funded]
    # The arbiter needs fees for its pays and refunds, no more.
    if keys.arbiter not in funded:
        allocations.append({"address": keys.arbiter.address, "amount": 100 * MIN_FEE * 1000})
    return {
        "chain_id": chain_id,
        "genesis_time": GENESIS_TIME,
        "params": {
            "block_time_ms": 1000,
            "min_fee": MIN_FEE,
            "max_block_txs": 5000,
            "min_escrow_blocks": MIN_ESCROW_BLOCKS,
        }
        | params,
        "validators": [{"address": keys.validator.address, "pubkey": keys.validator.pubkey_hex, "power": 1}],
        "allocations": allocations,
    }


def transfer(
    key: Key, nonce: int, to: str, amount: int, *, fee: int = MIN_FEE, chain_id: str = CHAIN_ID, memo: str = ""
) -> dict[str, Any]:
    return build_transaction(
        key,
        chain_id=chain_id,
        type="transfer",
        nonce=nonce,
        fee=fee,
        payload={"to": to, "amount": amount},
        memo=memo,
    )


def escrow_lock(
    key: Key,
    nonce: int,
    *,
    amount: int,
    arbiter: str,
    timeout_height: int,
    job_id: str = "job-1",
    fee: int = MIN_FEE,
    chain_id: str = CHAIN_ID,
) -> dict[str, Any]:
    return build_transaction(
        key,
        chain_id=chain_id,
        type="escrow_lock",
        nonce=nonce,
        fee=fee,
        payload={"job_id": job_id, "amount": amount, "arbiter": arbiter, "timeout_height": timeout_height},
    )


def escrow_pay(
    key: Key, nonce: int, *, escrow: str, to: str, amount: int, fee: int = MIN_FEE, chain_id: str = CHAIN_ID
) -> dict[str, Any]:
    return build_transaction(
        key,
        chain_id=chain_id,
        type="escrow_pay",
        nonce=nonce,
        fee=fee,
        payload={"escrow": escrow, "to": to, "amount": amount},
    )


def escrow_refund(key: Key, nonce: int, *, escrow: str, fee: int = MIN_FEE, chain_id: str = CHAIN_ID) -> dict[str, Any]:
    return build_transaction(
        key, chain_id=chain_id, type="escrow_refund", nonce=nonce, fee=fee, payload={"escrow": escrow}
    )


# -- replay -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBlock:
    height: int
    proposer: str
    tx_ids: list[str]
    results: dict[str, str]


@dataclass
class LedgerState:
    """Balances and nonces (accounts at zero left out) and escrows, comparable with ``==``."""

    accounts: dict[str, tuple[int, int]]
    escrows: dict[str, dict[str, Any]]

    @property
    def supply(self) -> int:
        return sum(b for b, _n in self.accounts.values()) + sum(
            e["amount"] - e["paid"] - e["refunded"] for e in self.escrows.values() if e["status"] == "open"
        )


def escrow_fields(e: EscrowState) -> dict[str, Any]:
    return {
        "payer": e.payer,
        "arbiter": e.arbiter,
        "job_id": e.job_id,
        "amount": e.amount,
        "paid": e.paid,
        "refunded": e.refunded,
        "timeout_height": e.timeout_height,
        "status": "open" if e.open else "closed",
        "opened_height": e.opened_height,
        "closed_height": e.closed_height,
    }


def state_of(accounts: dict[str, tuple[int, int]], escrows: dict[str, dict[str, Any]]) -> LedgerState:
    return LedgerState(
        accounts={a: (b, n) for a, (b, n) in accounts.items() if (b, n) != (0, 0)},
        escrows=escrows,
    )


def replay(genesis: dict[str, Any], blocks: list[StoredBlock], bodies: dict[str, dict[str, Any]]) -> LedgerState:
    """Recompute the ledger from genesis and the stored blocks' transaction bodies.

    Fails (AssertionError) when a block does not replay as stored: heights not
    consecutive from 1, a transaction the replay would drop, or a result code that
    differs from the one the block recorded.
    """
    view = LedgerView()
    for entry in genesis["allocations"]:
        view.accounts[entry["address"]] = [entry["amount"], 0]
    min_escrow_blocks = genesis["params"]["min_escrow_blocks"]
    for expected_height, block in enumerate(sorted(blocks, key=lambda b: b.height), start=1):
        assert block.height == expected_height, f"block heights skip from {expected_height - 1} to {block.height}"
        for tx_id in block.tx_ids:
            tx = bodies[tx_id]
            outcome = apply_transaction(
                view,
                tx_id=tx_id,
                sender=tx["from"],
                nonce=tx["nonce"],
                fee=tx["fee"],
                kind=tx["type"],
                payload=tx["payload"],
                height=block.height,
                proposer=block.proposer,
                min_escrow_blocks=min_escrow_blocks,
            )
            assert outcome.included, f"block {block.height} includes {tx_id}, which replay drops ({outcome.code})"
            assert outcome.code == block.results.get(tx_id), (
                f"block {block.height}: {tx_id} replays as {outcome.code}, stored as {block.results.get(tx_id)}"
            )
    escrows = {escrow_id: escrow_fields(e) for escrow_id, e in view.escrows.items() if e is not None}
    return state_of({a: (b, n) for a, (b, n) in view.accounts.items()}, escrows)


def gossip_node(chain_id: str):
    """A follower's ``ConsensusDriver`` with no peers and no threads started, to feed frames to."""
    from chain.network import ConsensusDriver

    return ConsensusDriver(
        chain_id=chain_id,
        genesis_id="00" * 32,
        key=None,
        peers=[],
        block_time_ms=1000,
        rpc_url="http://127.0.0.1:9",
        run_consensus=False,
    )
