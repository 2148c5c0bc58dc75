"""Receipts refused, failover, late results: a provider fault never costs the client, who is charged once."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from chain.protocol.market import job_charge
from marketplace import conf
from marketplace.models import Job, JobAttempt, OutboxTx, Provider
from marketplace.services import providers, sweep
from marketplace.tests.support import named_key

pytestmark = pytest.mark.django_db


def assigned_job(market, **kwargs) -> Job:
    response = market.submit(**kwargs)
    assert response.status_code == 202, response.content
    market.pump()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.state == Job.ASSIGNED
    return job


def holder(market, job: Job, *candidates):
    job.refresh_from_db()
    return next(p for p in candidates if p.address == job.provider_id)


def pays_to(address: str) -> list[OutboxTx]:
    return list(OutboxTx.objects.filter(purpose=OutboxTx.JOB_PAY, payload__to=address))


def _output_differs(receipt):
    receipt["output_sha256"] = "00" * 32


TAMPERINGS = {
    "counts raised after signing": dict(edit=lambda r: r.update(output_tokens=r["output_tokens"] + 1)),
    "signed by another key": dict(key=named_key("impostor")),
    "over max_tokens": dict(output_tokens=17),
    "over the context length": dict(input_tokens=5000),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_refused_receipt_pays_nothing_and_the_job_goes_to_another_provider(market, tampering) -> None:
    first = market.provider("first", input_price=10)
    second = market.provider("second", input_price=20)
    job = assigned_job(market, max_tokens=16)
    assert job.provider_id == first.address
    [wire] = first.assigned()
    first.accept(job.id)
    response = first.result(wire, **TAMPERINGS[tampering])
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "receipt_refused"

    job.refresh_from_db()
    assert job.state == Job.FUNDED and job.charge is None
    assert JobAttempt.objects.get(job=job, provider_id=first.address).state == JobAttempt.FAILED
    assert Provider.objects.get(pk=first.address).jobs_failed == 1
    market.pump()
    job.refresh_from_db()
    assert job.provider_id == second.address  # never the provider that failed it
    second.run_all(input_tokens=10, output_tokens=4)
    market.pump()
    job.refresh_from_db()
    assert job.state == Job.SETTLED
    assert pays_to(first.address) == [] and market.ledger.balance(first.address) == 0
    charge = job_charge(input_tokens=10, output_tokens=4, input_price=20, output_price=200)
    assert market.ledger.escrow(job.escrow_id)["paid"] == charge == market.ledger.balance(second.address)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda job: job.update(input={"prompt": "something else"}), id="input digest"),
        pytest.param(lambda job: job.update(id="job-other"), id="job id"),
        pytest.param(lambda job: job.update(model="other:1b"), id="model"),
    ],
)
def test_a_receipt_for_another_input_job_or_model_is_refused(market, change) -> None:
    first = market.provider("first", input_price=10)
    market.provider("second", input_price=20)
    job = assigned_job(market)
    [wire] = first.assigned()
    change(wire)
    signed = first.receipt(wire, "Hello")
    response = first.send(job.id, {"type": "result", "output": "Hello", **signed})
    assert response.status_code == 409 and response.json()["error"]["code"] == "receipt_refused"
    assert Job.objects.get(pk=job.pk).state == Job.FUNDED


def test_a_receipt_whose_output_digest_differs_from_the_output_is_refused(market) -> None:
    first = market.provider("first")
    job = assigned_job(market)
    [wire] = first.assigned()
    signed = first.receipt(wire, "what was metered")
    response = first.send(job.id, {"type": "result", "output": "something shorter", **signed})
    assert response.status_code == 409 and "output_sha256" in response.json()["error"]["message"]


def test_a_provider_that_disconnects_loses_the_job_and_the_client_is_charged_once(market) -> None:
    first = market.provider("first", input_price=10)
    second = market.provider("second", input_price=20)
    job = assigned_job(market)
    first.accept(job.id)
    assert Job.objects.get(pk=job.pk).state == Job.RUNNING

    providers.provider_disconnected(address=first.address)  # its last websocket closed
    job.refresh_from_db()
    assert job.state == Job.FUNDED and job.provider_id is None
    market.pump()
    assert holder(market, job, first, second) is second
    second.run_all(input_tokens=12, output_tokens=5)

    # The provider that lost the job comes back with a result: refused, never paid.
    [late] = [{"id": job.id, "model": job.model, "input": job.input, "options": job.options, "deadline_ms": 0}]
    response = first.result(late)
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_assigned"

    market.pump()
    job.refresh_from_db()
    charge = job_charge(input_tokens=12, output_tokens=5, input_price=20, output_price=200)
    assert job.state == Job.SETTLED and job.charge == charge
    assert OutboxTx.objects.filter(job=job, purpose=OutboxTx.JOB_PAY).count() == 1
    escrow = market.ledger.escrow(job.escrow_id)
    assert escrow["paid"] == charge and escrow["status"] == "closed"
    assert market.ledger.balance(first.address) == 0
    attempts = list(JobAttempt.objects.filter(job=job).order_by("number").values_list("provider_id", "state"))
    assert attempts == [(first.address, "failed"), (second.address, "completed")]
    event_states = [e["state"] for e in market.http.get(f"/v1/jobs/{job.id}", **staff(market)).json()["events"]]
    assert event_states[:6] == ["submitted", "funded", "assigned", "running", "failed", "funded"]


def staff(market) -> dict:
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("ops", is_staff=True)
    market.http.force_login(user)
    return {}


def test_rejected_failed_and_late_providers_lose_the_job(market, monkeypatch) -> None:
    providers_ = [
        market.provider(name, input_price=price) for name, price in (("a", 1000), ("b", 2000), ("c", 3000), ("d", 4000))
    ]
    monkeypatch.setattr(conf, "MAX_ATTEMPTS", 4)
    job = assigned_job(market)
    a, b, c, d = providers_
    assert a.send(job.id, {"type": "rejected", "reason": "busy"}).status_code == 200
    market.pump()
    assert holder(market, job, *providers_) is b
    b.accept(job.id)
    assert b.send(job.id, {"type": "failed", "reason": "backend crashed"}).status_code == 200
    market.pump()
    assert holder(market, job, *providers_) is c
    # c never accepts: the sweep takes the job away after the accept timeout.
    Job.objects.filter(pk=job.pk).update(accept_by=timezone.now() - timedelta(seconds=1))
    assert sweep.fail_missed_deadlines() == 1
    market.pump()
    assert holder(market, job, *providers_) is d
    d.accept(job.id)
    Job.objects.filter(pk=job.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    assert sweep.fail_missed_deadlines() == 1
    job.refresh_from_db()
    assert job.state == Job.FAILED and "4 providers failed it" in job.reason
    market.pump()
    job.refresh_from_db()
    assert job.state == Job.REFUNDED and job.refund == job.escrow_amount
    assert market.ledger.escrow(job.escrow_id)["paid"] == 0
    counts = {p.name: Provider.objects.get(pk=p.address) for p in providers_}
    assert counts["a"].jobs_rejected == 1 and counts["b"].jobs_failed == 1
    assert counts["c"].jobs_failed == 1 and counts["d"].jobs_failed == 1


def test_messages_about_a_job_the_provider_does_not_hold_are_refused(market) -> None:
    first = market.provider("first", input_price=1)
    other = market.provider("other", input_price=2)
    job = assigned_job(market)
    for message in (
        {"type": "accepted"},
        {"type": "chunk", "index": 0, "text": "x"},
        {"type": "failed", "reason": "x"},
    ):
        response = other.send(job.id, message)
        assert response.status_code == 409 and response.json()["error"]["code"] == "not_assigned"
    assert first.send(job.id, {"type": "chunk", "index": 0, "text": "He"}).status_code == 200
    assert first.send("job-unknown", {"type": "accepted"}).status_code == 404
    bad = first.post(f"/v1/providers/jobs/{job.id}/events", {"type": "accepted", "job_id": "another"})
    assert bad.status_code == 400
    floats = first.http.post(
        f"/v1/providers/jobs/{job.id}/events",
        data=json.dumps({"type": "chunk", "index": 0.0, "text": "x"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {first.token}",
    )
    assert floats.status_code == 400 and floats.json()["error"]["code"] == "malformed"
    no_token = market.http.post(f"/v1/providers/jobs/{job.id}/events", data="{}", content_type="application/json")
    assert no_token.status_code == 401
