"""A job's life paid by a per-job escrow, on the real ledger in the test database."""

from __future__ import annotations

import json

import pytest

from chain.protocol.market import job_charge
from marketplace.models import Job, JobEvent, OutboxTx
from marketplace.tests.support import MODEL

pytestmark = pytest.mark.django_db


def states(job_id: str) -> list[str]:
    return list(JobEvent.objects.filter(job_id=job_id).values_list("state", flat=True))


def test_job_paid_by_escrow_runs_and_settles_with_pay_and_refund(market, kicked) -> None:
    provider = market.provider("p1", input_price=100, output_price=200)
    alice_before = market.ledger.balance(market.alice.address)

    response = market.submit(max_price=10_000, max_tokens=16)
    assert response.status_code == 202, response.content
    body = response.json()
    job_id = body["id"]
    assert body["state"] == "submitted" and body["token"]  # anonymous: a job token
    assert body["escrow_amount"] == 10_000
    # The escrow_lock went to the node at once, and nothing is dispatched before it commits.
    assert OutboxTx.objects.get(job_id=job_id, purpose=OutboxTx.JOB_LOCK).status == OutboxTx.SUBMITTED
    assert provider.assigned() == []

    market.pump()
    job = Job.objects.get(pk=job_id)
    assert job.state == Job.ASSIGNED and job.provider_id == provider.address
    assert ("marketplace.dispatch_job", (job_id,)) in kicked or job.state == Job.ASSIGNED

    [done] = provider.run_all(input_tokens=12, output_tokens=5)
    assert done == job_id
    job.refresh_from_db()
    assert job.state == Job.COMPLETED
    expected = job_charge(input_tokens=12, output_tokens=5, input_price=100, output_price=200)
    assert job.charge == expected

    market.pump()
    job.refresh_from_db()
    assert job.state == Job.SETTLED
    assert job.refund == 10_000 - expected
    escrow = market.ledger.escrow(job.escrow_id)
    assert escrow["paid"] == expected and escrow["status"] == "closed" and escrow["remaining"] == 0
    assert market.ledger.balance(provider.address) == expected
    # The client paid the metered price and the lock's fee, nothing more.
    assert market.ledger.balance(market.alice.address) == alice_before - expected - 1000
    assert states(job_id) == ["submitted", "funded", "assigned", "running", "completed", "paid", "settled"]
    assert JobEvent.objects.filter(job_id=job_id).exclude(at=None).count() == 7


def test_job_detail_is_readable_with_its_token_only(market) -> None:
    market.provider("p1")
    body = market.submit().json()
    job_id, token = body["id"], body["token"]
    assert market.http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert market.http.get(f"/v1/jobs/{job_id}", HTTP_X_AITBC_JOB_TOKEN="nope").status_code == 404
    answer = market.http.get(f"/v1/jobs/{job_id}", HTTP_X_AITBC_JOB_TOKEN=token)
    assert answer.status_code == 200 and answer.json()["id"] == job_id
    assert [e["state"] for e in answer.json()["events"]] == ["submitted"]


def test_no_eligible_provider_under_max_price_is_refused_and_nothing_is_locked(market) -> None:
    market.provider("pricey", input_price=1_000_000, output_price=1_000_000)
    before = market.ledger.balance(market.alice.address)
    response = market.submit(max_price=500, max_tokens=16)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "no_eligible_offer"
    assert "nothing was locked" in error["message"] and "may charge up to" in error["message"]
    assert not Job.objects.exists() and not OutboxTx.objects.exists()
    assert market.ledger.pending() == 0
    market.ledger.produce()
    assert market.ledger.balance(market.alice.address) == before


def test_unknown_model_or_no_provider_online_is_refused(market) -> None:
    market.provider("offline", online=False)
    response = market.submit()
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_eligible_offer"
    assert "no online provider serves" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"arbiter": "someone"}, "wrong_arbiter"),
        ({"amount": 9_999}, "escrow_too_small"),
        ({"timeout_blocks": 50}, "timeout_too_short"),
    ],
)
def test_an_escrow_that_could_not_pay_for_the_job_is_refused(market, change, code) -> None:
    market.provider("p1")
    if change.get("arbiter"):
        lock = market.alice.lock(amount=10_000, arbiter=market.bob.address, timeout_blocks=market.required_blocks() + 5)
    else:
        lock = market.lock(market.alice, change.get("amount", 10_000), timeout_blocks=change.get("timeout_blocks"))
    response = market.submit(max_price=10_000, payment={"escrow_tx": lock})
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == code
    assert not Job.objects.exists() and market.ledger.pending() == 0


def test_one_escrow_pays_for_one_job_only(market) -> None:
    market.provider("p1")
    lock = market.lock(market.alice, 10_000)
    assert market.submit(payment={"escrow_tx": lock}).status_code == 202
    again = market.submit(payment={"escrow_tx": lock})
    assert again.status_code == 409 and again.json()["error"]["code"] == "escrow_used"
    assert Job.objects.count() == 1


def test_escrow_the_node_refuses_answers_its_code_and_leaves_the_job_unfunded(market) -> None:
    market.provider("p1")
    poor = market.bob
    # A nonce far beyond the window: the node refuses it for good (bad_nonce).
    lock = market.lock(poor, 10_000, nonce=500)
    response = market.submit(payment={"escrow_tx": lock})
    assert response.status_code == 409 and response.json()["error"]["code"] == "bad_nonce"
    [job] = Job.objects.all()
    assert job.state == Job.UNFUNDED and "bad_nonce" in job.reason


def test_malformed_requests_are_refused_with_the_error_shape(market) -> None:
    market.provider("p1")
    for body in (
        {"model": MODEL, "max_tokens": 5, "max_price": 10, "payment": {}},
        {
            "model": MODEL,
            "prompt": "x",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5,
            "max_price": 10,
            "payment": {"deposit": "d"},
        },
        {"model": MODEL, "prompt": "x", "max_tokens": 5.0, "max_price": 10, "payment": {"deposit": "d"}},
        {"model": MODEL, "prompt": "x", "max_tokens": 5, "max_price": "10", "payment": {"deposit": "d"}},
        {"model": MODEL, "prompt": "nul \x00", "max_tokens": 5, "max_price": 10, "payment": {"deposit": "d"}},
        {"model": MODEL, "prompt": "x", "max_tokens": 5, "max_price": 10, "payment": {"deposit": "d", "wallet": "w"}},
    ):
        response = market.http.post("/v1/jobs", data=body, content_type="application/json")
        assert response.status_code == 400, body
        assert set(response.json()) == {"error"} and response.json()["error"]["code"] == "malformed"


def test_text_that_cannot_travel_as_utf8_is_refused(market) -> None:
    market.provider("p1")
    body = {"model": MODEL, "prompt": "PLACEHOLDER", "max_tokens": 5, "max_price": 10, "payment": {"deposit": "d"}}
    raw = json.dumps(body).replace("PLACEHOLDER", "\\ud800")  # a lone surrogate, as JSON allows it
    response = market.http.post("/v1/jobs", data=raw, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "malformed"
