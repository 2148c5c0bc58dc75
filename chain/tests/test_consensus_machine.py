"""The consensus state machine in a simulated network with virtual time.

Deterministic: every message and timeout is an event in one priority queue,
so a fault scenario replays exactly. Real processes and websockets are tested
elsewhere; here the algorithm itself is held to safety and liveness.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from dataclasses import dataclass, field

import pytest

from chain.consensus import (
    DOMAIN_PROPOSAL,
    PRECOMMIT,
    PREVOTE,
    Broadcast,
    Decide,
    HeightState,
    Misbehaviour,
    Proposal,
    ScheduleTimeout,
    Timeouts,
    ValidatorSet,
    Vote,
    proposal_body,
)
from chain.protocol.block import DOMAIN_VOTE, vote_body
from chain.protocol.encoding import canonical_json
from chain.protocol.keys import Key

CHAIN = "aitbc-sim-1"


class GuardedSigner:
    """Signs at most once per (height, round, step), like the node's persisted guard."""

    def __init__(self, key: Key, *, double_sign: bool = False) -> None:
        self.key = key
        self.address = key.address
        self.signed: set[tuple] = set()
        self.double_sign = double_sign

    def sign_vote(self, chain_id: str, height: int, round_: int, step: str, block_id: str) -> str | None:
        if (height, round_, step) in self.signed and not self.double_sign:
            return None
        self.signed.add((height, round_, step))
        body = vote_body(chain_id=chain_id, height=height, round=round_, step=step, block_id=block_id or None)
        return self.key.sign(DOMAIN_VOTE, canonical_json(body)).hex()

    def sign_proposal(self, chain_id, height, round_, pol_round, block_id) -> str | None:
        if (height, round_, "proposal") in self.signed:
            return None
        self.signed.add((height, round_, "proposal"))
        body = proposal_body(chain_id=chain_id, height=height, round_=round_, pol_round=pol_round, block_id=block_id)
        return self.key.sign(DOMAIN_PROPOSAL, canonical_json(body)).hex()


def block_for(height: int, proposer: str, round_: int, salt: str = "") -> tuple[str, dict]:
    block = {"height": height, "proposer": proposer, "round": round_, "salt": salt}
    return hashlib.sha256(canonical_json(block)).hexdigest(), block


def validate(block: dict) -> str | None:
    return hashlib.sha256(canonical_json(block)).hexdigest()


@dataclass
class Node:
    key: Key
    signer: GuardedSigner
    height: int = 1
    state: HeightState | None = None
    decided: dict[int, str] = field(default_factory=dict)
    rounds: dict[int, int] = field(default_factory=dict)
    online: bool = True
    buffered: list = field(default_factory=list)
    last_commit: list = field(default_factory=list)


class Network:
    def __init__(self, n: int, *, seed: int = 1, latency: tuple[int, int] = (5, 40)) -> None:
        self.rng = random.Random(seed)
        self.keys = [Key(bytes([i + 1]) * 32) for i in range(n)]
        self.valset = ValidatorSet({k.address: (k.pubkey_hex, 1) for k in self.keys})
        self.nodes = {k.address: Node(k, GuardedSigner(k)) for k in self.keys}
        self.queue: list = []
        self.counter = itertools.count()
        self.now = 0
        self.latency = latency
        self.partition: list[set[str]] | None = None
        self.evidence: list[Misbehaviour] = []
        self.timeouts = Timeouts(propose_ms=300, prevote_ms=200, precommit_ms=200, delta_ms=100)

    def start(self, retransmit_ms: int = 1000) -> None:
        for node in self.nodes.values():
            self._new_height(node)
        self.retransmit_ms = retransmit_ms
        self.schedule(retransmit_ms, ("retransmit", "", None))

    def _retransmit(self) -> None:
        """The gossip layer's periodic re-send: own current votes, and the last commit for laggards."""
        for node in self.nodes.values():
            if not node.online:
                continue
            self._handle(node, node.state.retransmit())
            for message in node.last_commit:
                self.broadcast(node.key.address, message)
        self.schedule(self.now + self.retransmit_ms, ("retransmit", "", None))

    def _new_height(self, node: Node) -> None:
        node.state = HeightState(
            chain_id=CHAIN,
            height=node.height,
            validators=self.valset,
            signer=node.signer,
            propose=lambda h, r, a=node.key.address: block_for(h, a, r),
            validate=validate,
            timeouts=self.timeouts,
        )
        self._handle(node, node.state.start())
        for kind, item in node.buffered:
            if item.height == node.height:
                self._deliver(node, kind, item)
        node.buffered = [(k, i) for k, i in node.buffered if i.height > node.height]

    def connected(self, a: str, b: str) -> bool:
        if self.partition is None:
            return True
        return any(a in side and b in side for side in self.partition)

    def _handle(self, node: Node, outputs: list) -> None:
        for output in outputs:
            if isinstance(output, Broadcast):
                self.broadcast(node.key.address, output.message)
            elif isinstance(output, ScheduleTimeout):
                self.schedule(self.now + output.delay_ms, ("timeout", node.key.address, output))
            elif isinstance(output, Decide):
                node.decided[output.height] = output.block_id
                node.rounds[output.height] = output.round
                proposal = next(p for p in node.state.proposals.values() if p.block_id == output.block_id)
                node.last_commit = [proposal.message(CHAIN)] + [
                    v.message(CHAIN)
                    for v in node.state.votes[(output.round, PRECOMMIT)].votes.values()
                    if v.block_id == output.block_id
                ]
                assert ValidatorSet.has_quorum(self.valset, len(output.commit["signatures"]))
                node.height += 1
                self._new_height(node)
                return
            elif isinstance(output, Misbehaviour):
                self.evidence.append(output)

    def broadcast(self, sender: str, message: dict) -> None:
        for address in self.nodes:
            if address == sender or not self.connected(sender, address):
                continue
            self.schedule(self.now + self.rng.randint(*self.latency), ("message", address, message))

    def schedule(self, at: int, event) -> None:
        heapq.heappush(self.queue, (at, next(self.counter), event))

    def _deliver(self, node: Node, kind: str, item) -> None:
        if item.height > node.height:
            node.buffered.append((kind, item))
            return
        outputs = node.state.receive_proposal(item) if kind == "proposal" else node.state.receive_vote(item)
        self._handle(node, outputs)

    def run(self, until_ms: int) -> None:
        while self.queue and self.queue[0][0] <= until_ms:
            at, _, event = heapq.heappop(self.queue)
            self.now = at
            kind, address, payload = event
            if kind == "retransmit":
                self._retransmit()
                continue
            node = self.nodes[address]
            if not node.online:
                continue
            if kind == "timeout":
                self._handle(node, node.state.on_timeout(payload.step, payload.height, payload.round))
            elif payload["type"] == "proposal":
                self._deliver(node, "proposal", Proposal.from_message(payload, CHAIN))
            else:
                self._deliver(node, "vote", Vote.from_message(payload, CHAIN))
        self.now = until_ms

    def assert_agreement(self) -> None:
        by_height: dict[int, set[str]] = {}
        for node in self.nodes.values():
            for height, block_id in node.decided.items():
                by_height.setdefault(height, set()).add(block_id)
        for height, ids in by_height.items():
            assert len(ids) == 1, f"two blocks decided at height {height}: {ids}"


def test_four_equal_validators_decide_every_height_in_round_zero() -> None:
    net = Network(4)
    net.start()
    net.run(20_000)
    net.assert_agreement()
    heights = [max(n.decided, default=0) for n in net.nodes.values()]
    assert min(heights) >= 20
    assert all(r == 0 for n in net.nodes.values() for r in n.rounds.values())


def test_proposers_rotate_by_weighted_round_robin() -> None:
    keys = [Key(bytes([i + 1]) * 32) for i in range(3)]
    powers = {keys[0].address: 1, keys[1].address: 2, keys[2].address: 1}
    valset = ValidatorSet({k.address: (k.pubkey_hex, powers[k.address]) for k in keys})
    chosen = [valset.proposer(h, 0) for h in range(1, 401)]
    for address, power in powers.items():
        assert chosen.count(address) == 100 * power
    assert valset.proposer(5, 1) == valset.proposer(6, 0)


def test_an_offline_proposer_costs_one_round() -> None:
    net = Network(4, seed=2)
    net.start()
    net.run(3_000)
    start = max(max(n.decided, default=0) for n in net.nodes.values())
    victim = net.valset.proposer(start + 2, 0)
    net.nodes[victim].online = False
    net.run(15_000)
    others = [n for a, n in net.nodes.items() if a != victim]
    net.assert_agreement()
    assert all(n.decided.get(start + 2) for n in others)
    assert all(n.rounds[start + 2] == 1 for n in others), "the height whose proposer is offline takes one more round"


def test_a_two_two_partition_decides_nothing_and_heals() -> None:
    net = Network(4, seed=3)
    net.start()
    net.run(2_000)
    addresses = list(net.nodes)
    net.partition = [set(addresses[:2]), set(addresses[2:])]
    before = {a: max(n.decided, default=0) for a, n in net.nodes.items()}
    net.run(2_000 + 20_000)
    during = {a: max(n.decided, default=0) for a, n in net.nodes.items()}
    # At most the height in flight when the cut came can still complete.
    assert all(during[a] <= max(before.values()) + 1 for a in addresses)
    net.partition = None
    net.run(2_000 + 20_000 + 60_000)
    net.assert_agreement()
    assert min(max(n.decided, default=0) for n in net.nodes.values()) > max(during.values()) + 3


def test_a_double_signing_validator_is_caught_and_cannot_split_the_chain() -> None:
    net = Network(4, seed=4)
    byzantine = net.keys[0].address
    net.nodes[byzantine].signer.double_sign = True
    original_vote = net.nodes[byzantine].signer.sign_vote

    def equivocate(chain_id, height, round_, step, block_id):
        # Sign the honest vote and, to half the network, a conflicting one.
        signature = original_vote(chain_id, height, round_, step, block_id)
        fake_id = hashlib.sha256(f"{height}/{round_}/fake".encode()).hexdigest()
        fake = vote_body(chain_id=chain_id, height=height, round=round_, step=step, block_id=fake_id)
        bad = {
            "type": "vote",
            "vote": fake,
            "validator": byzantine,
            "signature": net.keys[0].sign(DOMAIN_VOTE, canonical_json(fake)).hex(),
        }
        for address in list(net.nodes)[2:]:
            net.schedule(net.now + 1, ("message", address, bad))
        return signature

    net.nodes[byzantine].signer.sign_vote = equivocate
    net.start()
    net.run(15_000)
    net.assert_agreement()
    assert net.evidence, "conflicting votes must be reported"
    assert all(e.first.validator == byzantine for e in net.evidence)
    assert min(max(n.decided, default=0) for n in net.nodes.values()) >= 5


@pytest.mark.parametrize("seed", range(5))
def test_random_delays_and_a_crashed_validator_never_break_agreement(seed: int) -> None:
    net = Network(4, seed=100 + seed, latency=(1, 600))
    net.start()
    net.run(5_000)
    crashed = net.keys[seed % 4].address
    net.nodes[crashed].online = False
    net.run(40_000)
    net.assert_agreement()
    live = [n for a, n in net.nodes.items() if a != crashed]
    assert min(max(n.decided, default=0) for n in live) >= 5


def test_a_validator_locked_on_a_block_does_not_precommit_another_at_that_height() -> None:
    keys = [Key(bytes([i + 1]) * 32) for i in range(4)]
    valset = ValidatorSet({k.address: (k.pubkey_hex, 1) for k in keys})
    # A validator that proposes neither round 0 nor round 1.
    me = next(k for k in keys if k.address not in (valset.proposer(1, 0), valset.proposer(1, 1)))
    state = HeightState(
        chain_id=CHAIN,
        height=1,
        validators=valset,
        signer=GuardedSigner(me),
        propose=lambda h, r: block_for(h, me.address, r),
        validate=validate,
    )
    state.start()
    signers = {k.address: GuardedSigner(k) for k in keys}

    def proposal(round_: int, salt: str, pol: int | None = None) -> Proposal:
        proposer = valset.proposer(1, round_)
        block_id, block = block_for(1, proposer, round_, salt)
        sig = signers[proposer].sign_proposal(CHAIN, 1, round_, pol, block_id)
        return Proposal(1, round_, pol, block_id, block, proposer, sig)

    def vote(key: Key, round_: int, step: str, block_id: str) -> Vote:
        return Vote(
            1, round_, step, block_id, key.address, signers[key.address].sign_vote(CHAIN, 1, round_, step, block_id)
        )

    p0 = proposal(0, "A")
    state.receive_proposal(p0)
    for k in keys:
        if k.address != me.address:
            state.receive_vote(vote(k, 0, PREVOTE, p0.block_id))
    assert state.locked_id == p0.block_id
    # Round 1 proposes another block without a proof of lock change: prevote nil, never precommit it.
    state.on_timeout(2, 1, 0)
    state.round_senders.clear()
    state._start_round(1, [])
    p1 = proposal(1, "B")
    outputs = state.receive_proposal(p1)
    prevotes = [o.message for o in outputs if isinstance(o, Broadcast) and o.message["type"] == "vote"]
    assert prevotes and all(m["vote"]["block_id"] == "" for m in prevotes)
    others = [k for k in keys if k.address != me.address]
    broadcast: list = []
    for k in others[:2]:
        broadcast += state.receive_vote(vote(k, 1, PREVOTE, p1.block_id))
    # Two of four prevotes for B (and this validator's nil) are no quorum: the lock on A holds.
    precommits = [o.message for o in broadcast if isinstance(o, Broadcast) and o.message["vote"]["type"] == PRECOMMIT]
    assert all(m["vote"]["block_id"] != p1.block_id for m in precommits)
    assert state.locked_id == p0.block_id
    # A third prevote makes more than 2/3 for B in a later round: by the same rule it relocks on B.
    outputs = state.receive_vote(vote(others[2], 1, PREVOTE, p1.block_id))
    precommits = [o.message for o in outputs if isinstance(o, Broadcast) and o.message["vote"]["type"] == PRECOMMIT]
    assert [m["vote"]["block_id"] for m in precommits] == [p1.block_id]
    assert (state.locked_round, state.locked_id) == (1, p1.block_id)


def test_a_lock_restored_without_its_block_still_binds_and_its_proposer_offers_a_new_block() -> None:
    """After a restart only the lock's id is known: prevotes stay bound to it, and proposing needs a fresh block."""
    keys = [Key(bytes([i + 1]) * 32) for i in range(4)]
    valset = ValidatorSet({k.address: (k.pubkey_hex, 1) for k in keys})
    me = next(k for k in keys if k.address == valset.proposer(1, 0))
    locked_id, _block = block_for(1, valset.proposer(1, 3), 0, "locked")
    state = HeightState(
        chain_id=CHAIN,
        height=1,
        validators=valset,
        signer=GuardedSigner(me),
        propose=lambda h, r: block_for(h, me.address, r, "fresh"),
        validate=validate,
        locked=(0, locked_id, None),
    )
    outputs = state.start()
    messages = [o.message for o in outputs if isinstance(o, Broadcast)]
    proposals = [m for m in messages if m["type"] == "proposal"]
    assert [p["proposal"]["block_id"] for p in proposals] == [block_for(1, me.address, 0, "fresh")[0]]
    assert proposals[0]["proposal"]["pol_round"] is None
    prevotes = [m["vote"]["block_id"] for m in messages if m["type"] == "vote"]
    assert prevotes == [""], "locked on another block, it prevotes nil for its own fresh one"
