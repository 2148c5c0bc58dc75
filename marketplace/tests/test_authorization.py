"""The marketplace refuses the wrong caller (``docs/security.md``).

Another user cannot read or touch a user's jobs, receipts, deposits or API keys (each is
404, like a missing one); another provider cannot report on a provider's job or beat its
heart; a revoked or unknown key is 401, a known key without the right 403, and a key
reads only its own owner's things even when that owner is staff.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from aitbc_site.asgi import application
from chain.protocol.market import build_provider_auth
from marketplace.gateway import keys
from marketplace.gateway.models import ApiKey
from marketplace.models import Deposit, Job, Provider
from marketplace.services import dispatch
from marketplace.tests.support import MODEL, bearer, close_layer, named_key
from marketplace.tests.test_gateway import open_deposit

JSON = "application/json"


def post(client: Client, path: str, body: dict | None = None, **headers):
    return client.post(path, data=json.dumps(body or {}), content_type=JSON, **headers)


@pytest.fixture
def alice(market):
    user = get_user_model().objects.create_user("alice")
    market.http.force_login(user)
    return user


@pytest.fixture
def bob(market) -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user("bob"))
    return client


@pytest.fixture
def completed(market, alice) -> tuple[str, str]:
    """Alice's deposit and a job of hers that a provider completed (it has a signed receipt)."""
    provider = market.provider("p1")
    deposit_id = open_deposit(market, 1_000_000)
    job_id = market.submit().json()["id"]
    market.pump()
    provider.run_all(output="alice's private answer")
    assert Job.objects.get(pk=job_id).receipt is not None
    return deposit_id, job_id


def test_another_user_cannot_read_or_touch_a_users_job(market, completed, bob) -> None:
    _, job_id = completed
    state = Job.objects.get(pk=job_id).state
    assert bob.get("/v1/jobs").json() == []
    assert bob.get("/v1/jobs?state=completed,settled").json() == []
    for response in (
        bob.get(f"/v1/jobs/{job_id}"),
        bob.get(f"/v1/jobs/{job_id}/receipt"),
        post(bob, f"/v1/jobs/{job_id}/cancel"),
        post(bob, f"/v1/jobs/{job_id}/reject", {"reason": "spite"}),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert "alice's private answer" not in response.content.decode()
    assert bob.get(f"/market/jobs/{job_id}").status_code == 404
    assert job_id not in bob.get("/market/?fragment=jobs").content.decode()
    # The search box does not lead another user to the job's page.
    assert bob.get(f"/search?q={job_id}").get("Location", "") != f"/market/jobs/{job_id}"
    job = Job.objects.get(pk=job_id)
    assert job.state == state and not job.dispute_reason
    # A job token opens only its own job.
    other = market.submit(market.bob, http=Client())
    token = other.json()["token"]
    assert Client().get(f"/v1/jobs/{job_id}", HTTP_X_AITBC_JOB_TOKEN=token).status_code == 404
    assert Client().get(f"/v1/jobs/{other.json()['id']}", HTTP_X_AITBC_JOB_TOKEN=token).status_code == 200


def test_another_user_cannot_read_close_or_spend_a_users_deposit(market, completed, bob) -> None:
    deposit_id, _ = completed
    assert bob.get("/v1/deposits").json() == []
    assert bob.get(f"/v1/deposits/{deposit_id}").status_code == 404
    assert post(bob, f"/v1/deposits/{deposit_id}/close").status_code == 404
    paid = market.submit(payment={"deposit": deposit_id}, http=bob)
    assert paid.status_code == 404, paid.content
    key = post(bob, "/v1/keys", {"deposit": deposit_id, "name": "theft"})
    assert key.status_code == 404 and not ApiKey.objects.exists()
    assert Deposit.objects.get(pk=deposit_id).state == Deposit.OPEN


def test_another_user_cannot_list_or_revoke_a_users_key(market, completed, bob) -> None:
    deposit_id, _ = completed
    created = post(market.http, "/v1/keys", {"deposit": deposit_id, "name": "alice's"}).json()
    assert bob.get("/v1/keys").json() == []
    assert post(bob, f"/v1/keys/{created['id']}/revoke").status_code == 404
    page = bob.post("/market/keys/", {"action": "revoke", "key": created["id"]})
    assert page.status_code == 400
    assert created["prefix"] not in bob.get("/market/keys/").content.decode()
    assert ApiKey.objects.get(pk=created["id"]).revoked_at is None


def test_a_key_reads_only_its_owners_things_and_changes_nothing(market, completed, bob) -> None:
    deposit_id, job_id = completed
    secret = keys.apikey_create(owner=get_user_model().objects.get(username="alice"), deposit_id=deposit_id).secret
    with_key = Client(**bearer(secret))
    assert [j["id"] for j in with_key.get("/v1/jobs?state=completed,settled").json()] == [job_id]
    assert with_key.get(f"/v1/jobs/{job_id}/receipt").status_code == 200
    assert with_key.get(f"/v1/deposits/{deposit_id}").status_code == 200
    # Bob's things are not found with alice's key.
    bob_job = market.submit(market.bob, http=bob).json()["id"]
    assert with_key.get(f"/v1/jobs/{bob_job}").status_code == 404
    # A key is for reading and the gateway: every change needs a login.
    for path, body in (
        ("/v1/jobs", {"model": MODEL, "prompt": "Hi", "max_tokens": 4, "max_price": 10, "payment": {}}),
        (f"/v1/jobs/{job_id}/cancel", {}),
        (f"/v1/jobs/{job_id}/reject", {"reason": "x"}),
        ("/v1/deposits", {}),
        (f"/v1/deposits/{deposit_id}/close", {}),
        ("/v1/keys", {}),
    ):
        refused = post(with_key, path, body)
        assert refused.status_code == 403, (path, refused.content)
    assert with_key.get("/v1/keys").status_code == 403
    # Nor does a key open the session-only APIs or the dashboard.
    assert with_key.get("/v1/wallets").status_code == 403
    assert with_key.get("/market/").status_code == 302
    assert Deposit.objects.get(pk=deposit_id).state == Deposit.OPEN


def test_a_staff_members_key_reads_only_their_own_jobs(market, completed, bob) -> None:
    deposit_id, job_id = completed
    ops = get_user_model().objects.create_user("ops", is_staff=True)
    Deposit.objects.filter(pk=deposit_id).update(owner=ops)
    secret = keys.apikey_create(owner=ops, deposit_id=deposit_id).secret
    bob_job = market.submit(market.bob, http=bob).json()["id"]
    staff = Client()
    staff.force_login(ops)
    # Logged in, staff see every job; their key, leaked or shared, sees only their own.
    assert staff.get(f"/v1/jobs/{bob_job}").status_code == 200
    with_key = Client(**bearer(secret))
    assert with_key.get(f"/v1/jobs/{bob_job}").status_code == 404
    assert bob_job not in {j["id"] for j in with_key.get("/v1/jobs").json()}
    assert with_key.get(f"/v1/deposits/{deposit_id}").status_code == 200
    assert Job.objects.get(pk=job_id).owner.username == "alice"


def test_revoked_and_unknown_keys_are_401_everywhere(market, completed) -> None:
    deposit_id, _ = completed
    key = keys.apikey_create(owner=get_user_model().objects.get(username="alice"), deposit_id=deposit_id)
    keys.apikey_revoke(key_id=key.key.pk, owner=None)
    for secret in (key.secret, "aitbc_" + "x" * 40):
        client = Client(**bearer(secret))
        for path in ("/v1/jobs", "/v1/deposits", f"/v1/deposits/{deposit_id}"):
            answer = client.get(path)
            assert answer.status_code == 401 and answer["WWW-Authenticate"], (path, answer.status_code)


@pytest.mark.django_db(transaction=True)
def test_the_gateway_refuses_revoked_keys_and_models_outside_the_allow_list(market, alice) -> None:
    market.provider("p1")
    deposit_id = open_deposit(market, 1_000_000)
    limited = keys.apikey_create(owner=alice, deposit_id=deposit_id, allowed_models=["another:model"]).secret
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    ollama = post(Client(), "/api/chat", chat, **bearer(limited))
    assert ollama.status_code == 403, ollama.content
    openai = post(Client(), "/v1/chat/completions", chat, **bearer(limited))
    assert openai.status_code == 403 and openai.json()["error"]["code"] == "model_not_allowed"
    in_path = post(Client(), f"/k/{limited}/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False})
    assert in_path.status_code == 403
    assert not Job.objects.exists()
    keys.apikey_revoke(key_id=ApiKey.objects.get().pk, owner=alice)
    revoked = Client(**bearer(limited))
    for response in (revoked.get("/api/tags"), revoked.get("/v1/models"), post(revoked, "/api/chat", chat)):
        assert response.status_code == 401, response.content
    assert Client().get(f"/k/{limited}/api/tags").status_code == 401


# -- providers -------------------------------------------------------------------------------------


def test_another_provider_cannot_report_on_a_providers_job(market, alice) -> None:
    first = market.provider("p1")
    market.submit()
    market.pump()
    [job] = first.assigned()
    intruder = market.provider("p2")
    state = Job.objects.get(pk=job["id"]).state
    for message in (
        {"type": "accepted"},
        {"type": "chunk", "index": 0, "text": "forged"},
        {"type": "rejected", "reason": "forged"},
        {"type": "failed", "reason": "forged"},
    ):
        refused = intruder.send(job["id"], message)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_assigned", message
    forged = intruder.result(job, output="forged")
    assert forged.status_code == 409
    stored = Job.objects.get(pk=job["id"])
    assert stored.state == state and stored.provider_id == first.address and stored.receipt is None
    # Its own long poll does not hand it the job either.
    assert dispatch.poll_claim(provider=intruder.address) is None


def test_a_provider_beats_only_its_own_heart(market) -> None:
    first = market.provider("p1", online=False)
    second = market.provider("p2", online=False)
    assert second.heartbeat().status_code == 200
    assert Provider.objects.get(pk=second.address).online
    assert not Provider.objects.get(pk=first.address).online
    for token in ("not-a-token", first.token + "x"):
        client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
        assert post(client, "/v1/providers/heartbeat", {"active": 0}).status_code == 401
    assert not Provider.objects.get(pk=first.address).online
    # A provider token is not a client's credential.
    as_provider = Client(HTTP_AUTHORIZATION=f"Bearer {first.token}")
    assert as_provider.get("/v1/jobs").status_code in (401, 403)
    assert as_provider.get("/v1/deposits").status_code in (401, 403)


@pytest.mark.django_db(transaction=True)
def test_the_provider_socket_refuses_a_hello_signed_by_another_key(market, channel_layer) -> None:
    registered = market.provider("p1", online=False)
    market.provider("p2", online=False)
    claimed = build_provider_auth(registered.key, coordinator=market.coordinator.address, purpose="connect")
    forged = build_provider_auth(named_key("provider/p2"), coordinator=market.coordinator.address, purpose="connect")

    async def scenario() -> None:
        try:
            socket = WebsocketCommunicator(application, "/ws/provider/", headers=[(b"host", b"127.0.0.1")])
            connected, _ = await socket.connect(10)
            assert connected
            await socket.send_json_to({"type": "hello", "auth": claimed["auth"], "signature": forged["signature"]})
            output = await socket.receive_output(10)
            assert output == {"type": "websocket.close", "code": 4401}
        finally:
            await close_layer()

    async_to_sync(scenario)()
    assert not Provider.objects.get(pk=registered.address).online
