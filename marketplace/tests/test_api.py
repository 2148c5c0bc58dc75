"""The marketplace's HTTP API: who may call what, the answers' shapes, custodial payment, disputes, polls."""

from __future__ import annotations

import json
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

from chain.protocol.market import build_provider_auth, verify_receipt
from marketplace import conf
from marketplace.models import AuthNonce, Job, Offer, Provider
from marketplace.services import dispatch
from marketplace.tests.support import MODEL, named_key
from wallet import services as wallet_services
from wallet.keystore import encrypt_key

pytestmark = pytest.mark.django_db


def post(http, path, body, **headers):
    return http.post(path, data=json.dumps(body), content_type="application/json", **headers)


def test_coordinator_answers_its_address_chain_and_escrow_rules(market) -> None:
    body = market.http.get("/v1/coordinator").json()
    assert set(body) == {"address", "chain_id", "node_url", "min_escrow_blocks", "min_fee"}
    assert body["address"] == market.coordinator.address
    assert body["chain_id"] == market.ledger.status()["chain_id"] and body["min_fee"] == 1000
    # The job's time to live and the settlement margin, in blocks (1 s blocks here).
    assert body["min_escrow_blocks"] == conf.JOB_TTL_S + conf.SETTLE_MARGIN_S


def test_registration_checks_the_signed_auth(market) -> None:
    key = named_key("provider/x")
    offers = [{"model": MODEL, "input_price": 1, "output_price": 2, "context_length": 100, "concurrency": 1}]

    def register(auth, **extra):
        return post(market.http, "/v1/providers/register", {**auth, "name": "x", "url": "", "offers": offers, **extra})

    elsewhere = build_provider_auth(key, coordinator=market.alice.address, purpose="register")
    assert register(elsewhere).status_code == 401
    wrong_purpose = build_provider_auth(key, coordinator=market.coordinator.address, purpose="connect")
    assert register(wrong_purpose).status_code == 401
    stale = build_provider_auth(
        key, coordinator=market.coordinator.address, purpose="register", now_ms=int(time.time() * 1000) - 120_000
    )
    assert register(stale).status_code == 401
    forged = build_provider_auth(key, coordinator=market.coordinator.address, purpose="register")
    forged["auth"]["provider"] = market.alice.address
    assert register(forged).status_code == 401
    good = build_provider_auth(key, coordinator=market.coordinator.address, purpose="register")
    first = register(good)
    assert first.status_code == 200 and set(first.json()) == {"provider", "token"}
    replay = register(good)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == "replayed"
    assert (
        register(build_provider_auth(key, coordinator=market.coordinator.address, purpose="register"), x=1).json()[
            "error"
        ]["code"]
        == "malformed"
    )
    assert AuthNonce.objects.count() == 1
    provider = Provider.objects.get()
    assert provider.token_hash != first.json()["token"] and len(provider.token_hash) == 64


def test_registration_replaces_the_offers_and_the_token(market) -> None:
    p = market.provider("p1")
    old_token = p.token
    p.model = "other:7b"
    p.register()
    assert p.token != old_token
    assert list(Offer.objects.filter(withdrawn=False).values_list("model", flat=True)) == ["other:7b"]
    stale = post(market.http, "/v1/providers/heartbeat", {"active": 0}, HTTP_AUTHORIZATION=f"Bearer {old_token}")
    assert stale.status_code == 401
    assert p.heartbeat(1).status_code == 200
    assert Provider.objects.get().reported_active == 1
    offers = market.http.get("/v1/offers").json()
    assert [o["model"] for o in offers] == ["other:7b"]
    assert offers[0]["online"] is True


def test_providers_and_offers_are_public(market) -> None:
    client = Client()
    market.provider("cheap", input_price=1)
    market.provider("dear", input_price=5, online=False)
    providers = client.get("/v1/providers").json()
    assert [p["name"] for p in providers] == sorted(["cheap", "dear"], key=lambda n: named_key(f"provider/{n}").address)
    entry = next(p for p in providers if p["name"] == "cheap")
    assert entry["online"] is True and entry["reputation"]["success_rate"] == 0.5
    assert set(entry["reputation"]) == {
        "completed",
        "failed",
        "rejected",
        "disputed",
        "success_rate",
        "avg_latency_ms",
        "uptime",
    }
    assert "token_hash" not in json.dumps(providers)
    online = client.get("/v1/offers?online=1").json()
    assert [o["provider_name"] for o in online] == ["cheap"]
    assert len(client.get(f"/v1/offers?model={MODEL}").json()) == 2


def test_public_endpoints_are_rate_limited(market, monkeypatch) -> None:
    monkeypatch.setattr(conf, "PUBLIC_RATE", "3/min")
    cache.clear()
    try:
        answers = [market.http.get("/v1/offers").status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        assert market.http.get("/v1/offers").json()["error"]["code"] == "rate_limited"
    finally:
        cache.clear()


def test_job_list_shows_the_callers_active_jobs_and_staff_see_all(market) -> None:
    client = Client()
    market.provider("p1")
    users = get_user_model()
    alice, bob = users.objects.create_user("alice"), users.objects.create_user("bob")
    market.http.force_login(alice)
    mine = market.submit(max_price=5_000).json()["id"]
    client.force_login(bob)
    theirs = market.submit(market.bob, max_price=6_000, http=client).json()["id"]
    assert [j["id"] for j in market.http.get("/v1/jobs").json()] == [mine]
    assert market.http.get(f"/v1/jobs/{theirs}").status_code == 404
    assert market.http.get("/v1/jobs?state=settled").json() == []
    assert [j["id"] for j in market.http.get(f"/v1/jobs?state=submitted&model={MODEL}").json()] == [mine]
    assert market.http.get("/v1/jobs?model=nope").json() == []
    assert market.http.get("/v1/jobs?state=bogus").status_code == 400
    ops = users.objects.create_user("ops", is_staff=True)
    market.http.force_login(ops)
    assert {j["id"] for j in market.http.get("/v1/jobs").json()} == {mine, theirs}
    assert market.http.get(f"/v1/jobs/{theirs}").status_code == 200
    market.http.logout()
    assert market.http.get("/v1/jobs").status_code == 403


def test_custodial_payment_signs_the_escrow_with_the_users_stored_wallet(market) -> None:
    user = get_user_model().objects.create_user("alice")
    market.http.force_login(user)
    wallet_services.wallet_import_keystore(
        owner=user, name="main", keystore=encrypt_key(market.alice.key, "wallet pass"), password="wallet pass"
    )
    provider = market.provider("p1")
    wrong = market.submit(payment={"wallet": market.alice.address, "password": "nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "wrong_password"
    unknown = market.submit(payment={"wallet": market.bob.address, "password": "wallet pass"})
    assert unknown.status_code == 404
    ids = []
    for _ in range(2):  # two at once: the second lock takes the next nonce
        response = market.submit(max_price=8_000, payment={"wallet": market.alice.address, "password": "wallet pass"})
        assert response.status_code == 202, response.content
        assert response.json()["token"] is None and response.json()["payment"] == "wallet"
        ids.append(response.json()["id"])
    market.pump()
    provider.run_all()
    market.pump()
    for job_id in ids:
        job = Job.objects.get(pk=job_id)
        assert job.state == Job.SETTLED and job.payer == market.alice.address
        escrow = market.ledger.escrow(job.escrow_id)
        assert escrow["job_id"] == job_id and escrow["arbiter"] == market.coordinator.address


def test_receipt_and_dispute(market) -> None:
    user = get_user_model().objects.create_user("alice")
    market.http.force_login(user)
    provider = market.provider("p1")
    job_id = market.submit().json()["id"]
    early = post(market.http, f"/v1/jobs/{job_id}/reject", {"reason": "bad"})
    assert early.status_code == 409 and early.json()["error"]["code"] == "not_disputable"
    assert market.http.get(f"/v1/jobs/{job_id}/receipt").status_code == 404
    market.pump()
    provider.run_all(output="The answer")
    receipt = market.http.get(f"/v1/jobs/{job_id}/receipt").json()
    assert verify_receipt(receipt)["job_id"] == job_id
    detail = market.http.get(f"/v1/jobs/{job_id}").json()
    assert detail["output"] == "The answer" and detail["state"] == "completed"
    assert post(market.http, f"/v1/jobs/{job_id}/reject", {}).status_code == 400
    disputed = post(market.http, f"/v1/jobs/{job_id}/reject", {"reason": "off topic"})
    assert disputed.status_code == 200 and disputed.json()["dispute_reason"] == "off topic"
    assert post(market.http, f"/v1/jobs/{job_id}/reject", {"reason": "again"}).json()["error"]["code"] == (
        "already_disputed"
    )
    assert Provider.objects.get().jobs_disputed == 1
    rep = next(p for p in market.http.get("/v1/providers").json())["reputation"]
    assert rep["completed"] == 1 and rep["disputed"] == 1 and rep["success_rate"] == 0.5
    market.pump()
    assert Job.objects.get(pk=job_id).state == Job.SETTLED  # the payment stands


def test_dispute_window(market, monkeypatch) -> None:
    user = get_user_model().objects.create_user("alice")
    market.http.force_login(user)
    provider = market.provider("p1")
    job_id = market.submit().json()["id"]
    market.pump()
    provider.run_all()
    monkeypatch.setattr(conf, "DISPUTE_WINDOW_S", 0)
    answer = post(market.http, f"/v1/jobs/{job_id}/reject", {"reason": "late"})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "dispute_window_closed"


def test_long_poll_hands_over_an_assigned_job_once(market, monkeypatch) -> None:
    monkeypatch.setattr(conf, "POLL_WAIT_S", 1)
    poller = market.provider("poller", online=False)
    assert poller.poll().status_code == 204  # nothing yet; the poll counts as presence
    assert Provider.objects.get().online
    job_id = market.submit().json()["id"]
    market.pump()
    assert Job.objects.get(pk=job_id).delivered_at is None  # no websocket: waits for the poll
    answer = poller.poll()
    assert answer.status_code == 200
    job = answer.json()["job"]
    assert set(job) == {"id", "model", "input", "options", "deadline_ms"}
    assert job["id"] == job_id and job["input"] == {"prompt": "Hi"}
    assert job["options"] == {"max_tokens": 16, "temperature_milli": 0, "stop": []}
    assert poller.poll().status_code == 204
    assert poller.accept(job_id).status_code == 200
    assert poller.result(job).json() == {"job_id": job_id, "state": "completed", "charge": 3}
    assert market.http.post("/v1/providers/poll").status_code == 401


def test_options_travel_as_integers(market) -> None:
    p = market.provider("p1")
    response = market.submit(temperature=0.7, seed=42, stop=["\n\n"])
    assert response.status_code == 202
    market.pump()
    [job] = p.assigned()
    assert job["options"] == {"max_tokens": 16, "temperature_milli": 700, "seed": 42, "stop": ["\n\n"]}
    bad = market.submit(temperature=True)
    assert bad.status_code == 400


def test_the_schema_documents_every_marketplace_view_with_its_errors(market) -> None:
    schema = market.http.get("/api/schema/?format=json").json()
    paths = {path: ops for path, ops in schema["paths"].items() if path.startswith(("/v1/jobs", "/v1/providers"))}
    paths |= {path: ops for path, ops in schema["paths"].items() if path.startswith(("/v1/offers", "/v1/deposits"))}
    paths["/v1/coordinator"] = schema["paths"]["/v1/coordinator"]
    assert len(paths) == 15
    for path, operations in paths.items():
        for method, operation in operations.items():
            codes = {int(code) for code in operation["responses"]}
            assert any(code >= 400 for code in codes), f"{method} {path} documents no error"
            assert operation.get("description") or operation.get("summary"), f"{method} {path} undocumented"


def test_dispatch_of_an_unknown_or_settled_job_is_a_no_op(market) -> None:
    assert dispatch.job_assign(job_id="job-none") is None
