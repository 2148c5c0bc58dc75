"""The gateway without a model: API keys, refusals in each API's shape, log redaction, and streams.

Streams are driven by scripted providers over the coordinator's HTTP endpoints, on the
in-memory channel layer and on Redis: tokens reach the client as they come, a failover
before the first token is invisible, a provider lost after it ends the stream charging
nothing, a client gone mid-answer pays for what was produced. The gateway reads the
database from its own threads, hence transactional tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from aitbc_site.errors import ApiError
from aitbc_site.logredact import KeyRedactingFilter, redact_path, redact_text
from aitbc_site.server import access_logger
from marketplace.gateway import keys
from marketplace.gateway.models import ApiKey, GatewayJob
from marketplace.gateway.services import Generation, gateway_submit
from marketplace.gateway.streaming import Finished, GatewayStream, Token
from marketplace.models import Deposit, Job
from marketplace.tests.support import MODEL, bearer, close_layer

pytestmark = pytest.mark.django_db(transaction=True)

PROMPT = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def owner(market):
    user = get_user_model().objects.create_user("alice")
    market.http.force_login(user)
    return user


def open_deposit(market, amount: int) -> str:
    lock = market.lock(market.alice, amount, timeout_blocks=3 * market.required_blocks())
    response = market.http.post("/v1/deposits", data={"escrow_tx": lock}, content_type="application/json")
    assert response.status_code == 202, response.content
    market.pump()
    assert Deposit.objects.get(pk=response.json()["id"]).state == Deposit.OPEN
    return response.json()["id"]


@pytest.fixture
def deposit_id(market, owner) -> str:
    return open_deposit(market, 1_000_000)


@pytest.fixture
def secret(owner, deposit_id) -> str:
    return keys.apikey_create(owner=owner, deposit_id=deposit_id, name="test").secret


def post(client: Client, path: str, body: dict, secret: str | None = None):
    headers = bearer(secret) if secret else {}
    return client.post(path, data=json.dumps(body), content_type="application/json", **headers)


# -- keys ----------------------------------------------------------------------------------------


def test_a_key_is_shown_once_and_stored_hashed(owner, deposit_id) -> None:
    created = keys.apikey_create(owner=owner, deposit_id=deposit_id, spending_cap=500, allowed_models=[MODEL])
    stored = ApiKey.objects.get(pk=created.key.pk)
    assert created.secret.startswith("aitbc_") and len(created.secret) > 40
    assert stored.key_hash == hashlib.sha256(created.secret.encode()).hexdigest()
    assert created.secret not in json.dumps(list(ApiKey.objects.values()), default=str)
    assert stored.prefix == created.secret[:12] and stored.deposit_id == deposit_id
    assert keys.key_for_secret(created.secret).pk == stored.pk


def test_a_key_needs_an_open_deposit_of_its_owner(market, owner, deposit_id) -> None:
    stranger = get_user_model().objects.create_user("mallory")
    with pytest.raises(ApiError) as refused:
        keys.apikey_create(owner=stranger, deposit_id=deposit_id)
    assert refused.value.status == 404
    with pytest.raises(ApiError) as none:
        keys.apikey_create(owner=stranger)
    assert none.value.code == "no_deposit"
    # Without a deposit id the owner's newest open deposit is taken.
    assert keys.apikey_create(owner=owner).key.deposit_id == deposit_id


def test_keys_are_managed_over_rest_with_a_login_never_with_a_key(market, owner, deposit_id) -> None:
    created = post(market.http, "/v1/keys", {"name": "laptop", "spending_cap": 1000, "models": [MODEL]})
    assert created.status_code == 201, created.content
    body = created.json()
    secret = body["key"]
    assert body["deposit"] == deposit_id and body["models"] == [MODEL] and body["active"] and body["spent"] == 0

    listed = market.http.get("/v1/keys").json()
    assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0]
    assert secret not in json.dumps(listed)

    anonymous = Client()
    assert anonymous.get("/v1/keys", **bearer(secret)).status_code == 403
    assert post(anonymous, "/v1/keys", {}, secret).status_code == 403
    # A key reads its owner's marketplace records, and changes nothing.
    assert anonymous.get("/v1/jobs", **bearer(secret)).status_code == 200
    assert anonymous.get(f"/v1/deposits/{deposit_id}", **bearer(secret)).status_code == 200
    write = post(anonymous, f"/v1/deposits/{deposit_id}/close", {}, secret)
    assert write.status_code == 403 and write.json()["error"]["code"] == "forbidden"

    revoked = market.http.post(f"/v1/keys/{body['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = anonymous.get("/v1/jobs", **bearer(secret))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_authenticated"
    assert anonymous.get("/api/tags", **bearer(secret)).status_code == 401


def test_the_dashboard_creates_lists_and_revokes_keys(market, owner, deposit_id) -> None:
    page = market.http.get("/market/keys/")
    assert page.status_code == 200 and deposit_id in page.content.decode()
    created = market.http.post("/market/keys/", {"action": "create", "name": "phone", "deposit": deposit_id})
    body = created.content.decode()
    [key] = ApiKey.objects.filter(owner=owner)
    secret = body.split('id="new-key">', 1)[1].split("<", 1)[0]
    assert keys.key_for_secret(secret).pk == key.pk and f"/k/{secret}" in body
    assert secret not in market.http.get("/market/keys/").content.decode(), "shown once"
    refused = market.http.post("/market/keys/", {"action": "create", "spending_cap": "lots"})
    assert refused.status_code == 400 and "whole number" in refused.content.decode()
    revoked = market.http.post("/market/keys/", {"action": "revoke", "key": key.pk})
    assert revoked.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert Client().get("/market/keys/").status_code == 302  # a login first


def test_the_apikey_command_creates_lists_and_revokes(owner, deposit_id) -> None:
    out = io.StringIO()
    call_command("apikey", "create", "--user", "alice", "--spending-cap", "99", "--model", MODEL, "--json", stdout=out)
    created = json.loads(out.getvalue())
    assert created["key"].startswith("aitbc_") and created["deposit"] == deposit_id and created["spending_cap"] == 99

    out = io.StringIO()
    call_command("apikey", "list", "--json", stdout=out)
    listed = json.loads(out.getvalue())
    assert [k["id"] for k in listed] == [created["id"]] and created["key"] not in out.getvalue()

    call_command("apikey", "revoke", str(created["id"]), stdout=io.StringIO())
    with pytest.raises(ApiError) as refused:
        keys.key_for_secret(created["key"])
    assert refused.value.status == 401


# -- refusals in each API's shape ----------------------------------------------------------------


def openai_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert response["X-AITBC-Charged"] == "0"
    return error


def ollama_error(response, status: int) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert response["X-AITBC-Charged"] == "0"
    return body["error"]


def test_unknown_and_revoked_keys_are_401_in_each_apis_shape(market, owner, secret) -> None:
    client = Client()
    chat = {"model": MODEL, "messages": PROMPT}
    for wrong in ("aitbc_" + "x" * 40, "not-a-key"):
        openai_error(post(client, "/v1/chat/completions", chat, wrong), 401, "invalid_api_key")
        ollama_error(post(client, "/api/chat", chat, wrong), 401)
        ollama_error(post(client, f"/k/{wrong}/api/chat", chat), 401)
    openai_error(post(client, "/v1/chat/completions", chat), 401, "invalid_api_key")
    keys.apikey_revoke(key_id=keys.key_for_secret(secret).pk, owner=owner)
    assert "revoked" in ollama_error(client.get(f"/k/{secret}/api/tags"), 401)
    openai_error(client.get("/v1/models", **bearer(secret)), 401, "invalid_api_key")


def test_a_model_nobody_offers_is_404(market, secret) -> None:
    market.provider("p1")
    client = Client()
    missing = {"model": "llama9:900b", "messages": PROMPT}
    assert "not found" in ollama_error(post(client, "/api/chat", missing, secret), 404)
    assert "not found" in ollama_error(post(client, "/api/show", {"model": "llama9:900b"}, secret), 404)
    openai_error(post(client, "/v1/chat/completions", missing, secret), 404, "model_not_found")
    openai_error(client.get("/v1/models/llama9:900b", **bearer(secret)), 404, "model_not_found")
    assert Job.objects.count() == 0


def test_models_are_listed_with_their_lowest_price(market, secret) -> None:
    market.provider("p1", input_price=300, output_price=500)
    market.provider("p2", input_price=100, output_price=700)
    market.provider("off", online=False, input_price=1, output_price=1)
    client = Client()
    [tag] = client.get(f"/k/{secret}/api/tags").json()["models"]
    assert tag["name"] == MODEL and (tag["input_price"], tag["output_price"], tag["providers"]) == (100, 500, 2)
    [model] = client.get("/v1/models", **bearer(secret)).json()["data"]
    assert model["id"] == MODEL and model["object"] == "model" and model["input_price"] == 100
    shown = post(client, "/api/show", {"model": MODEL}, secret).json()
    assert shown["capabilities"] == ["completion"] and shown["output_price"] == 500
    assert client.get("/api/version").json()["version"]


def test_a_deposit_that_cannot_cover_max_tokens_is_refused_up_front(market, owner) -> None:
    market.provider("p1", input_price=100, output_price=200)
    small = keys.apikey_create(owner=owner, deposit_id=open_deposit(market, 50)).secret
    client = Client()
    # 100 output tokens at 200 uait per 1,000 is 20 uait: covered. 1,000 is 200: not.
    chat = {"model": MODEL, "messages": PROMPT, "max_tokens": 1000}
    error = openai_error(post(client, "/v1/chat/completions", chat, small), 402, "insufficient_deposit")
    assert error["type"] == "insufficient_quota" and "50 uait left" in error["message"]
    assert "left" in ollama_error(post(client, "/api/chat", chat | {"options": {"num_predict": 1000}}, small), 402)
    assert Job.objects.count() == 0
    assert Deposit.objects.get(owner=owner, amount=50).reserved == 0


def test_a_keys_cap_and_model_allow_list_are_enforced(market, owner, deposit_id) -> None:
    market.provider("p1", input_price=100, output_price=200)
    capped = keys.apikey_create(owner=owner, deposit_id=deposit_id, spending_cap=10).secret
    limited = keys.apikey_create(owner=owner, deposit_id=deposit_id, allowed_models=["other:1b"]).secret
    client = Client()
    chat = {"model": MODEL, "messages": PROMPT, "max_tokens": 200}
    openai_error(post(client, "/v1/chat/completions", chat, capped), 402, "spending_cap_reached")
    openai_error(post(client, "/v1/chat/completions", chat, limited), 403, "model_not_allowed")
    assert "may not use" in ollama_error(post(client, "/api/chat", chat, limited), 403)
    assert Job.objects.count() == 0


def test_each_key_has_its_own_rate(market, owner, deposit_id) -> None:
    slow = keys.apikey_create(owner=owner, deposit_id=deposit_id, rate_limit=2).secret
    other = keys.apikey_create(owner=owner, deposit_id=deposit_id).secret
    client = Client()
    assert [client.get("/v1/models", **bearer(slow)).status_code for _ in range(2)] == [200, 200]
    limited = client.get("/v1/models", **bearer(slow))
    openai_error(limited, 429, "rate_limit_exceeded")
    assert int(limited["Retry-After"]) >= 1
    ollama_error(client.get(f"/k/{slow}/api/tags"), 429)
    assert client.get("/v1/models", **bearer(other)).status_code == 200


def test_malformed_requests_are_400_before_anything_is_reserved(market, secret) -> None:
    market.provider("p1")
    client = Client()
    for body in (
        {"model": MODEL},
        {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
        {"model": MODEL, "messages": PROMPT, "max_tokens": 0},
        {"model": MODEL, "messages": PROMPT, "temperature": "hot"},
        {"model": MODEL, "messages": PROMPT, "tools": [{"type": "function"}]},
        {"model": MODEL, "messages": [{"role": "user", "content": "nul\x00"}]},
    ):
        assert post(client, "/v1/chat/completions", body, secret).status_code == 400, body
    bad_json = client.post("/api/generate", data=b"{", content_type="application/json", **bearer(secret))
    ollama_error(bad_json, 400)
    assert Job.objects.count() == 0


# -- redaction -----------------------------------------------------------------------------------


def test_keys_in_paths_are_redacted_from_every_log(market, secret, caplog) -> None:
    caplog.set_level(logging.INFO)
    Client().get(f"/k/{secret}/api/tags")
    Client().get(f"/k/{secret}x/api/tags")  # unknown: Django logs "Unauthorized: <path>"
    assert any("/k/***" in record.getMessage() for record in caplog.records)
    assert not any(secret in record.getMessage() for record in caplog.records)

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "key %s in %s", (secret, f"/k/{secret}/api"), None)
    KeyRedactingFilter().filter(record)
    assert secret not in record.getMessage() and "aitbc_***" in record.getMessage()
    assert redact_path(f"/k/{secret}/api/chat") == "/k/***/api/chat"
    assert redact_text(f"GET /k/{secret}/api/tags 401") == "GET /k/***/api/tags 401"

    with caplog.at_level(logging.INFO, logger="aitbc.serve"):
        access_logger("http", "complete", {"client": "x", "method": "POST", "path": f"/k/{secret}/api/chat"})
    assert secret not in caplog.text


# -- streams -------------------------------------------------------------------------------------


def job_of(provider) -> dict:
    [job] = provider.assigned()
    provider.handled.add(job["id"])
    return job


async def open_stream(secret: str) -> GatewayStream:
    key = await sync_to_async(keys.key_for_secret)(secret)
    generation = Generation(model=MODEL, job_input={"messages": PROMPT}, max_tokens=16, temperature=0.0)
    return await GatewayStream.open(key=key, generation=generation, api=GatewayJob.OPENAI, received_at=time.monotonic())


def chunk(provider, job: dict, index: int, text: str):
    response = provider.send(job["id"], {"type": "chunk", "index": index, "text": text})
    assert response.status_code == 200, response.content


def test_tokens_stream_as_produced_and_the_deposit_pays_exactly_the_charge(market, secret, channel_layer) -> None:
    p1 = market.provider("p1", input_price=100, output_price=200)
    deposit = keys.key_for_secret(secret).deposit

    async def scenario() -> list:
        stream = await open_stream(secret)
        events = stream.events()
        job = await sync_to_async(job_of)(p1)
        assert job["id"] == stream.job_id
        await sync_to_async(p1.accept)(job["id"])
        got = []
        for index, text in enumerate(["Hel", "lo"]):
            await sync_to_async(chunk)(p1, job, index, text)
            got.append(await anext(events))  # each token arrives before the next is produced
        await sync_to_async(p1.result)(job, output="Hello", input_tokens=10, output_tokens=2)
        got.append(await anext(events))
        await close_layer()
        return got

    first, second, finished = async_to_sync(scenario)()
    assert (first, second) == (Token("Hel"), Token("lo"))
    assert isinstance(finished, Finished) and finished.outcome.output == "Hello"
    charge = -(-(10 * 100 + 2 * 200) // 1000)
    assert finished.outcome.charge == charge
    deposit.refresh_from_db()
    assert (deposit.charged, deposit.reserved) == (charge, 0)


def test_a_failover_before_the_first_token_is_invisible(market, secret, channel_layer) -> None:
    p1 = market.provider("p1")
    p2 = market.provider("p2", input_price=101)

    async def scenario() -> list:
        stream = await open_stream(secret)
        events = stream.events()
        job = await sync_to_async(job_of)(p1)
        await sync_to_async(p1.send)(job["id"], {"type": "failed", "reason": "out of memory"})
        await sync_to_async(market.pump)()  # the kick that hands it to the next provider
        job = await sync_to_async(job_of)(p2)
        await sync_to_async(p2.accept)(job["id"])
        await sync_to_async(chunk)(p2, job, 0, "Hi")
        got = [await anext(events)]
        await sync_to_async(p2.result)(job, output="Hi", input_tokens=5, output_tokens=1)
        got.append(await anext(events))
        await close_layer()
        return got

    token, finished = async_to_sync(scenario)()
    assert token == Token("Hi") and finished.outcome.output == "Hi" and finished.outcome.charge > 0


def test_a_provider_lost_after_the_first_token_ends_the_stream_and_charges_nothing(
    market, secret, channel_layer
) -> None:
    p1 = market.provider("p1")
    market.provider("p2")
    deposit = keys.key_for_secret(secret).deposit

    async def scenario() -> tuple[Token, ApiError, str]:
        stream = await open_stream(secret)
        events = stream.events()
        job = await sync_to_async(job_of)(p1)
        await sync_to_async(p1.accept)(job["id"])
        await sync_to_async(chunk)(p1, job, 0, "Half an ans")
        token = await anext(events)
        await sync_to_async(p1.send)(job["id"], {"type": "failed", "reason": "killed"})
        with pytest.raises(ApiError) as broke:
            await anext(events)
        await close_layer()
        return token, broke.value, job["id"]

    token, error, job_id = async_to_sync(scenario)()
    assert token == Token("Half an ans") and error.code == "provider_failed" and error.status == 502
    job = Job.objects.get(pk=job_id)
    assert job.state == Job.REFUNDED and job.charge is None
    deposit.refresh_from_db()
    assert (deposit.charged, deposit.reserved) == (0, 0)


def test_a_lost_chunk_is_filled_in_from_the_completed_output(market, secret, channel_layer) -> None:
    p1 = market.provider("p1")

    async def scenario() -> str:
        stream = await open_stream(secret)
        job = await sync_to_async(job_of)(p1)
        await sync_to_async(p1.accept)(job["id"])
        await sync_to_async(chunk)(p1, job, 0, "one ")
        await sync_to_async(chunk)(p1, job, 2, "three")  # index 1 never came
        await sync_to_async(p1.result)(job, output="one two three", input_tokens=5, output_tokens=3)
        text, finished = await stream.collect()
        await close_layer()
        assert finished.outcome.output == text
        return text

    assert async_to_sync(scenario)() == "one two three"


def test_a_client_gone_mid_answer_pays_for_what_was_produced(market, secret, channel_layer) -> None:
    p1 = market.provider("p1", input_price=100, output_price=200)
    deposit = keys.key_for_secret(secret).deposit

    async def scenario() -> str:
        stream = await open_stream(secret)
        events = stream.events()
        job = await sync_to_async(job_of)(p1)
        await sync_to_async(p1.accept)(job["id"])
        await sync_to_async(chunk)(p1, job, 0, "Some")
        await anext(events)
        await events.aclose()  # the client hung up
        for _ in range(100):
            if await sync_to_async(lambda: Job.objects.get(pk=job["id"]).state)() == Job.CANCELLED:
                break
            await sync_to_async(time.sleep)(0.05)
        # The provider, told to stop, reports the work it did: it is paid for it.
        answer = await sync_to_async(p1.result)(job, output="Some", input_tokens=10, output_tokens=1)
        assert answer.status_code == 200, answer.content
        await close_layer()
        return job["id"]

    job = Job.objects.get(pk=async_to_sync(scenario)())
    charge = -(-(10 * 100 + 1 * 200) // 1000)
    assert job.state in (Job.COMPLETED, Job.SETTLED) and job.charge == charge
    deposit.refresh_from_db()
    assert (deposit.charged, deposit.reserved) == (charge, 0)


def test_an_answer_read_whole_asks_its_provider_for_no_chunks(market, secret) -> None:
    p1 = market.provider("p1")
    key = keys.key_for_secret(secret)
    whole = Generation(model=MODEL, job_input={"messages": PROMPT}, max_tokens=8, stream=False)
    gateway_submit(key=key, generation=whole, api=GatewayJob.OPENAI)
    assert job_of(p1)["options"]["stream"] is False
    streamed = Generation(model=MODEL, job_input={"messages": PROMPT}, max_tokens=8)
    gateway_submit(key=key, generation=streamed, api=GatewayJob.OPENAI)
    assert "stream" not in job_of(p1)["options"]  # the JOB as before: chunks are the default


def test_an_answer_comes_from_the_completed_event_without_reading_the_job(
    market, secret, channel_layer, monkeypatch
) -> None:
    from marketplace.gateway import services

    p1 = market.provider("p1", input_price=100, output_price=200)
    reads = []
    job_state = services.job_state
    monkeypatch.setattr(services, "job_state", lambda **kwargs: reads.append(kwargs) or job_state(**kwargs))

    async def scenario() -> tuple[str, Finished]:
        stream = await open_stream(secret)
        job = await sync_to_async(job_of)(p1)
        await sync_to_async(p1.accept)(job["id"])
        await sync_to_async(p1.result)(job, output="Whole answer", input_tokens=10, output_tokens=2)
        answer = await stream.collect()
        await close_layer()
        return answer

    text, finished = async_to_sync(scenario)()
    assert text == "Whole answer" and reads == []
    job = Job.objects.get(pk=finished.outcome.job_id)
    outcome = finished.outcome
    assert (outcome.output, outcome.input_tokens, outcome.output_tokens) == (job.output, 10, 2)
    assert outcome.charge == job.charge == -(-(10 * 100 + 2 * 200) // 1000)
    assert (outcome.created_at, outcome.started_at, outcome.completed_at) == (
        job.created_at,
        job.started_at,
        job.completed_at,
    )
