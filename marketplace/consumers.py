"""``/ws/provider/``: a provider's push channel (docs/marketplace.md).

Providers are programs, not browsers: this route is not behind the origin check (see
``aitbc_site/asgi.py``) and proves who is calling by a signed hello instead. The
consumer joins the provider's group, where dispatch sends its jobs and cancels, and
hands every provider message to the same services as the HTTP fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asgiref.sync import SyncToAsync
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import connections
from django.utils import timezone

from aitbc_site.errors import ApiError
from chain.protocol.encoding import parse_strict
from chain.protocol.errors import ProtocolError
from marketplace.services import messages, providers

logger = logging.getLogger("aitbc.marketplace.ws")

HELLO_TIMEOUT_S = 10
CLOSE_AUTH_REFUSED = 4401
CLOSE_NOT_REGISTERED = 4403
CLOSE_MALFORMED = 4400
MAX_FRAME = 2 * 1024 * 1024


class KeptConnectionSyncToAsync(SyncToAsync):
    """``database_sync_to_async`` that keeps the sync thread's database connection between messages.

    Channels' version closes it after every call under ``CONN_MAX_AGE = 0``, so each provider
    message opened a connection of its own (and PostgreSQL forks a backend for each). The
    connection is still dropped before a call if it broke or was left in a transaction.
    """

    def thread_handler(self, loop, *args, **kwargs):
        for connection in connections.all(initialized_only=True):
            connection.close_at = None  # kept: messages come in streams
            connection.close_if_unusable_or_obsolete()
        return super().thread_handler(loop, *args, **kwargs)


database_call = KeptConnectionSyncToAsync


class ProviderConsumer(AsyncJsonWebsocketConsumer):
    address: str | None = None
    _hello_timer: asyncio.TimerHandle | None = None
    _presence_at = float("-inf")  # time.monotonic() of this socket's last presence write

    async def connect(self) -> None:
        await self.accept()
        self._hello_timer = asyncio.get_running_loop().call_later(
            HELLO_TIMEOUT_S, lambda: asyncio.ensure_future(self._no_hello())
        )

    async def _no_hello(self) -> None:
        if self.address is None:
            await self.close(code=CLOSE_AUTH_REFUSED)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        # Providers speak the protocol: strict JSON (integers only, no duplicate keys).
        return parse_strict(text_data)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs) -> None:
        if text_data is None or len(text_data) > MAX_FRAME:
            await self.close(code=CLOSE_MALFORMED)
            return
        try:
            content = await self.decode_json(text_data)
        except ProtocolError as exc:
            if self.address is None:
                await self.close(code=CLOSE_AUTH_REFUSED)
            else:
                await self.send_json({"type": "error", "error": {"code": exc.code, "message": exc.message}})
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs) -> None:
        if self.address is None:
            await self._hello(content)
            return
        received_at = timezone.now()  # an accepted job started when its message arrived, not when it was applied
        # While this socket is open the provider is online: its presence is written once per
        # SEEN_RESOLUTION at most, without reading it back for every message of a job.
        now = time.monotonic()
        seen = now - self._presence_at >= providers.SEEN_RESOLUTION.total_seconds()
        if seen:
            self._presence_at = now
        try:
            await database_call(messages.provider_message)(
                provider=self.address, message=content, received_at=received_at, seen=seen
            )
        except ApiError as exc:
            job_id = content.get("job_id") if isinstance(content, dict) else None
            await self.send_json({"type": "error", "job_id": job_id, "error": exc.as_dict()["error"]})

    async def _hello(self, content: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "hello":
            await self.close(code=CLOSE_AUTH_REFUSED)
            return
        signed = {"auth": content.get("auth"), "signature": content.get("signature")}
        try:
            provider = await database_call(providers.provider_connect)(signed)
        except providers.NotRegistered:
            await self.close(code=CLOSE_NOT_REGISTERED)
            return
        except ApiError:
            await self.close(code=CLOSE_AUTH_REFUSED)
            return
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.address = provider.address
        # Join the group before going online: a job assigned from then on reaches this socket.
        await self.channel_layer.group_add(providers.provider_group(self.address), self.channel_name)
        active = content.get("active")
        await database_call(providers.provider_connected)(
            address=self.address, active=active if type(active) is int else None
        )
        self._presence_at = time.monotonic()
        await self.send_json({"type": "welcome", "provider": self.address})

    async def disconnect(self, code: int) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self.address is None:
            return
        await self.channel_layer.group_discard(providers.provider_group(self.address), self.channel_name)
        await database_call(providers.provider_disconnected)(address=self.address)

    async def event_message(self, message: dict) -> None:
        """A job or cancel for this provider, from dispatch (``send_event`` to its group)."""
        await self.send_json(message["event"])
