"""``/ws/events/`` through the real ASGI application, on both channel layers.

The Redis case builds its ``RedisChannelLayer`` explicitly against the test Redis
(with a prefix of its own), so it does not depend on how the suite was launched.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from aitbc_site.asgi import application
from aitbc_site.events import EVENTS_GROUP, send_event, user_group

ORIGIN = b"http://127.0.0.1"
RECEIVE_TIMEOUT = 10


def in_memory_layer() -> dict:
    return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def redis_layer(url: str, prefix: str) -> dict:
    return {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url], "prefix": prefix}}
    }


@pytest.fixture(params=["in_memory", pytest.param("redis", marks=pytest.mark.redis)])
def channel_layer_config(request: pytest.FixtureRequest, settings, unique_name: Callable[[str], str]) -> str:
    """Point ``CHANNEL_LAYERS`` at the layer under test (channels rebuilds its layers on the change)."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        settings.CHANNEL_LAYERS = redis_layer(url, unique_name("test-ws"))
    else:
        settings.CHANNEL_LAYERS = in_memory_layer()
    return request.param


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


def events_socket(cookie: bytes | None = None, origin: bytes = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"127.0.0.1")]
    if cookie is not None:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, "/ws/events/", headers=headers)


async def close_layer() -> None:
    layer = get_channel_layer()
    if hasattr(layer, "flush"):
        await layer.flush()
    if hasattr(layer, "close_pools"):
        await layer.close_pools()


@pytest.mark.django_db(transaction=True)
def test_group_send_reaches_every_socket_and_user_events_only_their_user(
    channel_layer_config: str, django_user_model
) -> None:
    alice = django_user_model.objects.create_user("alice", password="unused-password-1")
    bob = django_user_model.objects.create_user("bob", password="unused-password-2")
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)

    async def scenario() -> None:
        alice_ws, bob_ws = events_socket(alice_cookie), events_socket(bob_cookie)
        try:
            for socket, name in ((alice_ws, "alice"), (bob_ws, "bob")):
                connected, code = await socket.connect(timeout=RECEIVE_TIMEOUT)
                assert connected, f"{name} was refused with code {code}"
                assert await socket.receive_json_from(RECEIVE_TIMEOUT) == {"type": "hello", "user": name}

            # A worker thread sends this way (no event loop of its own).
            await sync_to_async(send_event)(user_group(alice.pk), {"type": "private", "n": 1})
            await get_channel_layer().group_send(
                EVENTS_GROUP, {"type": "event.message", "event": {"type": "block", "height": 7}}
            )

            assert await alice_ws.receive_json_from(RECEIVE_TIMEOUT) == {"type": "private", "n": 1}
            assert await alice_ws.receive_json_from(RECEIVE_TIMEOUT) == {"type": "block", "height": 7}
            # Each channel is first-in first-out: had bob been sent alice's event, it
            # would come before the block.
            assert await bob_ws.receive_json_from(RECEIVE_TIMEOUT) == {"type": "block", "height": 7}

            await bob_ws.send_json_to({"type": "ping"})
            assert await bob_ws.receive_json_from(RECEIVE_TIMEOUT) == {"type": "pong"}
        finally:
            await alice_ws.disconnect()
            await bob_ws.disconnect()
            await close_layer()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_events_stop_after_the_socket_disconnects(channel_layer_config: str, django_user_model) -> None:
    cookie = session_cookie(django_user_model.objects.create_user("carol", password="unused-password-3"))

    async def scenario() -> None:
        first, second = events_socket(cookie), events_socket(cookie)
        try:
            for socket in (first, second):
                assert (await socket.connect(timeout=RECEIVE_TIMEOUT))[0]
                await socket.receive_json_from(RECEIVE_TIMEOUT)
            await first.disconnect()

            layer = get_channel_layer()
            await layer.group_send(EVENTS_GROUP, {"type": "event.message", "event": {"type": "after"}})
            assert await second.receive_json_from(RECEIVE_TIMEOUT) == {"type": "after"}
            if channel_layer_config == "in_memory":
                # The group no longer lists the closed socket's channel.
                assert len(layer.groups.get(EVENTS_GROUP, {})) == 1
        finally:
            await second.disconnect()
            await close_layer()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_anonymous_socket_is_refused(settings) -> None:
    settings.CHANNEL_LAYERS = in_memory_layer()

    async def scenario() -> None:
        socket = events_socket()
        connected, code = await socket.connect(timeout=RECEIVE_TIMEOUT)
        assert not connected
        assert code == 4401

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_socket_from_a_foreign_origin_is_refused(settings, django_user_model) -> None:
    settings.CHANNEL_LAYERS = in_memory_layer()
    cookie = session_cookie(django_user_model.objects.create_user("dave", password="unused-password-4"))

    async def scenario() -> None:
        socket = events_socket(cookie, origin=b"http://evil.example")
        connected, _code = await socket.connect(timeout=RECEIVE_TIMEOUT)
        assert not connected

    async_to_sync(scenario)()
