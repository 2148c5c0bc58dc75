"""``/p2p/``: an inbound peer's frames go to the consensus thread's gossip, in order, and nowhere else."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from channels.testing import WebsocketCommunicator

from chain import network
from chain.consumers import P2PConsumer


class Gossip:
    def __init__(self) -> None:
        self.peers: list[network.Peer] = []
        self.frames: list[tuple[str, str]] = []
        self.penalties: list[str] = []

    def add(self, peer: network.Peer) -> None:
        self.peers.append(peer)

    def remove(self, peer: network.Peer) -> None:
        self.peers.remove(peer)

    def received(self, peer: network.Peer, text: str) -> None:
        self.frames.append((peer.id, text))

    def penalize(self, peer: network.Peer, points: int, why: str) -> None:
        self.penalties.append(why)


class Driver:
    def __init__(self) -> None:
        self.gossip = Gossip()


@pytest.fixture
def driver() -> Iterator[Driver]:
    previous = network.driver()
    current = Driver()
    network.set_driver(current)
    yield current
    network.set_driver(previous)


def test_frames_reach_the_gossip_in_order_and_the_peer_leaves_with_its_connection(driver: Driver) -> None:
    async def scenario() -> None:
        communicator = WebsocketCommunicator(P2PConsumer.as_asgi(), "/p2p/")
        connected, _ = await communicator.connect()
        assert connected
        [peer] = driver.gossip.peers
        assert peer.direction == "in"
        for n in range(50):
            await communicator.send_to(text_data=f"frame {n}")
        await communicator.send_to(bytes_data=b"\x00")
        await communicator.send_to(text_data="last")
        await communicator.disconnect()
        assert driver.gossip.frames == [(peer.id, f"frame {n}") for n in range(50)] + [(peer.id, "last")]
        assert driver.gossip.penalties == ["binary frame"]
        assert driver.gossip.peers == []

    asyncio.run(scenario())


def test_the_consensus_thread_answers_through_the_peers_send(driver: Driver) -> None:
    async def scenario() -> None:
        communicator = WebsocketCommunicator(P2PConsumer.as_asgi(), "/p2p/")
        assert (await communicator.connect())[0]
        [peer] = driver.gossip.peers
        # peer.send is called from another thread: the consensus thread's.
        await asyncio.to_thread(peer.send, "hello")
        assert await communicator.receive_from() == "hello"
        await asyncio.to_thread(peer.send, None)
        assert (await communicator.receive_output())["code"] == 4408
        await communicator.disconnect()

    asyncio.run(scenario())


def test_a_process_without_a_node_refuses_peers() -> None:
    async def scenario() -> None:
        previous = network.driver()
        network.set_driver(None)
        try:
            communicator = WebsocketCommunicator(P2PConsumer.as_asgi(), "/p2p/")
            connected, code = await communicator.connect()
        finally:
            network.set_driver(previous)
        assert not connected
        assert code == 4404

    asyncio.run(scenario())
