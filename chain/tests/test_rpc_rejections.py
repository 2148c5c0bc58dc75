"""Every rejection code of protocol.md, from a request through Django's URLconf and views.

Each answer is checked for the status of protocol.md's table and for the body shape
``{"error": {"code", "message"}}``; a transaction refused at admission must leave no
record (no row, and ``GET /v1/chain/transactions/{id}`` answers 404).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from chain import services
from chain.mempool import mempool
from chain.models import Transaction
from chain.protocol.encoding import canonical_json
from chain.protocol.keys import DOMAIN_TX
from chain.protocol.tx import NONCE_WINDOW, tx_id
from chain.tests.harness import BATCH, SUBMIT, ChainHarness, assert_error
from chain.tests.support import (
    ALLOCATION,
    MIN_ESCROW_BLOCKS,
    MIN_FEE,
    escrow_lock,
    escrow_pay,
    escrow_refund,
    named_key,
    transfer,
)

UNKNOWN_ID = "ab" * 32


def pending_ids() -> list[str]:
    return [entry.tx.id for entry in mempool.oldest(len(mempool))]


def refuse(chain: ChainHarness, tx: dict[str, Any], code: str) -> dict[str, Any]:
    """POST ``tx``: it is refused with ``code`` and leaves no record under its id."""
    before = Transaction.objects.filter(id=tx_id(tx)).values_list("status", "height").first()
    pending = pending_ids()
    error = assert_error(chain.post(tx), code)
    after = Transaction.objects.filter(id=tx_id(tx)).values_list("status", "height").first()
    assert after == before, "a refused submission changed the stored transaction"
    assert pending_ids() == pending, "a refused submission changed the mempool"
    if before is None and tx_id(tx) not in mempool:
        assert_error(chain.get(f"{SUBMIT}/{tx_id(tx)}"), "not_found")
    return error


def open_escrow(chain: ChainHarness, *, amount: int = 1_000_000, nonce: int = 0) -> tuple[str, int]:
    """An escrow of alice's with the arbiter, applied in a block; returns its id and timeout height."""
    timeout = chain.height + 1 + MIN_ESCROW_BLOCKS
    arbiter = chain.keys.arbiter.address
    lock = escrow_lock(chain.keys.alice, nonce, amount=amount, arbiter=arbiter, timeout_height=timeout)
    escrow_id = chain.submit(lock)
    block = chain.produce()
    assert escrow_id in block.tx_ids and escrow_id not in block.results
    return escrow_id, timeout


# -- malformed --------------------------------------------------------------------------------


def _without(name: str) -> Callable[[dict], dict]:
    return lambda tx: {k: v for k, v in tx.items() if k != name}


def _payload(**fields: Any) -> Callable[[dict], dict]:
    return lambda tx: tx | {"payload": tx["payload"] | fields}


MALFORMED_TRANSACTIONS = {
    "missing memo": _without("memo"),
    "missing signature": _without("signature"),
    "unknown field": lambda tx: tx | {"extra": 1},
    "unknown payload field": _payload(note="x"),
    "payload without amount": lambda tx: tx | {"payload": {"to": tx["payload"]["to"]}},
    "fee as a string": lambda tx: tx | {"fee": "1000"},
    "negative nonce": lambda tx: tx | {"nonce": -1},
    "nonce above 2^53 - 1": lambda tx: tx | {"nonce": 2**53},
    "zero amount": _payload(amount=0),
    "unknown type": lambda tx: tx | {"type": "mint"},
    "type not a string": lambda tx: tx | {"type": 1},
    "upper-case pubkey": lambda tx: tx | {"pubkey": tx["pubkey"].upper()},
    "short signature": lambda tx: tx | {"signature": tx["signature"][:-2]},
    "memo of 257 bytes": lambda tx: tx | {"memo": "é" * 128 + "x"},
    "memo not a string": lambda tx: tx | {"memo": None},
    "payload not an object": lambda tx: tx | {"payload": []},
    "chain_id empty": lambda tx: tx | {"chain_id": ""},
    "not an object": lambda tx: [tx],
}


@pytest.mark.parametrize("mutate", MALFORMED_TRANSACTIONS.values(), ids=MALFORMED_TRANSACTIONS.keys())
def test_transaction_with_wrong_fields_or_types_is_malformed(chain: ChainHarness, mutate):
    tx = transfer(chain.keys.alice, 0, chain.keys.bob.address, 5)
    assert_error(chain.post(mutate(tx)), "malformed")
    assert not Transaction.objects.exists()
    assert_error(chain.get(f"{SUBMIT}/{tx_id(tx)}"), "not_found")


BAD_LOCK_PAYLOADS: dict[str, Callable[[str], dict]] = {
    "job_id with a space": lambda a: {"job_id": "job 1", "amount": 1, "arbiter": a, "timeout_height": 99},
    "job_id of 65 characters": lambda a: {"job_id": "x" * 65, "amount": 1, "arbiter": a, "timeout_height": 99},
    "empty job_id": lambda a: {"job_id": "", "amount": 1, "arbiter": a, "timeout_height": 99},
    "missing arbiter": lambda a: {"job_id": "ok", "amount": 1, "timeout_height": 99},
    "timeout_height a string": lambda a: {"job_id": "ok", "amount": 1, "arbiter": a, "timeout_height": "99"},
}


@pytest.mark.parametrize("make_payload", BAD_LOCK_PAYLOADS.values(), ids=BAD_LOCK_PAYLOADS.keys())
def test_escrow_lock_with_bad_payload_is_malformed(chain: ChainHarness, make_payload):
    arbiter = chain.keys.arbiter.address
    tx = escrow_lock(chain.keys.alice, 0, amount=1, arbiter=arbiter, timeout_height=99)
    assert_error(chain.post(tx | {"payload": make_payload(arbiter)}), "malformed")
    assert not Transaction.objects.exists()


def test_batch_that_is_not_a_list_or_too_long_is_malformed(chain: ChainHarness):
    assert_error(chain.post({"txs": []}, BATCH), "malformed")
    assert_error(chain.post("[" + ",".join(["{}"] * (services.MAX_BATCH + 1)) + "]", BATCH), "malformed")
    # Inside a list, items are refused one by one.
    assert [r["error"]["code"] for r in chain.batch([{}, 1])] == ["malformed", "malformed"]


def test_bad_query_parameter_is_malformed(chain: ChainHarness):
    assert_error(chain.get("/v1/chain/blocks?from=-1"), "malformed")
    assert_error(chain.get("/v1/chain/blocks?limit=0"), "malformed")
    assert_error(chain.get("/v1/chain/blocks?limit=x"), "malformed")


# -- invalid_address, wrong_chain, bad_signature, fee_too_low -------------------------------


def test_escrow_lock_to_an_invalid_arbiter_address_is_invalid_address(chain: ChainHarness):
    alice = chain.keys.alice
    tx = escrow_lock(alice, 0, amount=1, arbiter=chain.keys.arbiter.address, timeout_height=100)
    body = {k: v for k, v in tx.items() if k != "signature"}
    body["payload"] = body["payload"] | {"arbiter": chain.keys.arbiter.address.upper()}
    signed = body | {"signature": alice.sign(DOMAIN_TX, canonical_json(body)).hex()}
    refuse(chain, signed, "invalid_address")
    assert_error(chain.get("/v1/chain/accounts/ait1notanaddress"), "invalid_address")


def test_transaction_of_another_chain_is_wrong_chain(chain: ChainHarness):
    refuse(chain, transfer(chain.keys.alice, 0, chain.keys.bob.address, 5, chain_id="aitbc-othernet-1"), "wrong_chain")


def test_from_that_is_not_the_address_of_pubkey_is_bad_signature(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    # Bob signs a transaction that claims to come from alice, with his own key.
    body = {k: v for k, v in transfer(bob, 0, bob.address, 5).items() if k != "signature"}
    body["from"] = alice.address
    forged = body | {"signature": bob.sign(DOMAIN_TX, canonical_json(body)).hex()}
    error = refuse(chain, forged, "bad_signature")
    assert "pubkey" in error["message"]


def test_signature_that_does_not_verify_is_bad_signature(chain: ChainHarness):
    tx = transfer(chain.keys.alice, 0, chain.keys.bob.address, 5)
    refuse(chain, tx | {"payload": tx["payload"] | {"amount": 5_000_000}}, "bad_signature")
    flipped = f"{int(tx['signature'][:2], 16) ^ 1:02x}" + tx["signature"][2:]
    refuse(chain, tx | {"signature": flipped}, "bad_signature")
    other = transfer(chain.keys.alice, 1, chain.keys.bob.address, 5)
    refuse(chain, tx | {"signature": other["signature"]}, "bad_signature")


def test_fee_below_min_fee_is_fee_too_low(chain: ChainHarness):
    refuse(chain, transfer(chain.keys.alice, 0, chain.keys.bob.address, 5, fee=MIN_FEE - 1), "fee_too_low")
    chain.submit(transfer(chain.keys.alice, 0, chain.keys.bob.address, 5, fee=MIN_FEE))


# -- bad_nonce, duplicate ---------------------------------------------------------------------


def test_nonce_below_the_account_nonce_is_bad_nonce(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    chain.submit(transfer(alice, 0, bob.address, 5))
    chain.produce()
    assert chain.nonce(alice) == 1
    refuse(chain, transfer(alice, 0, bob.address, 6), "bad_nonce")


def test_nonce_beyond_the_window_is_bad_nonce(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    refuse(chain, transfer(alice, NONCE_WINDOW + 1, bob.address, 5), "bad_nonce")
    chain.submit(transfer(alice, NONCE_WINDOW, bob.address, 5))
    # The window moves with the account nonce.
    chain.submit(transfer(alice, 0, bob.address, 5))
    chain.produce()
    refuse(chain, transfer(alice, NONCE_WINDOW + 2, bob.address, 5), "bad_nonce")
    chain.submit(transfer(alice, NONCE_WINDOW + 1, bob.address, 5))


def test_same_transaction_twice_is_duplicate(chain: ChainHarness):
    tx = transfer(chain.keys.alice, 0, chain.keys.bob.address, 5)
    chain.submit(tx)
    refuse(chain, tx, "duplicate")
    chain.produce()
    assert chain.tx_status(tx_id(tx))["status"] == "committed"
    refuse(chain, tx, "duplicate")
    assert Transaction.objects.filter(id=tx_id(tx)).count() == 1


def test_same_transaction_twice_in_one_batch_is_duplicate(chain: ChainHarness):
    tx = transfer(chain.keys.alice, 0, chain.keys.bob.address, 5)
    results = chain.batch([tx, tx])
    assert results[0] == {"id": tx_id(tx)}
    assert results[1]["error"]["code"] == "duplicate"


def test_other_pending_transaction_with_the_same_sender_and_nonce_is_duplicate(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    first = transfer(alice, 0, bob.address, 5)
    chain.submit(first)
    refuse(chain, transfer(alice, 0, bob.address, 6), "duplicate")
    refuse(chain, transfer(alice, 0, bob.address, 5, fee=MIN_FEE * 2), "duplicate")
    assert [entry.tx.id for entry in mempool.oldest(10)] == [tx_id(first)]


# -- insufficient_funds -----------------------------------------------------------------------


def test_unfunded_sender_is_insufficient_funds(chain: ChainHarness):
    refuse(chain, transfer(named_key("pauper"), 0, chain.keys.bob.address, 1), "insufficient_funds")


def test_pending_spends_count_against_the_balance(chain: ChainHarness):
    dave, bob = chain.keys.dave, chain.keys.bob
    # Leaves exactly fee + 1 for what follows.
    chain.submit(transfer(dave, 0, bob.address, ALLOCATION - 2 * MIN_FEE - 1))
    refuse(chain, transfer(dave, 1, bob.address, 2), "insufficient_funds")
    chain.submit(transfer(dave, 1, bob.address, 1))
    refuse(chain, transfer(dave, 2, bob.address, 1), "insufficient_funds")
    chain.produce()
    assert chain.account(dave) == (0, 2)


def test_escrow_lock_above_the_balance_is_insufficient_funds(chain: ChainHarness):
    lock = escrow_lock(chain.keys.alice, 0, amount=ALLOCATION, arbiter=chain.keys.arbiter.address, timeout_height=100)
    refuse(chain, lock, "insufficient_funds")


# -- escrow codes -----------------------------------------------------------------------------


def test_pay_or_refund_of_an_unknown_escrow_is_escrow_not_found(chain: ChainHarness):
    arbiter = chain.keys.arbiter
    refuse(chain, escrow_pay(arbiter, 0, escrow=UNKNOWN_ID, to=chain.keys.bob.address, amount=1), "escrow_not_found")
    refuse(chain, escrow_refund(arbiter, 0, escrow=UNKNOWN_ID), "escrow_not_found")


def test_pay_or_refund_of_a_refunded_escrow_is_escrow_closed(chain: ChainHarness):
    arbiter, bob = chain.keys.arbiter, chain.keys.bob
    escrow_id, _timeout = open_escrow(chain)
    chain.submit(escrow_refund(arbiter, 0, escrow=escrow_id))
    chain.produce()
    assert chain.get(f"/v1/chain/escrows/{escrow_id}").json()["status"] == "closed"
    refuse(chain, escrow_pay(arbiter, 1, escrow=escrow_id, to=bob.address, amount=1), "escrow_closed")
    refuse(chain, escrow_refund(arbiter, 1, escrow=escrow_id), "escrow_closed")
    refuse(chain, escrow_refund(chain.keys.alice, 1, escrow=escrow_id), "escrow_closed")


def test_pay_by_someone_other_than_the_arbiter_is_not_arbiter(chain: ChainHarness):
    escrow_id, _timeout = open_escrow(chain)
    bob = chain.keys.bob
    refuse(chain, escrow_pay(chain.keys.alice, 1, escrow=escrow_id, to=bob.address, amount=1), "not_arbiter")
    refuse(chain, escrow_pay(bob, 0, escrow=escrow_id, to=bob.address, amount=1), "not_arbiter")


def test_refund_before_the_timeout_by_someone_other_than_the_arbiter_is_not_arbiter(chain: ChainHarness):
    alice, bob = chain.keys.alice, chain.keys.bob
    amount = 1_000_000
    escrow_id, timeout = open_escrow(chain, amount=amount)
    refuse(chain, escrow_refund(alice, 1, escrow=escrow_id), "not_arbiter")
    refuse(chain, escrow_refund(bob, 0, escrow=escrow_id), "not_arbiter")
    while chain.height < timeout:
        chain.produce()
    # From the timeout height on, anyone may refund: the payer gets what remains.
    alice_before = chain.balance(alice)
    refund = chain.submit(escrow_refund(bob, 0, escrow=escrow_id))
    chain.produce()
    assert chain.tx_status(refund)["status"] == "committed"
    assert chain.balance(alice) == alice_before + amount
    assert chain.get(f"/v1/chain/escrows/{escrow_id}").json()["status"] == "closed"


def test_pay_above_what_remains_is_exceeds_escrow(chain: ChainHarness):
    arbiter, bob = chain.keys.arbiter, chain.keys.bob
    escrow_id, _timeout = open_escrow(chain, amount=1_000_000)
    refuse(chain, escrow_pay(arbiter, 0, escrow=escrow_id, to=bob.address, amount=1_000_001), "exceeds_escrow")
    # Pending pays count against what remains.
    chain.submit(escrow_pay(arbiter, 0, escrow=escrow_id, to=bob.address, amount=600_000))
    refuse(chain, escrow_pay(arbiter, 1, escrow=escrow_id, to=bob.address, amount=400_001), "exceeds_escrow")
    chain.submit(escrow_pay(arbiter, 1, escrow=escrow_id, to=bob.address, amount=400_000))
    chain.produce()
    escrow = chain.get(f"/v1/chain/escrows/{escrow_id}").json()
    assert (escrow["status"], escrow["paid"], escrow["remaining"]) == ("open", 1_000_000, 0)
    refuse(chain, escrow_pay(arbiter, 2, escrow=escrow_id, to=bob.address, amount=1), "exceeds_escrow")


def test_escrow_lock_with_a_timeout_below_the_minimum_is_timeout_too_short(chain: ChainHarness):
    alice, arbiter = chain.keys.alice, chain.keys.arbiter
    chain.produce()
    shortest = chain.height + 1 + MIN_ESCROW_BLOCKS
    too_short = escrow_lock(alice, 0, amount=1, arbiter=arbiter.address, timeout_height=shortest - 1)
    refuse(chain, too_short, "timeout_too_short")
    chain.submit(escrow_lock(alice, 0, amount=1, arbiter=arbiter.address, timeout_height=shortest))


# -- not_found, mempool_full ------------------------------------------------------------------


def test_unknown_transaction_block_or_escrow_is_not_found(chain: ChainHarness):
    assert_error(chain.get(f"{SUBMIT}/{UNKNOWN_ID}"), "not_found")
    assert_error(chain.get(f"{SUBMIT}/not-even-an-id"), "not_found")
    assert_error(chain.get("/v1/chain/blocks/1"), "not_found")
    assert_error(chain.get("/v1/chain/blocks/0"), "not_found")
    assert_error(chain.get(f"/v1/chain/escrows/{UNKNOWN_ID}"), "not_found")
    chain.produce()
    assert chain.get("/v1/chain/blocks/1").status_code == 200
    assert_error(chain.get("/v1/chain/blocks/2"), "not_found")


def test_full_mempool_is_mempool_full(chain: ChainHarness, monkeypatch):
    monkeypatch.setattr(services, "MEMPOOL_MAX", 3)
    alice, bob, carol = chain.keys.alice, chain.keys.bob, chain.keys.carol
    for nonce in range(3):
        chain.submit(transfer(alice, nonce, bob.address, 1))
    refuse(chain, transfer(bob, 0, alice.address, 1), "mempool_full")
    results = chain.batch([transfer(carol, 0, alice.address, 1), transfer(carol, 1, alice.address, 1)])
    assert [r["error"]["code"] for r in results] == ["mempool_full", "mempool_full"]
    # A block empties the mempool: then there is room again.
    chain.produce()
    chain.submit(transfer(bob, 0, alice.address, 1))


def test_mempool_full_in_one_batch_admits_what_fits(chain: ChainHarness, monkeypatch):
    monkeypatch.setattr(services, "MEMPOOL_MAX", 2)
    alice, bob = chain.keys.alice, chain.keys.bob
    txs = [transfer(alice, nonce, bob.address, 1) for nonce in range(3)]
    results = chain.batch(txs)
    assert results[:2] == [{"id": tx_id(txs[0])}, {"id": tx_id(txs[1])}]
    assert results[2]["error"]["code"] == "mempool_full"
    assert not Transaction.objects.filter(id=tx_id(txs[2])).exists()


def test_error_bodies_are_json_objects_with_code_and_message_only(chain: ChainHarness):
    response = chain.post(b"{")
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert body == {"error": {"code": "malformed", "message": body["error"]["message"]}}
