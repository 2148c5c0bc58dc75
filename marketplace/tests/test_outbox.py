"""The outbox: nonce order, the node's window, recovery from lost, stale and refused transactions."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from chain.mempool import mempool
from chain.models import Transaction as ChainTx
from chain.protocol.tx import build_transaction
from marketplace import conf
from marketplace.models import CoordinatorAccount, Job, OutboxCursor, OutboxTx
from marketplace.services import outbox
from marketplace.tests.support import MIN_FEE

pytestmark = pytest.mark.django_db


def self_transfers(market, count: int) -> list[OutboxTx]:
    rows = []
    with transaction.atomic():
        for _ in range(count):
            rows.append(
                outbox.enqueue_own(
                    purpose=OutboxTx.NONCE_FILL,
                    kind="transfer",
                    payload={"to": market.coordinator.address, "amount": 1},
                )
            )
    return rows


class CountingClient:
    """The ledger's client, recording the name of each call made to the node."""

    def __init__(self, ledger) -> None:
        self.ledger = ledger
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        method = getattr(self.ledger, name)

        def counted(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return counted


def final_statuses() -> dict[str, int]:
    result: dict[str, int] = {}
    for status in OutboxTx.objects.values_list("status", flat=True):
        result[status] = result.get(status, 0) + 1
    return result


def test_nonces_follow_the_order_of_decisions_and_commit_in_it(market) -> None:
    rows = self_transfers(market, 5)
    assert [row.nonce for row in rows] == [0, 1, 2, 3, 4]
    assert CoordinatorAccount.objects.get().next_nonce == 5
    market.pump()
    heights = [OutboxTx.objects.get(pk=row.pk).height for row in rows]
    assert heights == sorted(heights) and final_statuses() == {"committed": 5}
    assert market.ledger.account(market.coordinator.address)["nonce"] == 5


def test_more_transactions_than_the_nodes_window_go_out_in_turns(market) -> None:
    self_transfers(market, 150)
    first = outbox.outbox_process(client=market.ledger)
    assert first.submitted == 64  # the account nonce and 63 ahead
    rounds = market.pump()
    assert rounds >= 2 and final_statuses() == {"committed": 150}


def test_running_the_outbox_twice_submits_each_transaction_once(market) -> None:
    self_transfers(market, 3)
    assert outbox.outbox_process(client=market.ledger).submitted == 3
    assert outbox.outbox_process(client=market.ledger).submitted == 0
    # A second worker that read the rows as queued sends the same bytes: the node says duplicate.
    OutboxTx.objects.update(status=OutboxTx.QUEUED)
    report = outbox.outbox_process(client=market.ledger)
    assert report.submitted == 0 and report.failed == 0
    assert set(OutboxTx.objects.values_list("status", flat=True)) == {OutboxTx.SUBMITTED}
    assert market.ledger.pending() == 3
    market.pump()
    assert final_statuses() == {"committed": 3}


def test_a_transaction_the_node_lost_is_sent_again_with_the_same_bytes(market, monkeypatch) -> None:
    monkeypatch.setattr(conf, "TRACK_FALLBACK_S", 0)
    [row] = self_transfers(market, 1)
    outbox.outbox_process(client=market.ledger)
    row.refresh_from_db()
    sent_id = row.tx_id
    assert sent_id in mempool and not ChainTx.objects.filter(id=sent_id).exists()
    mempool.clear()  # the node forgot it (restarted: its mempool is in memory)
    report = outbox.outbox_process(client=market.ledger)
    assert report.requeued == 1 and report.submitted == 1
    market.pump()
    row.refresh_from_db()
    assert row.status == OutboxTx.COMMITTED and row.tx_id == sent_id


def test_nonces_used_elsewhere_are_replaced_and_nothing_is_sent_twice(market) -> None:
    """The coordinator's key spent nonces this database never allocated (a restored backup)."""
    key = market.coordinator
    for nonce in range(3):
        market.ledger.submit(
            build_transaction(
                key,
                chain_id=market.ledger.status()["chain_id"],
                type="transfer",
                nonce=nonce,
                fee=MIN_FEE,
                payload={"to": market.alice.address, "amount": 5},
            )
        )
    market.ledger.produce()
    rows = self_transfers(market, 4)
    assert [row.nonce for row in rows] == [0, 1, 2, 3]
    report = outbox.outbox_process(client=market.ledger)
    assert report.renumbered == 3
    market.pump()
    assert final_statuses() == {"committed": 4}
    nonces = sorted(OutboxTx.objects.values_list("nonce", flat=True))
    assert nonces == [3, 4, 5, 6]
    assert market.ledger.account(key.address)["nonce"] == 7
    assert CoordinatorAccount.objects.get().next_nonce == 7


def test_a_transaction_refused_for_good_gives_its_nonce_to_a_filler(market) -> None:
    market.provider("p1")
    job_id = market.submit(max_price=5_000).json()["id"]
    market.pump()
    job = Job.objects.get(pk=job_id)
    with transaction.atomic():
        # A pay above what the escrow holds: the node refuses it at admission, for good.
        bad = outbox.enqueue_own(
            purpose=OutboxTx.JOB_PAY,
            kind="escrow_pay",
            payload={"escrow": job.escrow_id, "to": market.bob.address, "amount": 6_000},
            job=job,
        )
    [after] = self_transfers(market, 1)
    report = outbox.outbox_process(client=market.ledger)
    assert report.failed == 1
    bad.refresh_from_db()
    assert bad.status == OutboxTx.FAILED and bad.error_code == "exceeds_escrow"
    filler = OutboxTx.objects.get(nonce=bad.nonce, status__in=(OutboxTx.QUEUED, OutboxTx.SUBMITTED))
    assert filler.purpose == OutboxTx.NONCE_FILL
    market.pump()
    after.refresh_from_db()
    assert after.status == OutboxTx.COMMITTED  # not stuck behind the gap
    assert market.ledger.escrow(job.escrow_id)["paid"] == 0


def test_a_coordinator_without_fee_money_waits_and_then_sends(market) -> None:
    everything = market.ledger.balance(market.coordinator.address)
    market.ledger.submit(
        build_transaction(
            market.coordinator,
            chain_id=market.ledger.status()["chain_id"],
            type="transfer",
            nonce=0,
            fee=MIN_FEE,
            payload={"to": market.alice.address, "amount": everything - MIN_FEE},
        )
    )
    market.ledger.produce()
    [row] = self_transfers(market, 1)
    outbox.outbox_process(client=market.ledger)  # renumbers past the nonce used above, then cannot pay
    row.refresh_from_db()
    assert row.status == OutboxTx.QUEUED
    # Funded again, it goes out.
    market.alice.forget_nonce()
    market.ledger.submit(
        build_transaction(
            market.alice.key,
            chain_id=market.ledger.status()["chain_id"],
            type="transfer",
            nonce=market.ledger.account(market.alice.address)["nonce"],
            fee=MIN_FEE,
            payload={"to": market.coordinator.address, "amount": 10 * MIN_FEE},
        )
    )
    market.ledger.produce()
    market.pump()
    row.refresh_from_db()
    assert row.status == OutboxTx.COMMITTED


def test_one_pay_and_one_refund_per_job(market) -> None:
    market.provider("p1")
    job = Job.objects.get(pk=market.submit().json()["id"])
    with transaction.atomic():
        first = outbox.enqueue_own_once(
            purpose=OutboxTx.JOB_REFUND, kind="escrow_refund", payload={"escrow": job.escrow_id}, job=job
        )
        second = outbox.enqueue_own_once(
            purpose=OutboxTx.JOB_REFUND, kind="escrow_refund", payload={"escrow": job.escrow_id}, job=job
        )
    assert first.pk == second.pk
    with pytest.raises(IntegrityError), transaction.atomic():
        OutboxTx.objects.create(
            purpose=OutboxTx.JOB_REFUND,
            kind="escrow_refund",
            job=job,
            sender=market.coordinator.address,
            own=True,
            nonce=99,
            payload={"escrow": job.escrow_id},
        )


def test_an_idle_pass_asks_the_node_nothing_while_a_recent_status_is_known(market) -> None:
    node = CountingClient(market.ledger)
    outbox.outbox_process(client=node)
    assert node.calls == ["status"], "no status was known yet"
    node.calls.clear()
    for _ in range(3):
        market.ledger.produce()
        outbox.outbox_process(client=node)
    assert node.calls == []


def test_idle_passes_move_the_cursor_to_the_known_height_and_later_rows_are_found_in_their_blocks(
    market, monkeypatch
) -> None:
    self_transfers(market, 1)
    market.pump()
    market.ledger.produce(2)
    monkeypatch.setattr(conf, "OUTBOX_IDLE_STATUS_MAX_AGE_S", 0.0)
    outbox.outbox_process(client=market.ledger)
    known = market.ledger.status()["height"]
    assert OutboxCursor.objects.get().height == known
    # The known height may be old: the cursor stays there, and the next busy pass reads from it.
    monkeypatch.setattr(conf, "OUTBOX_IDLE_STATUS_MAX_AGE_S", 3600.0)
    market.ledger.produce(3)
    outbox.outbox_process(client=market.ledger)
    assert OutboxCursor.objects.get().height == known
    [row] = self_transfers(market, 1)
    node = CountingClient(market.ledger)
    outbox.outbox_process(client=node)
    market.ledger.produce()
    report = outbox.outbox_process(client=node)
    row.refresh_from_db()
    assert report.committed == 1 and row.status == OutboxTx.COMMITTED
    assert "transaction" not in node.calls, "found in its block, not asked about"
    assert OutboxCursor.objects.get().height == market.ledger.status()["height"]
