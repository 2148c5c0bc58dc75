"""The in-memory mempool: its bookkeeping, what admission writes (nothing), what a restart loses."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chain.mempool import Mempool, mempool
from chain.models import Transaction
from chain.protocol.tx import build_transaction, check_transaction, tx_id
from chain.tests.harness import SUBMIT, ChainHarness, assert_error, commit_peer_block
from chain.tests.support import CHAIN_ID, MIN_FEE, named_key, transfer

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def checked(tx: dict) -> object:
    return check_transaction(tx, chain_id=CHAIN_ID, min_fee=0, verify_signature=False)


def escrow_pay(key, nonce: int, escrow: str, amount: int) -> dict:
    payload = {"escrow": escrow, "to": named_key("provider").address, "amount": amount}
    return build_transaction(key, chain_id=CHAIN_ID, type="escrow_pay", nonce=nonce, fee=MIN_FEE, payload=payload)


def test_the_sums_follow_every_add_and_remove() -> None:
    """Pending spends per sender, pending pays per escrow and pending locks match a recount after any sequence."""
    rng = random.Random(7)
    keys = [named_key(f"pool-{n}") for n in range(4)]
    escrows = ["ab" * 32, "cd" * 32]
    pool = Mempool()
    present: dict[str, object] = {}
    nonces = {k.address: 0 for k in keys}
    for _ in range(400):
        if present and rng.random() < 0.4:
            gone = rng.sample(sorted(present), rng.randint(1, min(3, len(present))))
            pool.remove([*gone, "ee" * 32])  # an id it never held is ignored
            for i in gone:
                del present[i]
        else:
            key = rng.choice(keys)
            nonce = nonces[key.address]
            nonces[key.address] += 1
            if rng.random() < 0.5:
                tx = escrow_pay(key, nonce, rng.choice(escrows), rng.randint(1, 50))
            else:
                tx = transfer(key, nonce, keys[0].address, rng.randint(1, 50))
            c = checked(tx)
            pool.add(c, received_at=NOW)
            present[c.id] = c
        for k in keys:
            mine = [c for c in present.values() if c.sender == k.address]
            assert pool.spend_of(k.address) == sum(c.spend for c in mine)
            assert pool.nonces_of(k.address) == {c.nonce: c.id for c in mine}
        for escrow in escrows:
            pays = [c for c in present.values() if c.type == "escrow_pay" and c.payload["escrow"] == escrow]
            assert pool.pays_of(escrow) == sum(c.payload["amount"] for c in pays)
        assert len(pool) == len(present)
        assert [e.tx.id for e in pool.oldest(len(pool))] == list(present)


def test_a_block_copy_is_recognized_only_in_exactly_the_admitted_form() -> None:
    alice, bob = named_key("alice"), named_key("bob")
    tx = transfer(alice, 3, bob.address, 5)
    pool = Mempool()
    c = checked(tx)
    pool.add(c, received_at=NOW)
    same = dict(tx, payload=dict(tx["payload"]))
    assert pool.checked_forms([same]) == [c]
    variants = [
        dict(tx, nonce=3.0),
        dict(tx, nonce=float(3)),
        dict(tx, fee=float(tx["fee"])),
        dict(tx, payload=dict(tx["payload"], amount=5.0)),
        dict(tx, memo="other"),
        dict(tx, payload=dict(tx["payload"], to=alice.address)),
        "not a transaction",
        dict(tx, signature=42),
    ]
    assert pool.checked_forms(variants) == [None] * len(variants)
    one = transfer(alice, 4, bob.address, 1)
    c1 = checked(one)
    pool.add(c1, received_at=NOW)
    assert pool.checked_forms([dict(one, nonce=True)]) == [None]


def test_admission_writes_nothing_to_the_database(chain: ChainHarness) -> None:
    alice, bob = chain.keys.alice, chain.keys.bob
    with CaptureQueriesContext(connection) as queries:
        results = chain.batch([transfer(alice, n, bob.address, 1) for n in range(5)])
    assert all("id" in r for r in results), results
    writes = [q["sql"] for q in queries if not q["sql"].lstrip().upper().startswith("SELECT")]
    assert writes == [], writes
    assert not Transaction.objects.exists()
    assert len(mempool) == 5 and chain.tx_status(results[0]["id"])["status"] == "pending"
    status = chain.get("/status").json()
    assert status["mempool_size"] == 5


def test_a_restart_forgets_pending_transactions_and_the_same_bytes_are_admitted_again(chain: ChainHarness) -> None:
    alice, bob = chain.keys.alice, chain.keys.bob
    tx = transfer(alice, 0, bob.address, 5)
    chain.submit(tx)
    mempool.clear()  # what a restart does to the mempool
    assert_error(chain.get(f"{SUBMIT}/{tx_id(tx)}"), "not_found")
    assert chain.batch([tx]) == [{"id": tx_id(tx)}]
    block = chain.produce()
    assert block.tx_ids == [tx_id(tx)]
    assert chain.tx_status(tx_id(tx))["status"] == "committed" and not len(mempool)


@pytest.mark.parametrize("losers", [1, 2])
def test_a_block_taking_a_nonce_drops_the_other_pending_transaction_of_that_nonce(
    chain: ChainHarness, losers: int
) -> None:
    """The mempool's transaction of a (sender, nonce) the block used is stored rejected, and leaves."""
    alice, bob = chain.keys.alice, chain.keys.bob
    mine = [transfer(alice, n, bob.address, 5) for n in range(losers)]
    chain.batch(mine)
    theirs = [transfer(alice, n, bob.address, 6) for n in range(losers)]
    commit_peer_block(chain, theirs)
    assert not len(mempool)
    for tx in mine:
        row = Transaction.objects.get(id=tx_id(tx))
        assert (row.status, row.height, row.error_code) == (Transaction.REJECTED, None, "duplicate")
    for tx in theirs:
        assert Transaction.objects.get(id=tx_id(tx)).status == Transaction.COMMITTED
