"""Deposits: many jobs on one escrow, no block wait, batched payouts, books equal to the chain's escrow."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from chain.protocol.market import job_charge
from marketplace import conf, tasks
from marketplace.models import Deposit, DepositPayout, Job, OutboxTx
from marketplace.services import sweep

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(market):
    user = get_user_model().objects.create_user("alice")
    market.http.force_login(user)
    return user


def open_deposit(market, amount: int) -> str:
    lock = market.lock(market.alice, amount, timeout_blocks=3 * market.required_blocks())
    response = market.http.post("/v1/deposits", data={"escrow_tx": lock}, content_type="application/json")
    assert response.status_code == 202, response.content
    assert response.json()["state"] == "pending"
    market.pump()
    deposit = market.http.get(f"/v1/deposits/{response.json()['id']}").json()
    assert deposit["state"] == "open"
    return deposit["id"]


def deposit_job(market, deposit_id: str, max_price: int = 5_000):
    return market.submit(max_price=max_price, payment={"deposit": deposit_id})


def assert_books_equal_chain(market, deposit_id: str) -> dict:
    deposit = Deposit.objects.get(pk=deposit_id)
    escrow = market.ledger.escrow(deposit.escrow_id)
    assert deposit.amount == escrow["amount"]
    assert deposit.paid == escrow["paid"]
    if escrow["status"] == "open":
        assert deposit.amount - deposit.paid == escrow["remaining"]
    return escrow


def test_jobs_on_a_deposit_start_without_a_block_and_are_paid_in_batches(
    market, owner, monkeypatch, kicked, django_capture_on_commit_callbacks
) -> None:
    monkeypatch.setattr(conf, "PAYOUT_BATCH_COUNT", 3)
    p1 = market.provider("p1", input_price=100, concurrency=4)
    deposit_id = open_deposit(market, 100_000)
    height = market.ledger.height

    ids = []
    for _ in range(4):
        response = deposit_job(market, deposit_id)
        assert response.status_code == 202 and response.json()["state"] == "funded"
        ids.append(response.json()["id"])
    from marketplace.services import dispatch

    assert dispatch.dispatch_pending() == 4
    assert market.ledger.height == height  # not one block waited for
    books = market.http.get(f"/v1/deposits/{deposit_id}").json()
    assert books["reserved"] == 4 * 5_000 and books["available"] == 100_000 - 20_000

    charges = []
    for job in p1.assigned()[:2]:
        p1.handled.add(job["id"])
        p1.accept(job["id"])
        assert p1.result(job, input_tokens=10, output_tokens=3).status_code == 200
        charges.append(job_charge(input_tokens=10, output_tokens=3, input_price=100, output_price=200))
    # Two owed: below the batch size, nothing sent yet.
    assert DepositPayout.objects.count() == 0
    assert Job.objects.filter(state=Job.COMPLETED).count() == 2
    job = p1.assigned()[0]
    p1.handled.add(job["id"])
    p1.accept(job["id"])
    # Once the third completion commits (after its client's answer), a task checks the batch.
    with django_capture_on_commit_callbacks(execute=True):
        p1.result(job, input_tokens=20, output_tokens=6)
    charges.append(job_charge(input_tokens=20, output_tokens=6, input_price=100, output_price=200))
    assert ("marketplace.deposit_payout", (deposit_id,)) in kicked
    assert DepositPayout.objects.count() == 0
    tasks.deposit_payout(deposit_id)
    [payout] = DepositPayout.objects.all()
    assert payout.amount == sum(charges) and payout.jobs == 3 and payout.provider == p1.address

    market.pump()
    escrow = assert_books_equal_chain(market, deposit_id)
    assert escrow["paid"] == sum(charges) == market.ledger.balance(p1.address)
    assert Job.objects.filter(state=Job.SETTLED).count() == 3
    books = market.http.get(f"/v1/deposits/{deposit_id}").json()
    assert books["charged"] == books["paid"] == sum(charges)
    assert books["reserved"] == 5_000 and books["owed"] == 0


def test_a_job_is_never_accepted_beyond_what_the_deposit_covers(market, owner) -> None:
    market.provider("p1", concurrency=10)
    deposit_id = open_deposit(market, 12_000)
    assert deposit_job(market, deposit_id, 5_000).status_code == 202
    assert deposit_job(market, deposit_id, 5_000).status_code == 202
    refused = deposit_job(market, deposit_id, 5_000)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "insufficient_deposit"
    assert deposit_job(market, deposit_id, 2_000).status_code == 202
    assert Deposit.objects.get(pk=deposit_id).reserved == 12_000


def test_unused_reservations_come_back_at_settlement(market, owner) -> None:
    p1 = market.provider("p1")
    deposit_id = open_deposit(market, 10_000)
    job_id = deposit_job(market, deposit_id, 10_000).json()["id"]
    from marketplace.services import dispatch

    dispatch.dispatch_pending()
    p1.run_all(input_tokens=10, output_tokens=3)
    charge = job_charge(input_tokens=10, output_tokens=3, input_price=100, output_price=200)
    deposit = Deposit.objects.get(pk=deposit_id)
    assert deposit.reserved == 0 and deposit.charged == charge and deposit.available == 10_000 - charge
    assert Job.objects.get(pk=job_id).charge == charge
    # The freed part takes a new job at once.
    assert deposit_job(market, deposit_id, 10_000 - charge).status_code == 202


def test_closing_pays_what_is_owed_and_refunds_the_rest(market, owner) -> None:
    p1 = market.provider("p1")
    p2 = market.provider("p2", concurrency=1)
    deposit_id = open_deposit(market, 50_000)
    alice_before = market.ledger.balance(market.alice.address)
    ids = [deposit_job(market, deposit_id).json()["id"] for _ in range(3)]
    from marketplace.services import dispatch

    dispatch.dispatch_pending()
    done = p1.run_all(input_tokens=10, output_tokens=3) + p2.run_all(input_tokens=30, output_tokens=9)
    assert sorted(done) == sorted(ids)
    charges = {
        p1.address: 2 * job_charge(input_tokens=10, output_tokens=3, input_price=100, output_price=200),
        p2.address: job_charge(input_tokens=30, output_tokens=9, input_price=100, output_price=200),
    }
    response = market.http.post(f"/v1/deposits/{deposit_id}/close")
    assert response.status_code == 200 and response.json()["state"] == "closing"
    refused = deposit_job(market, deposit_id)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "deposit_not_open"
    market.pump()
    deposit = Deposit.objects.get(pk=deposit_id)
    escrow = assert_books_equal_chain(market, deposit_id)
    assert deposit.state == Deposit.CLOSED and escrow["status"] == "closed"
    assert deposit.paid == sum(charges.values()) and deposit.refunded == 50_000 - deposit.paid
    assert {p: market.ledger.balance(p) for p in charges} == charges
    assert market.ledger.balance(market.alice.address) == alice_before + deposit.refunded
    # The refund went after the payouts, never before (nonce order).
    nonces = {
        row.purpose: row.nonce for row in OutboxTx.objects.filter(deposit_id=deposit_id, own=True).order_by("nonce")
    }
    payout_nonces = list(
        OutboxTx.objects.filter(deposit_id=deposit_id, purpose=OutboxTx.DEPOSIT_PAYOUT).values_list("nonce", flat=True)
    )
    assert max(payout_nonces) < nonces[OutboxTx.DEPOSIT_REFUND]
    assert all(job.state == Job.SETTLED for job in Job.objects.filter(pk__in=ids))


def test_old_charges_are_paid_by_the_sweep(market, owner, monkeypatch) -> None:
    p1 = market.provider("p1")
    deposit_id = open_deposit(market, 20_000)
    deposit_job(market, deposit_id)
    from marketplace.services import dispatch

    dispatch.dispatch_pending()
    p1.run_all()
    sweep.sweep()
    assert DepositPayout.objects.count() == 0  # young and small: waits for company
    Job.objects.update(completed_at=timezone.now() - timedelta(seconds=conf.PAYOUT_BATCH_AGE_S + 1))
    sweep.sweep()
    sweep.sweep()
    assert DepositPayout.objects.count() == 1
    market.pump()
    assert_books_equal_chain(market, deposit_id)
    assert Job.objects.get().state == Job.SETTLED


def test_a_due_batch_lost_after_the_answer_is_paid_by_the_sweep(market, owner, monkeypatch) -> None:
    # The payout check runs after the completion commits; these results' checks never run
    # (this test's transaction never commits), as if the coordinator died right after answering.
    monkeypatch.setattr(conf, "PAYOUT_BATCH_COUNT", 2)
    p1 = market.provider("p1")
    deposit_id = open_deposit(market, 20_000)
    for _ in range(2):
        deposit_job(market, deposit_id)
    from marketplace.services import dispatch

    dispatch.dispatch_pending()
    assert len(p1.run_all()) == 2
    assert DepositPayout.objects.count() == 0 and Job.objects.filter(state=Job.COMPLETED).count() == 2
    sweep.sweep()
    [payout] = DepositPayout.objects.all()
    assert payout.jobs == 2
    market.pump()
    assert_books_equal_chain(market, deposit_id)
    assert set(Job.objects.values_list("state", flat=True)) == {Job.SETTLED}


def test_cancelled_deposit_jobs_release_their_reservation(market, owner) -> None:
    market.provider("p1", online=False)
    market.provider("p2")
    deposit_id = open_deposit(market, 20_000)
    job_id = deposit_job(market, deposit_id).json()["id"]
    response = market.http.post(f"/v1/jobs/{job_id}/cancel", data={}, content_type="application/json")
    assert response.status_code == 200 and response.json()["state"] == "refunded"
    assert Deposit.objects.get(pk=deposit_id).reserved == 0


def test_deposits_are_their_owners_only(market, owner) -> None:
    client = Client()
    deposit_id = open_deposit(market, 20_000)
    market.provider("p1")
    other = get_user_model().objects.create_user("mallory")
    client.force_login(other)
    assert client.get(f"/v1/deposits/{deposit_id}").status_code == 404
    assert client.get("/v1/deposits").json() == []
    response = market.submit(payment={"deposit": deposit_id}, http=client)
    assert response.status_code == 404
    client.logout()
    assert client.get("/v1/deposits").status_code == 403
    anonymous = market.submit(payment={"deposit": deposit_id}, http=client)
    assert anonymous.status_code == 403


def test_a_deposit_near_its_timeout_stops_taking_jobs_and_closes(market, owner) -> None:
    market.provider("p1")
    lock = market.lock(market.alice, 20_000, timeout_blocks=2 * market.required_blocks() + 3)
    body = market.http.post("/v1/deposits", data=json.dumps({"escrow_tx": lock}), content_type="application/json")
    deposit_id = body.json()["id"]
    market.pump()
    assert deposit_job(market, deposit_id).status_code == 202
    market.ledger.produce(market.required_blocks() + 5)
    response = deposit_job(market, deposit_id)
    assert response.status_code == 409 and response.json()["error"]["code"] == "deposit_expiring"
    sweep.sweep()
    assert Deposit.objects.get(pk=deposit_id).state == Deposit.CLOSING
