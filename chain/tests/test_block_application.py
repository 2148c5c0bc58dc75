"""Blocks: nonce order and gaps, and escrow effects that fail only when the block applies them.

An included transaction whose own effect fails is kept with status ``rejected`` and its
code; its fee is paid to the proposer and its nonce used (protocol.md, Application).
"""

from __future__ import annotations

import pytest

from chain import services
from chain.models import Block, Transaction
from chain.protocol.tx import tx_id
from chain.tests.harness import ChainHarness, assert_error, replayed_state, stored_state
from chain.tests.support import (
    MIN_ESCROW_BLOCKS,
    MIN_FEE,
    escrow_lock,
    escrow_pay,
    escrow_refund,
    make_genesis,
    transfer,
)


def assert_ledger_consistent(chain: ChainHarness) -> None:
    """The stored state is the replay of the stored blocks, and no money was made or lost."""
    state = stored_state()
    assert state == replayed_state(chain.genesis)
    assert state.supply == sum(a["amount"] for a in chain.genesis["allocations"])


def open_escrow(chain: ChainHarness, amount: int, nonce: int = 0) -> str:
    timeout = chain.height + 1 + MIN_ESCROW_BLOCKS
    lock = escrow_lock(
        chain.keys.alice, nonce, amount=amount, arbiter=chain.keys.arbiter.address, timeout_height=timeout
    )
    escrow_id = chain.submit(lock)
    chain.produce()
    return escrow_id


# -- nonce order and gaps ---------------------------------------------------------------------


def test_transaction_after_a_nonce_gap_waits_until_the_gap_is_filled(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    first = chain.submit(transfer(alice, 0, bob.address, 10))
    assert chain.produce().tx_ids == [first]
    assert chain.nonce(alice) == 1

    later = chain.submit(transfer(alice, 2, bob.address, 30))
    waiting = chain.produce()
    assert waiting.tx_ids == []
    assert chain.tx_status(later)["status"] == "pending"
    assert chain.nonce(alice) == 1

    missing = chain.submit(transfer(alice, 1, bob.address, 20))
    block = chain.produce()
    assert block.tx_ids == [missing, later]
    assert block.results == {}
    for tx in (missing, later):
        status = chain.tx_status(tx)
        assert (status["status"], status["height"], status["error"]) == ("committed", block.height, None)
    assert chain.nonce(alice) == 3
    assert chain.balance(bob) == chain.genesis["allocations"][1]["amount"] + 60
    assert_ledger_consistent(chain)


def test_batch_answers_per_item_in_order_and_the_block_applies_in_nonce_order(chain: ChainHarness):
    alice, bob, carol = chain.keys.alice, chain.keys.bob, chain.keys.carol
    a2, a0, a1 = (transfer(alice, n, bob.address, 100 + n) for n in (2, 0, 1))
    c0 = transfer(carol, 0, alice.address, 7)
    forged = a0 | {"signature": c0["signature"]}
    wrong_chain = transfer(bob, 0, alice.address, 1, chain_id="aitbc-othernet-1")
    results = chain.batch([a2, a0, forged, c0, a1, a0, wrong_chain, {"nonce": True}])
    assert results[:2] == [{"id": tx_id(a2)}, {"id": tx_id(a0)}]
    assert results[2]["error"]["code"] == "bad_signature"
    assert results[3:5] == [{"id": tx_id(c0)}, {"id": tx_id(a1)}]
    assert [r["error"]["code"] for r in results[5:]] == ["duplicate", "wrong_chain", "malformed"]
    assert all(set(r["error"]) == {"code", "message"} for r in results if "error" in r)

    block = chain.produce()
    # Senders in order of first arrival, each in nonce order.
    assert block.tx_ids == [tx_id(a0), tx_id(a1), tx_id(a2), tx_id(c0)]
    assert chain.nonce(alice) == 3 and chain.nonce(carol) == 1
    blocks = chain.get("/v1/chain/blocks?from=1&limit=10").json()["blocks"]
    assert [b["tx_ids"] for b in blocks] == [block.tx_ids]
    assert chain.get(f"/v1/chain/blocks/{block.height}").json()["id"] == block.id
    assert_ledger_consistent(chain)


def test_many_gapped_nonces_commit_in_order_once_the_first_arrives(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    txs = [transfer(alice, n, bob.address, n + 1) for n in range(40)]
    assert chain.batch(list(reversed(txs[1:]))) == [{"id": tx_id(tx)} for tx in reversed(txs[1:])]
    assert chain.produce().tx_ids == []
    chain.submit(txs[0])
    assert chain.produce().tx_ids == [tx_id(tx) for tx in txs]
    assert chain.nonce(alice) == 40
    assert_ledger_consistent(chain)


# -- effects rejected at application ---------------------------------------------------------


def test_second_refund_of_an_escrow_is_included_as_rejected_with_fee_paid_and_nonce_used(chain: ChainHarness):
    alice, arbiter, validator = chain.keys.alice, chain.keys.arbiter, chain.keys.validator
    escrow_id = open_escrow(chain, 1_000_000)
    alice_before, arbiter_before, validator_before = (chain.balance(k) for k in (alice, arbiter, validator))

    # While the escrow is open both refunds pass admission; the block closes it with the first.
    first = chain.submit(escrow_refund(arbiter, 0, escrow=escrow_id))
    second = chain.submit(escrow_refund(arbiter, 1, escrow=escrow_id))
    block = chain.produce()
    assert block.tx_ids == [first, second]
    assert block.results == {second: "escrow_closed"}

    status = chain.tx_status(second)
    assert (status["status"], status["height"]) == ("rejected", block.height)
    assert status["error"]["code"] == "escrow_closed" and status["error"]["message"]
    assert status["tx"]["nonce"] == 1
    assert chain.tx_status(first)["status"] == "committed"
    assert chain.account(arbiter) == (arbiter_before - 2 * MIN_FEE, 2)
    assert chain.balance(validator) == validator_before + 2 * MIN_FEE
    assert chain.balance(alice) == alice_before + 1_000_000
    assert chain.get(f"/v1/chain/escrows/{escrow_id}").json()["status"] == "closed"
    # A rejected-included transaction is not admitted again.
    assert_error(chain.post(escrow_refund(arbiter, 1, escrow=escrow_id)), "duplicate")
    assert_ledger_consistent(chain)


def test_pay_after_a_refund_in_the_same_block_is_rejected_escrow_closed(chain: ChainHarness):
    arbiter, bob = chain.keys.arbiter, chain.keys.bob
    escrow_id = open_escrow(chain, 1_000_000)
    bob_before = chain.balance(bob)
    chain.submit(escrow_refund(arbiter, 0, escrow=escrow_id))
    pay = chain.submit(escrow_pay(arbiter, 1, escrow=escrow_id, to=bob.address, amount=5))
    block = chain.produce()
    assert block.results == {pay: "escrow_closed"}
    assert chain.balance(bob) == bob_before
    assert chain.nonce(arbiter) == 2
    assert_ledger_consistent(chain)


def test_escrow_rules_of_a_pending_lock_are_checked_when_the_block_applies_them(chain: ChainHarness):
    alice, bob, arbiter = chain.keys.alice, chain.keys.bob, chain.keys.arbiter
    timeout = chain.height + 1 + MIN_ESCROW_BLOCKS
    escrow_id = chain.submit(
        escrow_lock(alice, 0, amount=1_000, arbiter=arbiter.address, timeout_height=timeout, job_id="job.7:a")
    )
    # The escrow does not exist yet, so these are admitted and judged in the block.
    too_much = chain.submit(escrow_pay(arbiter, 0, escrow=escrow_id, to=bob.address, amount=1_001))
    not_arbiter = chain.submit(escrow_pay(bob, 0, escrow=escrow_id, to=bob.address, amount=1))
    early_refund = chain.submit(escrow_refund(bob, 1, escrow=escrow_id))
    paid = chain.submit(escrow_pay(arbiter, 1, escrow=escrow_id, to=bob.address, amount=400))
    block = chain.produce()
    assert block.tx_ids == [escrow_id, too_much, paid, not_arbiter, early_refund]
    assert block.results == {too_much: "exceeds_escrow", not_arbiter: "not_arbiter", early_refund: "not_arbiter"}
    for tx, code in block.results.items():
        status = chain.tx_status(tx)
        assert (status["status"], status["error"]["code"]) == ("rejected", code)
    escrow = chain.get(f"/v1/chain/escrows/{escrow_id}").json()
    assert (escrow["job_id"], escrow["paid"], escrow["remaining"], escrow["status"]) == ("job.7:a", 400, 600, "open")
    assert chain.nonce(bob) == 2 and chain.nonce(arbiter) == 2
    assert_ledger_consistent(chain)


def test_lock_whose_timeout_became_too_short_while_it_waited_is_rejected(chain: ChainHarness):
    alice, bob, arbiter = chain.keys.alice, chain.keys.bob, chain.keys.arbiter
    shortest = chain.height + 1 + MIN_ESCROW_BLOCKS
    # Admitted with the shortest timeout, but behind a nonce gap: it waits a block.
    lock = chain.submit(escrow_lock(alice, 1, amount=5_000, arbiter=arbiter.address, timeout_height=shortest))
    chain.produce()
    balance_before = chain.balance(alice)
    chain.submit(transfer(alice, 0, bob.address, 1))
    block = chain.produce()
    assert block.results == {lock: "timeout_too_short"}
    status = chain.tx_status(lock)
    assert (status["status"], status["height"], status["error"]["code"]) == ("rejected", 2, "timeout_too_short")
    # The fee is paid and the nonce used; the amount is not taken and no escrow opens.
    assert chain.account(alice) == (balance_before - 2 * MIN_FEE - 1, 2)
    assert_error(chain.get(f"/v1/chain/escrows/{lock}"), "not_found")
    assert_ledger_consistent(chain)


def test_included_transactions_are_stored_once_with_their_block_height(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    ids = [chain.submit(transfer(alice, n, bob.address, 1)) for n in range(3)]
    block = chain.produce()
    assert block.tx_ids == ids
    assert set(Transaction.objects.filter(height=block.height).values_list("id", flat=True)) == set(ids)
    assert Block.objects.count() == 1
    assert chain.produce().tx_ids == []
    assert_ledger_consistent(chain)


@pytest.mark.django_db
def test_transactions_stuck_behind_nonce_gaps_do_not_starve_ready_ones(client, chain_keys):
    genesis = make_genesis(chain_keys, max_block_txs=1)
    services.genesis_load(genesis=genesis)
    chain = ChainHarness(client, chain_keys, genesis)
    alice, bob, carol = chain.keys.alice, chain.keys.bob, chain.keys.carol
    # 102 (= 1 * 2 + 100) transactions that wait for nonces 0 of alice and bob, which never come.
    chain.batch([transfer(alice, n, carol.address, 1) for n in range(1, 64)])
    chain.batch([transfer(bob, n, carol.address, 1) for n in range(1, 40)])
    ready = chain.submit(transfer(carol, 0, alice.address, 1))
    for _ in range(3):
        chain.produce()
    assert chain.tx_status(ready)["status"] == "committed"
