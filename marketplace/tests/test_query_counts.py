"""The statements of a gateway job's hot path, counted so they cannot silently grow back.

A gateway request's submission, its provider's "accepted" and its result each run while
someone waits (the client, or the inference on the same CPUs), and every statement costs
there: these pin how many each one runs. Transaction control differs between databases
(SQLite's BEGIN IMMEDIATE is a statement, PostgreSQL's BEGIN is not) and is left out; a
savepoint is counted as two statements, since a nested atomic block that is not needed
costs them on both. The chain's status is cached as in production (``STATUS_MAX_AGE_S``).
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from marketplace import conf
from marketplace.gateway import keys
from marketplace.gateway.models import GatewayJob
from marketplace.gateway.services import Generation, gateway_submit
from marketplace.models import Deposit, Job
from marketplace.services import messages
from marketplace.tests.support import MODEL

pytestmark = pytest.mark.django_db(transaction=True)

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")


def statements(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if not q["sql"].upper().startswith(TRANSACTION_CONTROL)]


def summary(sqls: list[str]) -> str:
    return "\n".join(sql[:160] for sql in sqls)


@pytest.fixture
def gateway(market, monkeypatch):
    """A key on an open deposit and one online provider; the status of the chain cached."""
    monkeypatch.setattr(conf, "STATUS_MAX_AGE_S", 3600.0)
    owner = get_user_model().objects.create_user("alice")
    market.http.force_login(owner)
    lock = market.lock(market.alice, 1_000_000, timeout_blocks=3 * market.required_blocks())
    response = market.http.post("/v1/deposits", data={"escrow_tx": lock}, content_type="application/json")
    market.pump()
    deposit_id = response.json()["id"]
    assert Deposit.objects.get(pk=deposit_id).state == Deposit.OPEN
    secret = keys.apikey_create(owner=owner, deposit_id=deposit_id).secret
    provider = market.provider("p1")
    key = keys.key_for_secret(secret)
    keys.touch(key)  # the key's use is recorded at most once a minute: not part of each request
    return key, provider


def run_one(key, provider) -> dict[str, list[str]]:
    """One gateway job through submit, accepted and result; the statements of each step."""
    generation = Generation(
        model=MODEL, job_input={"messages": [{"role": "user", "content": "Hi"}]}, max_tokens=8, stream=False
    )
    steps = {}
    with CaptureQueriesContext(connection) as captured:
        job = gateway_submit(key=key, generation=generation, api=GatewayJob.OPENAI)
    steps["submit"] = statements(captured)
    [wire] = provider.assigned()
    provider.handled.add(wire["id"])
    with CaptureQueriesContext(connection) as captured:
        messages.provider_message(provider=provider.address, message={"type": "accepted", "job_id": job.pk})
    steps["accepted"] = statements(captured)
    signed = provider.receipt(wire, "Hello")
    result = {"type": "result", "job_id": job.pk, "output": "Hello", **signed}
    with CaptureQueriesContext(connection) as captured:
        answer = messages.provider_message(provider=provider.address, message=result)
    assert answer["state"] == Job.COMPLETED
    steps["result"] = statements(captured)
    return steps


def test_a_gateway_job_runs_a_pinned_number_of_statements(gateway) -> None:
    key, provider = gateway
    run_one(key, provider)  # the first job leaves nothing the second finds missing
    steps = run_one(key, provider)
    # Submit: the online offers (1, before the transaction); the deposit's lock and reservation (2);
    # a provider's slot (1); the job and its attempt (2); its history (3: submitted and funded
    # in one INSERT, assigned alone, and the dispatch metric's read of it); the gateway's record (1).
    assert len(steps["submit"]) == 10, summary(steps["submit"])
    assert not any("SAVEPOINT" in sql for sql in steps["submit"])
    # Accepted: the presence read (1); the job moved by one conditional UPDATE and read back
    # for its announcement, its attempt and its history (4).
    assert len(steps["accepted"]) == 5, summary(steps["accepted"])
    # Result: the presence read (1); the deposit and job locks (2); the slot freed and the
    # waiting-jobs check (2); attempt, provider, job, history (4); the deposit's books (1).
    # The payout check is a task, after the answer.
    assert len(steps["result"]) == 10, summary(steps["result"])
    assert Job.objects.filter(state=Job.COMPLETED).count() == 2
