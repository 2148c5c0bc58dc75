"""Hostile peers against a real four-validator devnet.

The attacker is a plain ``websockets`` client on a node's ``/p2p/`` endpoint that does
the handshake an honest node does (a ``hello`` naming the chain, the genesis and a node
id of its own) and then misbehaves. Each scenario shows the node drop what it sent, score
the attacker down and, past the threshold, close its connection (seen by the attacker, in
the node's log and in the ``p2p`` counters of ``/status``), while the four validators
keep finalizing the same blocks. The last test checks that the honest nodes saw no
difference: one chain, no evidence, every validator active, every honest peer connected
with a clean score.

Timeouts are failure guards only; nothing here asserts a speed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from chain import handshake
from chain.network import INBOX_MAX, MAX_MESSAGE_BYTES, PEER_MESSAGE_BURST
from chain.protocol.block import sign_vote, vote_body
from chain.protocol.keys import Key
from chain.tests.test_faults import STARTUP_TIMEOUT, Devnet
from conftest import clean_env, devnet_running, find_free_port_range, pid_alive

pytestmark = pytest.mark.process

BLOCK_TIME_MS = 500
CLOSE_TIMEOUT = 30


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    port = find_free_port_range(51)
    env = clean_env(AITBC_DATA_DIR=data_dir)
    args = ("--port", str(port), "--validators", "4", "--providers", "0", "--param", f"block_time_ms={BLOCK_TIME_MS}")
    with devnet_running(data_dir, *args, env=env, startup_timeout=STARTUP_TIMEOUT) as (_process, network):
        net = Devnet(data_dir, env, network)
        net.wait_for_progress(2, timeout=60)
        yield net


class Attacker:
    """One hostile connection to a node's ``/p2p/``, after an honest-looking handshake."""

    def __init__(self, devnet: Devnet, index: int = 0, key: Key | None = None, **hello: Any) -> None:
        self.node = devnet.nodes[index]
        status = self.node.status()
        self.chain_id, self.genesis_id = status["chain_id"], status["genesis_id"]
        self.key = key or Key.generate()
        self.hello = {
            "type": "hello",
            "chain_id": self.chain_id,
            "genesis_id": self.genesis_id,
            "node_id": self.key.address,
            "pubkey": self.key.pubkey_hex,
            "height": status["height"],
            "challenge": handshake.new_challenge(),
        } | hello
        self.url = self.node.rpc_url.replace("http://", "ws://") + "/p2p/"
        self.validators = [v["address"] for v in status["validators"]]

    def consensus_height(self) -> int:
        return self.node.height() + 1

    def vote(
        self,
        *,
        height: int,
        round_: int,
        block_id: str = "",
        chain_id: str | None = None,
        validator: str | None = None,
        signature: str | None = None,
    ) -> str:
        """A prevote; signed by the attacker's own key unless ``signature`` is given."""
        body = vote_body(
            chain_id=chain_id or self.chain_id, height=height, round=round_, step="prevote", block_id=block_id or None
        )
        return json.dumps(
            {
                "type": "vote",
                "vote": body,
                "validator": validator or self.key.address,
                "signature": signature or sign_vote(self.key, body),
            }
        )

    def run(self, frames, *, wait: float = CLOSE_TIMEOUT, pause: float = 0.0) -> dict[str, Any]:
        """Handshake, send what ``frames`` yields, then wait up to ``wait`` s for the node to close the connection.

        Reports whether and how it closed, how many frames went out and what the node sent meanwhile.
        """
        return asyncio.run(self._run(frames, wait, pause))

    async def _run(self, frames, wait: float, pause: float) -> dict[str, Any]:
        sent, received = 0, []
        async with websockets.connect(self.url, max_size=MAX_MESSAGE_BYTES * 2, open_timeout=10) as ws:
            await ws.send(json.dumps(self.hello))
            # Until its hello, gossip may reach us too: a connection not yet proven gets every frame.
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            while answer.get("type") != "hello":
                answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer["type"] == "hello" and answer["chain_id"] == self.chain_id, answer
            # The node proved its id over our challenge; we prove ours (the attacker's own key) over its.
            assert handshake.proof_valid(
                answer["proof"],
                pubkey=answer["pubkey"],
                node_id=answer["node_id"],
                chain_id=self.chain_id,
                genesis_id=self.genesis_id,
                challenge=self.hello["challenge"],
            )
            ours = {"chain_id": self.chain_id, "genesis_id": self.genesis_id, "challenge": answer["challenge"]}
            proof = handshake.prove(self.key, **ours)
            await ws.send(json.dumps({"type": "auth", "proof": proof}))
            reader = asyncio.create_task(self._read(ws, received))
            try:
                for frame in frames(self):
                    try:
                        await ws.send(frame)
                    except websockets.ConnectionClosed:
                        break
                    sent += 1
                    await asyncio.sleep(pause)
                    if reader.done():
                        break
                try:
                    await asyncio.wait_for(asyncio.shield(reader), wait)
                except TimeoutError:
                    pass
            finally:
                closed = reader.done()
                reader.cancel()
            code = ws.close_code if closed else None
        return {"sent": sent, "closed": closed, "code": code, "received": received}

    @staticmethod
    async def _read(ws, received: list) -> None:
        try:
            async for frame in ws:
                received.append(frame)
        except websockets.ConnectionClosed:
            pass


def p2p(node) -> dict[str, Any]:
    return node.status()["p2p"]


def log_text(node) -> str:
    return node.log_path.read_text(errors="replace")


def assert_banned(
    devnet: Devnet, attacker: Attacker, outcome: dict[str, Any], before: dict[str, Any], why: str
) -> None:
    assert outcome["closed"], f"the node kept the connection open after {outcome['sent']} frames ({why})"
    after = p2p(attacker.node)
    assert after["disconnects"] > before["disconnects"], (before, after)
    log = log_text(attacker.node)
    assert why in log, f"no log line saying {why!r}"
    assert f"({attacker.key.address}) disconnected and refused" in log
    # The ban holds: the same node id is refused at once on a new connection.
    again = Attacker(devnet, attacker.node.index, key=attacker.key)
    with pytest.raises((websockets.ConnectionClosed, AssertionError, TimeoutError)):
        again.run(lambda a: iter(()), wait=0)


@pytest.fixture
def live(devnet: Devnet) -> Iterator[None]:
    """Every scenario ends with the validators still finalizing blocks together."""
    start = max(devnet.heights().values())
    yield
    devnet.wait_for_progress(2, timeout=60)
    assert min(devnet.heights().values()) > start


# -- the scenarios ---------------------------------------------------------------------------------


def test_malformed_json_gets_the_peer_disconnected(devnet: Devnet, live: None) -> None:
    attacker = Attacker(devnet)
    before = p2p(attacker.node)
    outcome = attacker.run(lambda a: (f'{{"type": "vote", "vote": {i}' for i in range(100)))
    assert_banned(devnet, attacker, outcome, before, "malformed JSON")


def test_json_that_is_not_a_message_gets_the_peer_disconnected(devnet: Devnet, live: None) -> None:
    attacker = Attacker(devnet)
    before = p2p(attacker.node)
    shapes = ("[{i}]", '"{i}"', "{i}", '{{"type": {i}}}', '{{"kind": "vote", "n": {i}}}', "null")
    outcome = attacker.run(lambda a: (shapes[i % len(shapes)].format(i=i) for i in range(100)))
    assert_banned(devnet, attacker, outcome, before, "message without a type")


def test_a_hello_of_another_chain_costs_the_connection(devnet: Devnet, live: None) -> None:
    attacker = Attacker(devnet)
    before = p2p(attacker.node)
    other = attacker.hello | {"chain_id": "aitbc-other-1"}
    outcome = attacker.run(lambda a: iter([json.dumps(other)]))
    assert_banned(devnet, attacker, outcome, before, "hello from another chain")


def test_votes_of_another_chain_get_the_peer_disconnected(devnet: Devnet, live: None) -> None:
    attacker = Attacker(devnet)
    before = p2p(attacker.node)
    height = attacker.consensus_height()
    outcome = attacker.run(
        lambda a: (a.vote(height=height, round_=r, chain_id="aitbc-other-1") for r in range(100)), pause=0.01
    )
    assert_banned(devnet, attacker, outcome, before, "vote for another chain")


def test_votes_with_invalid_signatures_in_a_validators_name_get_the_peer_disconnected(
    devnet: Devnet, live: None
) -> None:
    attacker = Attacker(devnet)
    before = p2p(attacker.node)
    victim = attacker.validators[0]

    def frames(a: Attacker) -> Iterator[str]:
        for r in range(200):
            # Valid-looking signatures by the wrong key, at the height being decided and the next.
            yield a.vote(height=a.consensus_height() + r % 2, round_=r, validator=victim)

    outcome = attacker.run(frames, pause=0.02)
    assert_banned(devnet, attacker, outcome, before, "prevote with an invalid signature")


def test_votes_from_a_non_validator_get_the_peer_disconnected(devnet: Devnet, live: None) -> None:
    attacker = Attacker(devnet)
    before = p2p(attacker.node)
    outcome = attacker.run(lambda a: (a.vote(height=a.consensus_height(), round_=r) for r in range(300)), pause=0.02)
    assert_banned(devnet, attacker, outcome, before, "consensus message from a non-validator")


def test_proposals_from_a_validator_that_is_not_the_proposer_get_the_peer_disconnected(
    devnet: Devnet, live: None
) -> None:
    attacker = Attacker(devnet)
    before = p2p(attacker.node)
    rotation = sorted(attacker.validators)

    def frames(a: Attacker) -> Iterator[str]:
        for r in range(300):
            height = a.consensus_height()
            # The validator after the round's proposer in the rotation: a validator, not the proposer.
            impostor = rotation[(height + r + 1) % len(rotation)]
            body = {
                "chain_id": a.chain_id,
                "height": height,
                "round": r,
                "pol_round": None,
                "block_id": secrets.token_hex(32),
            }
            block = {"header": {"height": height}, "txs": [], "evidence": []}
            yield json.dumps(
                {
                    "type": "proposal",
                    "proposal": body,
                    "block": block,
                    "proposer": impostor,
                    "signature": secrets.token_hex(64),
                }
            )

    outcome = attacker.run(frames, pause=0.02)
    assert_banned(devnet, attacker, outcome, before, "proposal from a non-proposer")


def test_replayed_and_stale_messages_are_dropped_without_harm(devnet: Devnet, live: None) -> None:
    """Honest votes replayed verbatim, re-encoded and from decided heights: dropped, never a fault of the sender."""
    attacker = Attacker(devnet)

    def listen(a: Attacker) -> Iterator[str]:
        yield json.dumps({"type": "status", "height": 0})

    heard = attacker.run(listen, wait=3)
    assert not heard["closed"]
    votes = [f for f in heard["received"] if json.loads(f)["type"] == "vote"]
    assert votes, "the node gossiped no votes to its peer"
    before = p2p(attacker.node)

    def replays(a: Attacker) -> Iterator[str]:
        for _ in range(20):
            for frame in votes:
                yield frame
                yield json.dumps(json.loads(frame), indent=1)
                yield json.dumps(json.loads(frame), sort_keys=True, separators=(",", ":"))

    outcome = attacker.run(replays, wait=1, pause=0.002)
    assert not outcome["closed"], "a peer relaying honest votes was disconnected"
    after = p2p(attacker.node)
    assert after["disconnects"] == before["disconnects"]
    mine = [p for p in attacker.node.status()["peers"] if p["node_id"] == attacker.key.address]
    assert all(p["score"] == 0 for p in mine), mine


def test_far_future_messages_do_not_move_the_node(devnet: Devnet, live: None) -> None:
    """Votes and statuses for heights far ahead: dropped, and a peer that cannot serve what it claims loses score."""
    target = devnet.nodes[1]
    attacker = Attacker(devnet, rpc_url=target.rpc_url)
    far = 2**53 - 1

    def frames(a: Attacker) -> Iterator[str]:
        for r in range(20):
            yield a.vote(height=far - r, round_=0)
            yield json.dumps({"type": "status", "height": far - r})

    outcome = attacker.run(frames, wait=1, pause=0.2)
    assert not outcome["closed"]
    assert "serves none" in log_text(attacker.node)
    assert attacker.node.height() < 10_000
    assert p2p(attacker.node)["future"] <= p2p(attacker.node)["future_max"]


def test_an_oversized_frame_is_refused(devnet: Devnet, live: None) -> None:
    attacker = Attacker(devnet)
    huge = '{"type": "txs", "txs": ["' + "x" * MAX_MESSAGE_BYTES + '"]}'
    outcome = attacker.run(lambda a: iter([huge]))
    assert outcome["closed"], "the node accepted a frame above its limit"
    # Daphne fails the connection at the frame limit, before the node reads any of it.
    assert outcome["code"] in (1006, 1009), outcome["code"]


def flood(devnet: Devnet, index: int) -> dict[str, Any]:
    attacker = Attacker(devnet, index)
    padding = "p" * 1500
    # Until the node hangs up: how many frames that takes depends on how fast this machine lets it read.
    total = 8 * PEER_MESSAGE_BURST
    # Harmless content, each frame different: only the rate gives the flood away.
    outcome = attacker.run(
        lambda a: (json.dumps({"type": "status", "height": 0, "n": i, "pad": padding}) for i in range(total))
    )
    assert outcome["closed"], f"still connected after {outcome['sent']} frames"
    return outcome | {"bytes": outcome["sent"] * len(padding)}


def test_a_flood_is_bounded_and_gets_the_peer_disconnected(devnet: Devnet, live: None) -> None:
    node = devnet.nodes[2]
    before = p2p(node)
    first = flood(devnet, node.index)
    after = p2p(node)
    log = log_text(node)
    # Cut by whichever bound the flood meets first: the node's per-peer rate when the node reads
    # it as fast as it arrives, the server's bound on unread frames when it arrives faster.
    by_rate = after["dropped_rate"] > before["dropped_rate"] and after["disconnects"] > before["disconnects"]
    by_rate = by_rate and "flooding" in log and first["sent"] > PEER_MESSAGE_BURST
    by_unread = "sent and not yet read; closing the connection" in log
    assert by_rate or by_unread, (before, after, first["sent"])
    assert after["inbox"] <= INBOX_MAX


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_a_flood_faster_than_the_node_reads_does_not_grow_its_memory(devnet: Devnet, live: None) -> None:
    # Daphne reads frames off the socket as fast as they come; what the node has not read yet
    # is bounded per connection (aitbc_site.server.WebsocketInbox), so sending ~90 MB at once
    # cannot park ~90 MB in the node's process.
    node = devnet.nodes[3]
    before = resident_bytes(node.pid)
    padding = "p" * 1500
    sent_bytes = 60_000 * len(padding)
    outcome = Attacker(devnet, node.index).run(
        lambda a: (json.dumps({"type": "status", "height": 0, "n": i, "pad": padding}) for i in range(60_000))
    )
    assert outcome["closed"], f"still connected after {outcome['sent']} frames"
    grown = resident_bytes(node.pid) - before
    assert grown < sent_bytes // 3, f"the node grew by {grown} bytes while {outcome['sent']} frames arrived"


def test_a_peer_claiming_a_validators_id_without_its_key_is_cut_off_and_the_validator_is_not(
    devnet: Devnet, live: None
) -> None:
    node, victim = devnet.nodes[0], devnet.nodes[1]
    pubkey = next(v["pubkey"] for v in node.status()["validators"] if v["address"] == victim.address)
    impostor = Attacker(devnet, node.index, node_id=victim.address, pubkey=pubkey)
    # Its auth is its own key's proof: it cannot sign as the validator.
    outcome = impostor.run(lambda a: iter([a.vote(height=a.consensus_height(), round_=0)]))
    assert outcome["closed"]
    assert f"an auth whose proof of {victim.address} does not verify" in log_text(node)
    # Nothing was held against the validator's id: still connected, clean score, not refused.
    peers = [p for p in node.status()["peers"] if p["node_id"] == victim.address]
    assert peers and all(p["score"] == 0 for p in peers), node.status()["peers"]
    assert f"({victim.address}) disconnected and refused" not in log_text(node)


def test_the_honest_validators_saw_no_difference(devnet: Devnet) -> None:
    devnet.wait_for_progress(3, timeout=60)
    chains = {node.name: node.blocks() for node in devnet.nodes}
    common = min(len(blocks) for blocks in chains.values())
    assert common > 10
    reference = next(iter(chains.values()))
    for name, blocks in chains.items():
        assert [b["id"] for b in blocks[:common]] == [b["id"] for b in reference[:common]], f"{name} differs"
        assert not any(b["evidence"] for b in blocks), f"{name} holds evidence against an honest validator"
    addresses = {node.address for node in devnet.nodes}
    for node in devnet.nodes:
        status = node.status()
        assert all(v["status"] == "active" for v in status["validators"]), status["validators"]
        honest = [p for p in status["peers"] if p["node_id"] in addresses]
        assert {p["node_id"] for p in honest} == addresses - {node.address}, (node.name, status["peers"])
        assert all(p["score"] == 0 for p in honest), (node.name, honest)
        assert pid_alive(node.pid)
