"""``/p2p/``: the websocket other nodes dial to gossip with this one."""

from __future__ import annotations

import asyncio
import secrets

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from chain import network


class P2PConsumer(AsyncWebsocketConsumer):
    """An inbound peer. Frames go to the consensus thread's queue; it answers through ``peer.send``."""

    async def __call__(self, scope, receive, send) -> None:
        # Channels' own loop also listens on a channel-layer channel it opens for the
        # consumer, waiting on both with a new task and an asyncio.wait for every frame;
        # this consumer joins no group and nothing sends to its channel, so it reads the
        # client alone.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message: dict) -> None:
        # Channels' own dispatch first closes stale database connections, a round trip to a
        # worker thread for every frame; this consumer never touches the database (frames go
        # to the consensus thread's queue), and gossip brings dozens of frames a second.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        current = network.driver()
        if current is None:
            await self.close(code=4404)
            return
        self.driver = current
        loop = asyncio.get_running_loop()
        self.peer = network.Peer(id=f"in-{secrets.token_hex(4)}", direction="in")

        def send(text: str | None) -> None:
            # Called from the consensus thread: hand the frame to this connection's event loop.
            coro = self.close(code=4408) if text is None else self.send(text_data=text)
            asyncio.run_coroutine_threadsafe(coro, loop)

        self.peer.send = send
        await self.accept()
        current.gossip.add(self.peer)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "peer"):
            self.driver.gossip.remove(self.peer)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is None:
            self.driver.gossip.penalize(self.peer, network.PENALTY["binary"], "binary frame")
            return
        self.driver.gossip.received(self.peer, text_data)
