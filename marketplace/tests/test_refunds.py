"""Cancelled and expired jobs are refunded, once, however often (or late) the sweep runs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from chain.protocol.market import job_charge
from marketplace import conf, tasks
from marketplace.models import Job, Offer, OutboxTx
from marketplace.services import sweep

pytestmark = pytest.mark.django_db


def submit(market, **kwargs) -> str:
    response = market.submit(**kwargs)
    assert response.status_code == 202, response.content
    return response.json()["id"]


def cancel(market, job_id: str, token: str | None = None):
    headers = {"HTTP_X_AITBC_JOB_TOKEN": token} if token else {}
    return market.http.post(f"/v1/jobs/{job_id}/cancel", data={}, content_type="application/json", **headers)


def refunds(job_id: str) -> int:
    return OutboxTx.objects.filter(job_id=job_id, purpose=OutboxTx.JOB_REFUND).count()


def test_cancelling_a_funded_job_refunds_its_escrow(market) -> None:
    market.provider("p1", online=False)  # registered, so the job is accepted; not online yet
    market.provider("p2")
    response = market.submit(max_price=7_000)
    job_id, token = response.json()["id"], response.json()["token"]
    Offer.objects.update(concurrency=0)  # no room: the job waits, funded
    market.pump()
    assert Job.objects.get(pk=job_id).state == Job.FUNDED
    before = market.ledger.balance(market.alice.address)
    assert cancel(market, job_id).status_code == 404  # not without its token
    answer = cancel(market, job_id, token)
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    market.pump()
    job = Job.objects.get(pk=job_id)
    assert job.state == Job.REFUNDED and job.refund == 7_000
    assert market.ledger.balance(market.alice.address) == before + 7_000
    assert cancel(market, job_id, token).json()["error"]["code"] == "not_cancellable"


def test_a_job_cancelled_before_its_escrow_commits_is_refunded_when_it_does(market) -> None:
    market.provider("p1")
    response = market.submit(max_price=5_000)
    job_id, token = response.json()["id"], response.json()["token"]
    assert cancel(market, job_id, token).status_code == 200
    job = Job.objects.get(pk=job_id)
    assert job.state == Job.CANCELLED and refunds(job_id) == 0  # nothing to refund yet
    market.pump()
    job.refresh_from_db()
    assert job.state == Job.REFUNDED and refunds(job_id) == 1
    assert market.ledger.escrow(job.escrow_id)["status"] == "closed"


def test_expired_jobs_are_refunded_once_even_when_the_sweep_runs_twice(market, monkeypatch) -> None:
    market.provider("p1")
    ids = [submit(market) for _ in range(3)]
    market.pump()
    # All three wait for too long: one assigned but never accepted, one running, one funded.
    _first, second, third = ids
    Job.objects.filter(pk=second).update(state=Job.RUNNING)
    Job.objects.filter(pk=third).update(state=Job.FUNDED, provider=None, offer=None)
    Job.objects.filter(pk__in=ids).update(expires_at=timezone.now() - timedelta(seconds=1))
    # Deadlines are far: expiry, not failover, is what ends these jobs.
    Job.objects.filter(pk__in=ids).update(accept_by=None, deadline_at=timezone.now() + timedelta(hours=1))

    tasks.run_sweep()
    tasks.run_sweep()  # again, as a second beat worker or a late tick would
    assert all(Job.objects.get(pk=i).state == Job.EXPIRED for i in ids)
    assert [refunds(i) for i in ids] == [1, 1, 1]
    market.pump()
    sweep.sweep()
    market.pump()
    for job_id in ids:
        job = Job.objects.get(pk=job_id)
        assert job.state == Job.REFUNDED and job.refund == job.escrow_amount
        escrow = market.ledger.escrow(job.escrow_id)
        assert escrow["status"] == "closed" and escrow["paid"] == 0
    assert [refunds(i) for i in ids] == [1, 1, 1]
    assert Offer.objects.get().active == 0  # the expired runs gave their slots back


def test_the_refund_catches_up_after_downtime(market) -> None:
    """A refund decision lost between commit and its row (a crash) is made again by the sweep."""
    market.provider("p1")
    job_id = submit(market)
    market.pump()
    Job.objects.filter(pk=job_id).update(state=Job.EXPIRED)  # as if the process died right here
    assert refunds(job_id) == 0
    assert sweep.queue_missing_refunds() == 1
    assert sweep.queue_missing_refunds() == 0
    market.pump()
    assert Job.objects.get(pk=job_id).state == Job.REFUNDED


def test_cancel_of_a_running_job_still_pays_the_work_done_within_the_grace(market) -> None:
    provider = market.provider("p1")
    response = market.submit(max_price=9_000)
    job_id, token = response.json()["id"], response.json()["token"]
    market.pump()
    [wire] = provider.assigned()
    provider.accept(job_id)
    assert cancel(market, job_id, token).json()["state"] == "cancelled"
    # The provider was told to stop and reports what it did so far.
    assert provider.result(wire, "Hel", input_tokens=12, output_tokens=1).status_code == 200
    market.pump()
    job = Job.objects.get(pk=job_id)
    charge = job_charge(input_tokens=12, output_tokens=1, input_price=100, output_price=200)
    assert job.state == Job.SETTLED and job.charge == charge and job.refund == 9_000 - charge
    assert market.ledger.balance(provider.address) == charge


def test_cancel_of_a_running_job_without_a_result_refunds_everything_after_the_grace(market) -> None:
    provider = market.provider("p1")
    response = market.submit(max_price=9_000)
    job_id, token = response.json()["id"], response.json()["token"]
    market.pump()
    provider.accept(job_id)
    cancel(market, job_id, token)
    assert sweep.end_cancel_grace() == 0  # still within the grace
    Job.objects.filter(pk=job_id).update(cancel_grace_until=timezone.now() - timedelta(seconds=1))
    assert sweep.end_cancel_grace() == 1
    assert sweep.end_cancel_grace() == 0
    market.pump()
    job = Job.objects.get(pk=job_id)
    assert job.state == Job.REFUNDED and job.refund == 9_000
    assert Offer.objects.get().active == 0
    [wire] = provider.assigned() or [
        {"id": job.id, "model": job.model, "input": job.input, "options": job.options, "deadline_ms": 0}
    ]
    assert provider.result(wire).status_code == 409  # too late: not paid


def test_cancel_without_grace_refunds_at_once(market, monkeypatch) -> None:
    monkeypatch.setattr(conf, "CANCEL_GRACE_S", 0)
    provider = market.provider("p1")
    response = market.submit()
    job_id, token = response.json()["id"], response.json()["token"]
    market.pump()
    provider.accept(job_id)
    cancel(market, job_id, token)
    market.pump()
    assert Job.objects.get(pk=job_id).state == Job.REFUNDED
