"""``/ws/provider/`` through the real ASGI application: hello, push dispatch, messages, disconnect.

Run on the in-memory channel layer and on the real Redis one. Providers send no Origin
header: their route is not behind the browsers' origin check.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from aitbc_site.asgi import application
from chain.protocol.market import build_provider_auth
from marketplace.models import Job, Provider
from marketplace.tests.support import close_layer, named_key

TIMEOUT = 10
pytestmark = pytest.mark.django_db(transaction=True)


def socket() -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/ws/provider/", headers=[(b"host", b"127.0.0.1")])


def hello(key, coordinator: str, purpose: str = "connect") -> dict:
    return {"type": "hello", **build_provider_auth(key, coordinator=coordinator, purpose=purpose), "active": 0}


async def closed_with(ws: WebsocketCommunicator) -> int:
    output = await ws.receive_output(TIMEOUT)
    assert output["type"] == "websocket.close", output
    return output["code"]


def test_hello_is_checked_before_anything_else(market, channel_layer) -> None:
    coordinator = market.coordinator.address
    registered = market.provider("p1", online=False)

    async def scenario() -> None:
        try:
            cases = [
                ({"type": "heartbeat", "active": 0}, 4401),
                (hello(registered.key, coordinator, purpose="register"), 4401),
                (hello(registered.key, market.alice.address), 4401),
                (hello(named_key("stranger"), coordinator), 4403),
            ]
            for message, code in cases:
                ws = socket()
                connected, _ = await ws.connect(TIMEOUT)
                assert connected
                await ws.send_json_to(message)
                assert await closed_with(ws) == code, message
            ws = socket()
            await ws.connect(TIMEOUT)
            await ws.send_to(text_data="not json")
            assert await closed_with(ws) == 4401
        finally:
            await close_layer()

    async_to_sync(scenario)()
    assert not Provider.objects.get().online


def test_jobs_are_pushed_and_answered_over_the_socket(market, channel_layer) -> None:
    provider = market.provider("p1", online=False)

    async def scenario() -> None:
        ws = socket()
        try:
            assert (await ws.connect(TIMEOUT))[0]
            await ws.send_json_to(hello(provider.key, market.coordinator.address))
            assert await ws.receive_json_from(TIMEOUT) == {"type": "welcome", "provider": provider.address}
            state = await sync_to_async(lambda: Provider.objects.values("online", "ws_connections").get())()
            assert state == {"online": True, "ws_connections": 1}

            response = await sync_to_async(market.submit)(max_price=9_000)
            job_id = response.json()["id"]
            await sync_to_async(market.pump)()
            push = await ws.receive_json_from(TIMEOUT)
            assert push["type"] == "job" and push["job"]["id"] == job_id
            job = push["job"]
            assert set(job) == {"id", "model", "input", "options", "deadline_ms"}

            await ws.send_json_to({"type": "accepted", "job_id": job_id})
            await ws.send_json_to({"type": "chunk", "job_id": job_id, "index": 0, "text": "Hel"})
            await ws.send_json_to({"type": "heartbeat", "active": 1})
            signed = provider.receipt(job, "Hello", input_tokens=7, output_tokens=2)
            await ws.send_json_to({"type": "result", "job_id": job_id, "output": "Hello", **signed})
            # A message about a job it does not hold is answered with an error, the socket stays.
            await ws.send_json_to({"type": "accepted", "job_id": "job-unknown"})
            error = await ws.receive_json_from(TIMEOUT)
            assert error["type"] == "error" and error["error"]["code"] == "not_found"
            await ws.send_to(text_data=json.dumps({"type": "chunk", "job_id": job_id, "index": 1.5, "text": "x"}))
            assert (await ws.receive_json_from(TIMEOUT))["error"]["code"] == "malformed"

            job_row = await sync_to_async(Job.objects.get)(pk=job_id)
            assert job_row.state == Job.COMPLETED and job_row.output == "Hello"
            assert await sync_to_async(lambda: Provider.objects.get().reported_active)() == 1
        finally:
            await ws.disconnect()
            await close_layer()

    async_to_sync(scenario)()
    assert not Provider.objects.get().online and Provider.objects.get().ws_connections == 0


def test_a_provider_whose_socket_closes_loses_its_running_job(market, channel_layer) -> None:
    first = market.provider("first", online=False, input_price=10)
    second = market.provider("second", input_price=20)

    async def scenario() -> str:
        ws = socket()
        try:
            assert (await ws.connect(TIMEOUT))[0]
            await ws.send_json_to(hello(first.key, market.coordinator.address))
            await ws.receive_json_from(TIMEOUT)
            job_id = (await sync_to_async(market.submit)()).json()["id"]
            await sync_to_async(market.pump)()
            push = await ws.receive_json_from(TIMEOUT)
            await ws.send_json_to({"type": "accepted", "job_id": push["job"]["id"]})
            await ws.receive_nothing(0.2)
            return job_id
        finally:
            await ws.disconnect()
            await close_layer()

    job_id = async_to_sync(scenario)()
    job = Job.objects.get(pk=job_id)
    assert job.state == Job.FUNDED and job.attempts == 1
    assert "websocket closed" in job.events.filter(state="failed").get().reason
    market.pump()
    job.refresh_from_db()
    assert job.provider_id == second.address
    assert Provider.objects.get(pk=first.address).jobs_failed == 1


def test_the_browser_events_socket_keeps_its_origin_check(settings) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    async def scenario() -> None:
        ws = WebsocketCommunicator(application, "/ws/events/", headers=[(b"origin", b"http://evil.example")])
        connected, _ = await ws.connect(TIMEOUT)
        assert not connected

    async_to_sync(scenario)()


def test_the_owner_sees_the_jobs_states_and_streamed_chunks_live(market, channel_layer, django_user_model) -> None:
    from django.test import Client

    user = django_user_model.objects.create_user("watcher")
    browser = Client()
    browser.force_login(user)
    cookie = f"sessionid={browser.cookies['sessionid'].value}".encode()
    provider = market.provider("p1")

    async def scenario() -> None:
        events = WebsocketCommunicator(
            application,
            "/ws/events/",
            headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1"), (b"cookie", cookie)],
        )
        try:
            assert (await events.connect(TIMEOUT))[0]
            await events.receive_json_from(TIMEOUT)  # hello
            job_id = (await sync_to_async(market.submit)(http=browser)).json()["id"]
            await sync_to_async(market.pump)()
            [wire] = await sync_to_async(provider.assigned)()
            await sync_to_async(provider.accept)(job_id)
            await sync_to_async(provider.send)(job_id, {"type": "chunk", "index": 0, "text": "Hel"})
            await sync_to_async(provider.result)(wire, "Hello")
            seen, public = [], []
            while "completed" not in seen or "completed" not in public:
                event = await events.receive_json_from(TIMEOUT)
                if event["type"] == "job":
                    assert event["job_id"] == job_id
                    seen.append(event["state"])
                elif event["type"] == "job.chunk":
                    seen.append(f"chunk:{event['text']}")
                elif event["type"] == "jobs":
                    assert set(event) == {"type", "job_id", "state", "model"}  # nothing private
                    public.append(event["state"])
            assert seen == ["submitted", "funded", "assigned", "running", "chunk:Hel", "completed"]
            assert public == ["submitted", "funded", "assigned", "running", "completed"]
        finally:
            await events.disconnect()
            await close_layer()

    async_to_sync(scenario)()
