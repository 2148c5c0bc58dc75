"""Batches checked in the node's check processes get the answers of the in-process path.

The node hands a large batch body to another process for the strict parse, the
stateless checks and the signatures (``services.batch_admit``); the stateful rules,
the write and the answers stay in the node. These tests run every batch through real
spawned check processes and hold the answers to the protocol's codes, the not-a-batch
errors crossing the process boundary, and a check process killed mid-service.
"""

from __future__ import annotations

import os
import pickle
import signal

import pytest

from chain import services
from chain.mempool import mempool
from chain.models import Transaction
from chain.protocol.errors import ProtocolError
from chain.tests.harness import (
    BATCH,
    ChainHarness,
    assert_error,
    dropped_transaction_comes_back,
    replayed_state,
    stored_state,
)
from chain.tests.support import MIN_FEE, escrow_pay, transfer
from conftest import wait_until


@pytest.fixture(scope="module")
def check_processes():
    assert services.start_check_processes(2) == 2
    yield services
    services.stop_check_processes()


@pytest.fixture
def pooled(check_processes, monkeypatch):
    """Every batch, however small, goes to the check processes; ``calls`` counts the hand-offs."""
    monkeypatch.setattr(services, "_POOL_FROM_BYTES", 0)
    calls = []
    pool = services._check_pool
    original = pool.submit

    def counting(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(pool, "submit", counting)
    return calls


def codes(results: list[dict]) -> list[str | None]:
    return [r.get("error", {}).get("code") for r in results]


def test_protocol_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(ProtocolError("bad_nonce", "nonce 3 is below the account nonce 4")))
    assert type(error) is ProtocolError
    assert (error.code, error.message) == ("bad_nonce", "nonce 3 is below the account nonce 4")
    assert str(error) == "bad_nonce: nonce 3 is below the account nonce 4"


def test_a_mixed_batch_gets_each_code_from_the_check_processes(chain: ChainHarness, pooled: list) -> None:
    alice, bob, carol = chain.keys.alice, chain.keys.bob, chain.keys.carol
    known = transfer(carol, 0, bob.address, 3)
    assert codes(chain.batch([known])) == [None]
    good = transfer(alice, 0, bob.address, 5)
    flipped = f"{int(good['signature'][:2], 16) ^ 1:02x}" + good["signature"][2:]
    batch = [
        good,
        transfer(alice, 1, bob.address, 5) | {"signature": flipped},
        {"not": "a transaction"},
        transfer(alice, 1, bob.address, 5, chain_id="another-chain"),
        transfer(alice, 1, bob.address, 5) | {"from": bob.address},
        transfer(alice, 1, bob.address, 5, fee=MIN_FEE - 1),
        good,
        known,
        transfer(alice, 200, bob.address, 5),
        transfer(alice, 1, bob.address, chain.balance(alice)),
        escrow_pay(alice, 1, escrow="ab" * 32, to=bob.address, amount=1),
        transfer(alice, 1, bob.address, 7),
        # Held already, under another signature: a duplicate before a bad signature, as in the node.
        known | {"signature": good["signature"]},
    ]
    results = chain.batch(batch)
    assert codes(results) == [
        None,
        "bad_signature",
        "malformed",
        "wrong_chain",
        "bad_signature",
        "fee_too_low",
        "duplicate",
        "duplicate",
        "bad_nonce",
        "insufficient_funds",
        "escrow_not_found",
        None,
        "duplicate",
    ], results
    assert "already known" in results[-1]["error"]["message"]
    assert (
        services.mempool_admit(txs=[batch[-1]], chain_id=chain.genesis["chain_id"], min_fee=MIN_FEE)[0].error.code
        == "duplicate"
    )
    assert pooled == ["check_batch", "check_batch"]
    assert results[0]["id"] == mempool.pending_at(alice.address, 0)
    pending = {(entry.tx.sender, entry.tx.nonce) for entry in mempool.oldest(10)}
    assert pending == {(alice.address, 0), (alice.address, 1), (carol.address, 0)}
    assert chain.produce().tx_count == 3
    assert stored_state() == replayed_state(chain.genesis)


def test_not_a_batch_is_malformed_across_the_process_boundary(chain: ChainHarness, pooled: list) -> None:
    assert "list" in assert_error(chain.post({"txs": []}, BATCH), "malformed")["message"]
    too_long = "[" + ",".join(["{}"] * (services.MAX_BATCH + 1)) + "]"
    assert "at most" in assert_error(chain.post(too_long, BATCH), "malformed")["message"]
    assert "UTF-8" in assert_error(chain.post(b"[\xff]", BATCH), "malformed")["message"]
    assert "duplicate key" in assert_error(chain.post(b'[{"a": 1, "a": 2}]', BATCH), "malformed")["message"]
    assert len(pooled) == 4
    assert not Transaction.objects.exists() and not len(mempool)


def test_a_killed_check_process_costs_no_answer_and_is_replaced(chain: ChainHarness, pooled: list) -> None:
    alice, bob = chain.keys.alice, chain.keys.bob
    pool = services._check_pool
    victim = next(iter(pool._processes))
    os.kill(victim, signal.SIGKILL)
    # The executor learns of the death from its own thread; until then a batch may still
    # reach the surviving process. Once it knows, the next batch finds the pool broken.
    wait_until(lambda: pool._broken, timeout=30, message="the executor to see its process die")
    results = chain.batch([transfer(alice, n, bob.address, 1) for n in range(3)])
    assert codes(results) == [None, None, None]
    # The broken pool was replaced: the next batch is checked in a new one.
    assert services._check_pool is not pool and services._check_pool is not None
    assert victim not in services._check_pool._processes
    assert codes(chain.batch([transfer(alice, 3, bob.address, 1)])) == [None]
    assert chain.produce().tx_count == 4


def test_a_dropped_transaction_comes_back_through_the_check_processes(chain: ChainHarness, pooled: list) -> None:
    dropped_transaction_comes_back(chain)
    assert pooled == ["check_batch"]
