"""Live events for the dashboard and API clients over a websocket."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from aitbc_site.events import EVENTS_GROUP, user_group


class EventsConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/events/``: public events (blocks, jobs) and the user's own events.

    Only logged-in users may connect (the dashboard is behind login).
    """

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.groups_joined = [EVENTS_GROUP, user_group(user.pk)]
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json({"type": "hello", "user": user.get_username()})

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def event_message(self, message: dict) -> None:
        await self.send_json(message["event"])
