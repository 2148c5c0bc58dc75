"""A websocket connection's unread frames are bounded: past the bound it is closed, not buffered."""

from __future__ import annotations

import asyncio

from aitbc_site.server import CLOSE_POLICY_VIOLATION, WebsocketInbox


class Protocol:
    client_addr = ["127.0.0.1", 5555]

    def __init__(self) -> None:
        self.closes: list[int] = []

    def serverClose(self, code: int | None = None) -> None:
        self.closes.append(code)


def frame(text: str) -> dict:
    return {"type": "websocket.receive", "text": text}


def test_frames_past_the_frame_bound_close_the_connection_and_are_dropped() -> None:
    async def scenario() -> None:
        protocol = Protocol()
        inbox = WebsocketInbox(protocol, path="/p2p/", max_frames=3, max_bytes=10**6)
        inbox.put_nowait({"type": "websocket.connect"})
        for i in range(2):
            inbox.put_nowait(frame(f"f{i}"))
        assert protocol.closes == []
        for i in range(2, 10):
            inbox.put_nowait(frame(f"f{i}"))
        assert protocol.closes == [CLOSE_POLICY_VIOLATION]
        assert inbox.qsize() == 3
        # Once closed for overflowing, nothing more of it is kept even after the consumer catches up.
        assert (await inbox.get())["type"] == "websocket.connect"
        inbox.put_nowait(frame("late"))
        inbox.put_nowait({"type": "websocket.disconnect", "code": 1008})
        received = [await inbox.get() for _ in range(inbox.qsize())]
        assert [m.get("text") for m in received] == ["f0", "f1", None]
        assert received[-1]["type"] == "websocket.disconnect"
        assert protocol.closes == [CLOSE_POLICY_VIOLATION]

    asyncio.run(scenario())


def test_unread_bytes_are_bounded_and_counted_back_as_the_consumer_reads() -> None:
    async def scenario() -> None:
        protocol = Protocol()
        inbox = WebsocketInbox(protocol, path="/ws/provider/", max_frames=100, max_bytes=1000)
        inbox.put_nowait(frame("x" * 600))
        assert inbox.queued_bytes == 600
        await inbox.get()
        assert inbox.queued_bytes == 0
        inbox.put_nowait(frame("y" * 600))
        inbox.put_nowait({"type": "websocket.receive", "bytes": b"z" * 300})
        assert protocol.closes == [] and inbox.queued_bytes == 900
        inbox.put_nowait(frame("w" * 200))
        assert protocol.closes == [CLOSE_POLICY_VIOLATION]
        assert inbox.queued_bytes == 900

    asyncio.run(scenario())
