"""A node's network: gossip between nodes over websockets, consensus driving, block sync.

Each node serves ``/p2p/`` (``chain/consumers.py``) and dials the peers in its
configuration (``--peers``) with reconnection and backoff. Everything a peer
sends goes into one queue that a single consensus thread works through, so
the consensus state machine (``chain/consensus.py``) and the ledger writes it
triggers never run concurrently. Messages are deduplicated by the SHA-256 of
their text, capped in size, and a peer that sends malformed or
invalid ones loses score and, past a threshold, its connection for a while.

Message types (JSON text frames): ``hello`` (chain id, genesis id, node id, its
key, height, a challenge) and ``auth`` (the proof of a node id over the other
side's challenge, ``chain/handshake.py``), ``status`` (height, the nodes the sender is connected
to), ``txs`` (transactions admitted by the sender), ``proposal``, ``vote``, ``commit`` (a height
the sender decided), ``block`` (a decided block with its commit, from a one-validator chain),
``evidence``. See ``docs/protocol.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import logging
import queue
import random
import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import requests
from django.db import close_old_connections, connection

from chain import handshake
from chain.consensus import (
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
    verify_proposal_signature,
)
from chain.protocol.block import verify_vote, vote_body
from chain.protocol.encoding import canonical_json
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key, domain_tag

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
BAN_SCORE = -100
BAN_SECONDS = 60
SCORE_RECOVERY_PER_S = 1  # a peer's score climbs back towards 0, so rare honest slips never add up to a ban
SEEN_CAPACITY = 50_000
MAX_LINKS = 1_000  # node ids a status may name as its sender's connections
# Per peer: what it may send (token buckets: a sustained rate and a burst) and what of it may
# wait for the consensus thread at once. Beyond the rate each frame is dropped and costs a point;
# beyond the queue bound frames are dropped without cost (the backlog may be this node's slowness).
PEER_MESSAGES_PER_S = 2_000
PEER_MESSAGE_BURST = 10_000
PEER_BYTES_PER_S = 32 * 1024 * 1024
PEER_BYTE_BURST = 64 * 1024 * 1024
PEER_QUEUE_MAX = 1_000
INBOX_MAX = 10_000  # events waiting for the consensus thread, all peers together
TX_INBOX_MAX = 1_000  # txs messages waiting for admission
FUTURE_MAX = 5_000  # consensus messages kept for the next height
SYNC_RETRY_S = 5  # a peer whose claimed height gave nothing to sync is not asked again before this
# What each kind of misbehaviour costs a peer's score.
PENALTY = {
    "oversized": 50,
    "binary": 20,
    "malformed_json": 20,
    "no_type": 20,
    "unknown_type": 5,
    "other_chain": 200,
    "bad_hello": 200,
    "malformed_consensus": 20,
    "non_validator": 10,
    "not_proposer": 20,
    "bad_signature": 20,
    "bad_txs": 20,
    "bad_block": 30,
    "unservable_height": 10,
    "flood": 1,
}
SYNC_BATCH = 200
STEP_ORDER = {"proposal": 0, "prevote": 1, "precommit": 2}
DOMAIN_PROPOSAL = domain_tag("proposal")
# A decided block's message starts with its height, so a node that has it already drops the
# copies its other peers send without parsing megabytes (see ``ConsensusDriver._stale_block``).
BLOCK_PREFIX = '{"type": "block", "height": '
TX_ADMIT_BATCH = 5000  # gossiped transactions admitted under one hold of the mempool lock
# A txs message is relayed as it came only if no longer than its transactions could honestly
# be (a transaction's JSON is under 1 KiB): padding must not ride on a relay to every peer.
RELAY_CHARS_PER_TX = 1024
# What a relayed proposal or vote carries: the fields its author sends, nothing a peer added.
RELAY_FIELDS = {
    "proposal": ("type", "proposal", "block", "proposer", "signature"),
    "vote": ("type", "vote", "validator", "signature"),
}


# -- the validator's guarded key ---------------------------------------------------------------


class DbSigner:
    """Signs votes and proposals at most once per (height, round, step), remembered in the database.

    The record is written and committed before the signature leaves, so a node killed
    right after signing still knows on restart what it signed. This process is the row's
    only writer: it reads the row once and then decides from what it last wrote, and each
    signature costs one conditional UPDATE, which refuses to move the record backwards
    whatever this process believes.

    The same write keeps the validator's lock (``save_lock``): a precommit for a block is
    signed exactly when the state machine locks on that block in that round, so the precommit's
    record carries the lock, and the first signature of a later height drops a lock left from
    an earlier one. A lock then costs no write of its own.
    """

    def __init__(self, key: Key, *, double_sign: bool = False) -> None:
        self.key = key
        self.address = key.address
        self.double_sign = double_sign  # test hook: a faulty validator that signs conflicting votes
        self.last: tuple[int, int, int, str, str] | None = None  # (height, round, step, block id, signature)
        self.lock_height: int | None = None  # the height of the lock the row may hold (None: unknown)
        self.lock_written: tuple[int, int, str] | None = None  # (height, round, block id) written last

    def _load(self) -> tuple[int, int, int, str, str]:
        from chain.models import SignerState

        # The guard's columns and the lock, read once: from then on this process knows the row.
        row = (
            SignerState.objects.filter(singleton=1)
            .values_list("height", "round", "step", "block_id", "signature", "locked")
            .first()
        )
        if row is None:
            SignerState.objects.get_or_create(singleton=1)
            row = (0, 0, 0, "", "", None)
        locked = row[5]
        self.lock_height = locked.get("height", -1) if isinstance(locked, dict) else -1
        return row[:5]

    def _guard(self, height: int, round_: int, step: str, block_id: str, sign) -> str | None:
        from chain.models import SignerState

        order = STEP_ORDER[step]
        if self.last is None:
            self.last = self._load()
        last_height, last_round, last_step, last_block_id, last_signature = self.last
        last = (last_height, last_round, last_step)
        here = (height, round_, order)
        if here < last and not self.double_sign:
            return None
        if here == last and last_signature:
            if last_block_id == block_id or self.double_sign:
                return last_signature if last_block_id == block_id else sign()
            return None
        signature = sign()
        fields: dict[str, Any] = {"height": height, "round": round_, "step": order, "block_id": block_id}
        if step == "precommit" and block_id:
            fields["locked"] = {"height": height, "round": round_, "block_id": block_id}
        elif self.lock_height is not None and self.lock_height < height:
            fields["locked"] = None
        # Raw SQL: the ORM's compilation of this UPDATE cost more than the write, twice a height.
        q = connection.ops.quote_name
        sets = [f"{q(name)} = %s" for name in ("signature", *fields)]
        values = [signature, *fields.values()]
        if "locked" in fields:
            values[-1] = SignerState._meta.get_field("locked").get_db_prep_value(values[-1], connection)
        where = f"{q('singleton')} = 1"
        params: list[Any] = []
        if not self.double_sign:
            h, r, st, sig = q("height"), q("round"), q("step"), q("signature")
            where += (
                f" AND ({h} < %s OR ({h} = %s AND {r} < %s) OR ({h} = %s AND {r} = %s AND {st} < %s)"
                f" OR ({h} = %s AND {r} = %s AND {st} = %s AND {sig} = ''))"
            )
            params = [height, height, round_, height, round_, order, height, round_, order]
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {q(SignerState._meta.db_table)} SET {', '.join(sets)} WHERE {where}", [*values, *params]
            )
            updated = cursor.rowcount
        if updated != 1:
            # The record is not what this process last wrote (another process shares the key's
            # database): believe the record, and sign nothing it does not allow.
            self.last = None
            self.lock_height = None
            return None
        self.last = (height, round_, order, block_id, signature)
        if "locked" in fields:
            locked = fields["locked"]
            self.lock_height = height if locked else -1
            self.lock_written = (height, round_, block_id) if locked else None
        return signature

    def sign_vote(self, chain_id: str, height: int, round_: int, step: str, block_id: str) -> str | None:
        body = vote_body(chain_id=chain_id, height=height, round=round_, step=step, block_id=block_id or None)
        from chain.protocol.block import DOMAIN_VOTE

        return self._guard(
            height, round_, step, block_id, lambda: self.key.sign(DOMAIN_VOTE, canonical_json(body)).hex()
        )

    def sign_proposal(
        self, chain_id: str, height: int, round_: int, pol_round: int | None, block_id: str
    ) -> str | None:
        body = proposal_body(chain_id=chain_id, height=height, round_=round_, pol_round=pol_round, block_id=block_id)
        return self._guard(
            height, round_, "proposal", block_id, lambda: self.key.sign(DOMAIN_PROPOSAL, canonical_json(body)).hex()
        )


def save_lock(height: int, round_: int, block_id: str | None) -> None:
    """Remember this validator's lock, before its precommit leaves: the height, round and block id.

    Only the id: the lock restrains what this validator votes for, which its id says; encoding
    the whole block for every lock was a sixth of the consensus thread's time under load.
    """
    from chain.models import SignerState

    locked = None if block_id is None else {"height": height, "round": round_, "block_id": block_id}
    # The row exists once this validator has signed anything, which it has before it locks.
    if not SignerState.objects.filter(singleton=1).update(locked=locked):
        SignerState.objects.get_or_create(singleton=1)
        SignerState.objects.filter(singleton=1).update(locked=locked)


def clear_lock() -> None:
    """Forget a lock whose height is decided. The signer's row holds it, and every signature
    rewrites that row: a stale lock there would be a whole block rewritten with every vote."""
    from chain.models import SignerState

    SignerState.objects.filter(singleton=1, locked__isnull=False).update(locked=None)


def load_lock(height: int) -> tuple[int, str, dict | None] | None:
    """The lock saved for ``height``: its round, block id and, from records that kept it, the block."""
    from chain.models import SignerState

    state = SignerState.objects.filter(singleton=1).first()
    if state is None or not state.locked or state.locked.get("height") != height:
        return None
    return state.locked["round"], state.locked["block_id"], state.locked.get("block")


# -- peers -------------------------------------------------------------------------------------------


class RateBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self, cost: float = 1) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


@dataclass
class Peer:
    id: str
    direction: str  # "in" or "out"
    url: str = ""
    rpc_url: str = ""
    node_id: str = ""  # set once the peer proved it (chain.handshake); "" until then
    height: int = 0
    score: int = 0
    connected_at: float = field(default_factory=time.time)
    send: Any = None  # callable(text) that queues a frame to this peer
    # Frames queued for the consensus thread and frames it has handled, each written by one
    # thread only (the connection's event loop, the consensus thread), so neither loses counts.
    enqueued: int = 0
    handled: int = 0
    scored_at: float = field(default_factory=time.monotonic)
    sync_after: float = 0.0
    challenge: str = ""  # the challenge this side sent it, which its proof must sign
    claimed: tuple[str, str] | None = None  # (node_id, pubkey) an inbound peer's hello claimed
    hello: dict | None = None  # that hello, acted on once the peer proves the id
    messages: RateBucket = field(default_factory=lambda: RateBucket(PEER_MESSAGES_PER_S, PEER_MESSAGE_BURST))
    traffic: RateBucket = field(default_factory=lambda: RateBucket(PEER_BYTES_PER_S, PEER_BYTE_BURST))

    @property
    def queued(self) -> int:
        return self.enqueued - self.handled

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node_id": self.node_id,
            "direction": self.direction,
            "url": self.url,
            "height": self.height,
            "score": self.score,
            "queued": self.queued,
        }


class Gossip:
    """Connections to peers, in and out, and what crosses them."""

    def __init__(self, driver: ConsensusDriver, peer_urls: list[str]) -> None:
        self.driver = driver
        self.peer_urls = [u for u in peer_urls if u]
        self.peers: dict[str, Peer] = {}
        self.banned: dict[str, float] = {}
        self.blocked_nodes: set[str] = set()  # test hook: a network partition
        # What each proven node said it is connected to (its last status), whichever of its
        # connections the status came over: frames to it go over the one this node dialed.
        self.links: dict[str, frozenset[str]] = {}
        # What hostile or broken peers cost: shown by /status (``p2p``), so operators and tests see it.
        self.counters: dict[str, int] = dict.fromkeys(
            ("penalties", "disconnects", "refused", "dropped_rate", "dropped_queue", "dropped_future", "dropped_txs"),
            0,
        )
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._stopping = False

    # outbound connections, in a thread with its own event loop
    def start(self) -> None:
        if not self.peer_urls:
            return
        self.thread = threading.Thread(target=self._run_loop, name="p2p-dialer", daemon=True)
        self.thread.start()

    def _run_loop(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        for url in self.peer_urls:
            self.loop.create_task(self._dial(url))
        self.loop.run_forever()

    async def _dial(self, url: str) -> None:
        import websockets

        backoff = 0.5
        while not self._stopping:
            try:
                async with websockets.connect(url, max_size=MAX_MESSAGE_BYTES, open_timeout=5, ping_interval=20) as ws:
                    backoff = 0.5
                    outbox: asyncio.Queue[str] = asyncio.Queue()
                    peer = Peer(id=f"out-{secrets.token_hex(4)}", direction="out", url=url)
                    loop = asyncio.get_running_loop()
                    peer.send = lambda text, q=outbox, lp=loop: lp.call_soon_threadsafe(q.put_nowait, text)
                    self.add(peer)
                    sender: asyncio.Task | None = None
                    try:
                        peer.challenge = handshake.new_challenge()
                        await ws.send(self.driver.hello_text(challenge=peer.challenge))
                        sender = asyncio.create_task(self._pump(ws, outbox))
                        async for frame in ws:
                            if isinstance(frame, bytes):
                                frame = frame.decode("utf-8", "replace")
                            self.received(peer, frame)
                            if peer.id not in self.peers:
                                break
                    finally:
                        # Also when the peer died mid-read: a sender left waiting on its queue is
                        # garbage-collected later as "Task was destroyed but it is pending!".
                        if sender is not None:
                            sender.cancel()
                        self.remove(peer)
            except (TimeoutError, OSError) as exc:
                logger.debug("p2p dial %s failed: %s", url, exc)
            except Exception as exc:  # any other failure: log it, wait and dial again
                logger.info("p2p connection to %s ended: %s: %s", url, type(exc).__name__, exc)
            await asyncio.sleep(backoff + random.random() * backoff)
            backoff = min(backoff * 2, 10.0)

    @staticmethod
    async def _pump(ws, outbox: asyncio.Queue) -> None:
        while True:
            text = await outbox.get()
            if text is None:  # disconnect requested (a penalized peer)
                await ws.close()
                return
            await ws.send(text)

    def add(self, peer: Peer) -> None:
        with self.lock:
            self.peers[peer.id] = peer
        logger.info("peer %s connected (%s %s)", peer.id, peer.direction, peer.url)

    def remove(self, peer: Peer) -> None:
        with self.lock:
            self.peers.pop(peer.id, None)
            if peer.node_id and not any(p.node_id == peer.node_id for p in self.peers.values()):
                self.links.pop(peer.node_id, None)
        logger.info("peer %s disconnected", peer.id)

    def received(self, peer: Peer, text: str) -> None:
        """A frame from ``peer``, on its connection's event loop: admit it to the consensus queue or drop it."""
        if peer.id not in self.peers:
            return  # disconnected already; frames still in flight are not worth a look
        if peer.node_id and peer.node_id in self.blocked_nodes:
            return
        if len(text) > MAX_MESSAGE_BYTES:
            self.penalize(peer, PENALTY["oversized"], "oversized message")
            return
        if not peer.messages.take() or not peer.traffic.take(len(text)):
            self.counters["dropped_rate"] += 1
            self.penalize(peer, PENALTY["flood"], "flooding: frame dropped", quiet=True)
            return
        if peer.queued >= PEER_QUEUE_MAX or self.driver.inbox.qsize() >= INBOX_MAX:
            self.counters["dropped_queue"] += 1
            return
        peer.enqueued += 1
        self.driver.enqueue(("message", peer, text))

    def penalize(self, peer: Peer, points: int, why: str, *, quiet: bool = False) -> None:
        now = time.monotonic()
        peer.score = min(0, peer.score + int((now - peer.scored_at) * SCORE_RECOVERY_PER_S)) - points
        peer.scored_at = now
        self.counters["penalties"] += 1
        # A flood costs a point a frame: one line per ten points, not one per frame.
        if not quiet or peer.score % 10 == 0:
            logger.warning("peer %s (%s): %s (score %d)", peer.id, peer.node_id or peer.url, why, peer.score)
        if peer.score <= BAN_SCORE and peer.id in self.peers:
            self.banned[peer.node_id or peer.url or peer.id] = time.time() + BAN_SECONDS
            self.counters["disconnects"] += 1
            logger.warning(
                "peer %s (%s) disconnected and refused for %d s: score %d",
                peer.id,
                peer.node_id or peer.url,
                BAN_SECONDS,
                peer.score,
            )
            self.disconnect(peer)

    def disconnect(self, peer: Peer) -> None:
        self.remove(peer)
        if peer.send is not None:
            try:
                peer.send(None)
            except Exception:  # already gone
                pass

    def is_banned(self, key: str) -> bool:
        until = self.banned.get(key)
        return until is not None and until > time.time()

    def broadcast(self, text: str, *, exclude: Peer | None = None) -> None:
        """Send ``text`` once to every node connected, none of it to ``exclude``'s node (see ``targets``)."""
        self.send_to(self.targets(exclude=exclude), text)

    def targets(self, *, exclude: Peer | None = None) -> list[Peer]:
        """The connections a frame goes over: one per node connected, none to ``exclude``'s node.

        Two nodes that list each other are connected twice (each dials the other); the
        frame goes over one of them, the connection this node dialed, as every copy costs
        both ends a websocket frame and a digest. A connection whose node id is not
        proven yet (its handshake under way) gets every frame.

        ``exclude`` is the peer a relayed frame came from. A node that frame's sender says
        it is connected to (its last ``status``) is skipped too: the sender sent the frame
        to each node it is connected to, bar those connected to its own source, which had
        it from there by the same rule, so a relay to them would only be dropped by its digest.
        """
        with self.lock:
            peers = list(self.peers.values())
        skip = exclude.node_id if exclude is not None and exclude.node_id else None
        dialed = {p.node_id for p in peers if p.direction == "out" and p.node_id}
        had_it = self.links.get(skip, frozenset()) if skip is not None else frozenset()
        chosen = []
        for peer in peers:
            node = peer.node_id
            if peer is exclude or (node and (node == skip or node in self.blocked_nodes)):
                continue
            if node and peer.direction == "in" and node in dialed:
                continue
            if node and node in had_it:
                continue
            chosen.append(peer)
        return chosen

    @staticmethod
    def send_to(peers: list[Peer], text: str) -> None:
        for peer in peers:
            try:
                peer.send(text)
            except Exception as exc:
                logger.debug("send to %s failed: %s", peer.id, exc)

    def linked_nodes(self) -> list[str]:
        """The proven node ids this node exchanges frames with (told to peers in ``status``)."""
        with self.lock:
            return sorted({p.node_id for p in self.peers.values() if p.node_id and p.node_id not in self.blocked_nodes})

    def stop(self) -> None:
        self._stopping = True
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)


# -- the consensus thread -------------------------------------------------------------------------


class ConsensusDriver:
    """Runs consensus and sync for this node; every input goes through one queue and one thread."""

    def __init__(
        self,
        *,
        chain_id: str,
        genesis_id: str,
        key: Key | None,
        peers: list[str],
        block_time_ms: int,
        rpc_url: str,
        run_consensus: bool = True,
        double_sign: bool = False,
    ) -> None:
        self.chain_id = chain_id
        self.genesis_id = genesis_id
        self.rpc_url = rpc_url
        self.run_consensus = run_consensus
        self.key = key
        # A node proves its id to its peers with this key: its validator key, or one made now.
        self.identity = key if key is not None else Key.generate()
        self.node_id = self.identity.address
        self.signer = DbSigner(key, double_sign=double_sign) if key is not None else None
        self.block_time_ms = block_time_ms
        self.timeouts = Timeouts(
            propose_ms=max(1000, 2 * block_time_ms), prevote_ms=500, precommit_ms=500, delta_ms=500
        )
        self.inbox: queue.Queue = queue.Queue()
        self.timers: list = []
        self.counter = itertools.count()
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.seen_lock = threading.Lock()  # RPC threads mark the frames they send as seen
        self.gossip = Gossip(self, peers)
        self.height_state: HeightState | None = None
        self.future: list[tuple[Peer | None, dict]] = []
        self.thread = threading.Thread(target=self._run, name="consensus", daemon=True)
        # Gossiped transactions are admitted on their own thread, as RPC submissions are on theirs:
        # thousands of signatures queued ahead of a proposal would otherwise outlast its timeout.
        self.tx_inbox: queue.Queue = queue.Queue(maxsize=TX_INBOX_MAX)
        self.tx_thread = threading.Thread(target=self._run_txs, name="tx-gossip", daemon=True)
        self.last_error: str | None = None
        self.loop_seen_at = time.monotonic()
        self.stack_logged_at = 0.0
        self.last_commit_messages: list[str] = []
        self.saved_lock: tuple | None = None  # (height, round, block id) last saved
        self.min_fee: int | None = None
        self.decided_at: float = time.time()
        self.height = 0
        # The chain head as the consensus thread last read it: only this thread applies blocks,
        # so it stays exact until the thread applies one, and the checks of a height reuse it.
        self.head = None
        self._stop = threading.Event()

    # public, thread-safe
    def start(self) -> None:
        self.thread.start()
        self.tx_thread.start()
        self.gossip.start()

    def stop(self) -> None:
        self._stop.set()
        self.inbox.put(("stop",))
        try:
            self.tx_inbox.put(None, timeout=5)
        except queue.Full:
            pass
        self.gossip.stop()
        self.thread.join(10)
        self.tx_thread.join(10)

    def enqueue(self, event: tuple) -> None:
        self.inbox.put(event)

    def tick(self) -> None:
        """The beat tick: retransmit, announce our height, catch up if behind. Idempotent.

        It also watches the consensus thread: one that has not come back to its queue
        for 30 s is stuck, and its stack goes to the log so the cause can be found.
        """
        self.inbox.put(("tick",))
        stuck_for = time.monotonic() - self.loop_seen_at
        if stuck_for > 30 and self.thread.is_alive() and time.monotonic() - self.stack_logged_at > 60:
            self.stack_logged_at = time.monotonic()
            frame = sys._current_frames().get(self.thread.ident)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
            logger.error("consensus thread busy for %.0f s; it is at:\n%s", stuck_for, stack)

    def hello_text(self, *, challenge: str, answer_to: str | None = None) -> str:
        """This node's hello, carrying ``challenge`` for the peer to sign and, when answering
        a peer's hello, the proof of this node's id over that peer's challenge ``answer_to``."""
        # Called from the dialer's event loop, where the ORM may not run: the height is cached.
        hello = {
            "type": "hello",
            "chain_id": self.chain_id,
            "genesis_id": self.genesis_id,
            "node_id": self.node_id,
            "pubkey": self.identity.pubkey_hex,
            "height": self.height,
            "rpc_url": self.rpc_url,
            "challenge": challenge,
        }
        if answer_to is not None:
            hello["proof"] = self._prove(answer_to)
        return json.dumps(hello)

    def _prove(self, challenge: str) -> str:
        return handshake.prove(self.identity, chain_id=self.chain_id, genesis_id=self.genesis_id, challenge=challenge)

    def broadcast_txs(self, txs: list[dict], *, submitted: bytes | None = None) -> None:
        """Gossip transactions this node admitted (called after the admission committed).

        ``submitted`` is the batch body they came in, when every transaction of it was
        admitted: it passed the strict parse, so it is the JSON array of exactly ``txs``
        and goes out as it is, unless it is longer than those transactions could honestly
        be (the bound a relay keeps), which saves encoding the batch again.
        """
        if not txs:
            return
        if submitted is not None and len(submitted) <= RELAY_CHARS_PER_TX * len(txs):
            self._send_txs('{"type": "txs", "txs": ' + submitted.decode("utf-8") + "}")
        else:
            self._send_txs(json.dumps({"type": "txs", "txs": txs}, ensure_ascii=False))

    def _send_txs(self, text: str, *, exclude: Peer | None = None) -> None:
        # Peers relay a batch as it came, so its text comes back here: known, it costs a digest.
        self._mark_seen(hashlib.sha256(text.encode("utf-8", "replace")).hexdigest())
        self.gossip.broadcast(text, exclude=exclude)

    def _mark_seen(self, digest: str) -> bool:
        """Remember a frame's digest; False when it was already known."""
        with self.seen_lock:
            if digest in self.seen:
                return False
            self.seen[digest] = None
            if len(self.seen) > SEEN_CAPACITY:
                self.seen.popitem(last=False)
            return True

    def peers_info(self) -> list[dict]:
        with self.gossip.lock:
            return [p.info() for p in self.gossip.peers.values()]

    def p2p_info(self) -> dict[str, Any]:
        """What hostile peers cost this node, and how full its queues are (``/status`` ``p2p``)."""
        now = time.time()
        return {
            **self.gossip.counters,
            "banned": sum(1 for until in list(self.gossip.banned.values()) if until > now),
            "inbox": self.inbox.qsize(),
            "inbox_max": INBOX_MAX,
            "tx_inbox": self.tx_inbox.qsize(),
            "tx_inbox_max": TX_INBOX_MAX,
            "future": len(self.future),
            "future_max": FUTURE_MAX,
        }

    # the thread
    def _run(self) -> None:
        try:
            self._new_height(initial=True)
        except Exception:
            logger.exception("consensus could not start")
        while not self._stop.is_set():
            self.loop_seen_at = time.monotonic()
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            try:
                event = self.inbox.get(timeout=timeout if timeout is not None else 1.0)
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    if event[0] == "stop":
                        break
                    self._handle_event(event)
                while self.timers and self.timers[0][0] <= time.monotonic():
                    _, _, timer = heapq.heappop(self.timers)
                    self._handle_event(timer)
                self.last_error = None
            except Exception as exc:  # one bad event must not stop consensus
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("consensus event failed")
                close_old_connections()

    def _run_txs(self) -> None:
        while not self._stop.is_set():
            item = self.tx_inbox.get()
            if item is None:
                break
            # What queued up meanwhile is admitted together: one hold of the mempool lock and one
            # set of queries for many messages, whose fixed cost would otherwise dominate.
            items, count, stop = [item], _txs_len(item), False
            while count < TX_ADMIT_BATCH:
                try:
                    more = self.tx_inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                items.append(more)
                count += _txs_len(more)
            try:
                self._admit_gossiped(items)
            except Exception:  # a bad batch must not stop admission
                logger.exception("admitting gossiped transactions failed")
                close_old_connections()
            if stop:
                break

    def _schedule(self, delay_ms: int, event: tuple) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay_ms / 1000, next(self.counter), event))

    def _handle_event(self, event: tuple) -> None:
        kind = event[0]
        if kind == "message":
            self._on_text(event[1], event[2])
        elif kind == "timeout":
            state = self.height_state
            if state is not None and state.started:
                self._do(state.on_timeout(event[1], event[2], event[3]))
        elif kind == "start-height":
            state = self.height_state
            if state is not None and not state.started and state.height == event[1]:
                self._do(state.start())
                self._replay_future()
        elif kind == "tick":
            self._on_tick()

    # heights
    def _new_height(self, *, initial: bool = False) -> None:
        from chain.models import ChainState

        self.head = None
        if not self.run_consensus:
            self.height = ChainState.objects.get(singleton=1).height
            return
        from chain.services import block_build, block_check
        from chain.validators import validator_set_at

        state = ChainState.objects.get(singleton=1)
        self.height = state.height
        self.head = state
        height = state.height + 1
        validators = validator_set_at(height)
        if not validators:
            logger.error("no validators at height %d: consensus halted", height)
            self.height_state = None
            return

        def propose(h: int, r: int) -> tuple[str, dict]:
            assert self.key is not None
            return block_build(proposer=self.key.address, round_=r, state=self.head)

        def validate(block: dict) -> str | None:
            from chain.services import BlockInvalid

            try:
                return block_check(block, state=self.head)
            except BlockInvalid as exc:
                logger.warning("invalid proposal at height %d: %s", height, exc)
                return None

        # A lock is saved only while its height is being decided, so one for a height this
        # process has not started yet can only be a previous run's: read at start-up alone,
        # not with every height.
        locked = load_lock(height) if initial else None
        # A lock of an earlier height left since is dropped by the signer's next write (``DbSigner``).
        if initial and locked is None:
            clear_lock()
        self.height_state = HeightState(
            chain_id=self.chain_id,
            height=height,
            validators=ValidatorSet(validators),
            signer=self.signer,
            propose=propose,
            validate=validate,
            timeouts=self.timeouts,
            locked=locked,
        )
        # Keep the block cadence: start the height block_time after the previous block.
        last_ms = int(state.latest_block_time.timestamp() * 1000)
        wait_ms = max(0, last_ms + self.block_time_ms - int(time.time() * 1000))
        if initial:
            wait_ms = max(wait_ms, 200)
        self._schedule(wait_ms, ("start-height", height))

    def _replay_future(self) -> None:
        state = self.height_state
        if state is None:
            return
        keep = []
        for peer, message in self.future:
            if message.get("height_hint", 0) > state.height:
                keep.append((peer, message))
            else:
                self._consensus_message(peer, message)
        self.future = keep[-5000:]

    def _do(self, outputs: list) -> None:
        for output in outputs:
            if isinstance(output, Broadcast):
                if output.message["type"] == "vote" and output.message["vote"]["type"] == "precommit":
                    self._save_lock()
                self.gossip.broadcast(json.dumps(output.message, ensure_ascii=False))
                if self.signer is not None and self.signer.double_sign:
                    self._double_sign(output.message)
            elif isinstance(output, ScheduleTimeout):
                self._schedule(output.delay_ms, ("timeout", output.step, output.height, output.round))
            elif isinstance(output, Misbehaviour):
                self._record_misbehaviour(output)
            elif isinstance(output, Decide):
                self._decide(output)
                return

    def _save_lock(self) -> None:
        """Persist the lock a precommit is about to be sent under, if it changed."""
        state = self.height_state
        if state is None or state.locked_id is None:
            return
        lock = (state.height, state.locked_round, state.locked_id)
        if lock != self.saved_lock:
            # Written with the precommit's signature already, unless the signer did not write it.
            if self.signer is None or self.signer.lock_written != lock:
                save_lock(*lock)
                if self.signer is not None:
                    self.signer.lock_height = state.height
            self.saved_lock = lock

    def _double_sign(self, message: dict) -> None:
        """Test hook (``AITBC_TEST_DOUBLE_SIGN``): after each prevote, prevote for something else too."""
        if message["type"] != "vote" or message["vote"]["type"] != "prevote":
            return
        vote = message["vote"]
        other = secrets.token_hex(32) if vote["block_id"] == "" else ""
        signature = self.signer.sign_vote(self.chain_id, vote["height"], vote["round"], "prevote", other)
        if signature is not None:
            conflicting = Vote(vote["height"], vote["round"], "prevote", other, self.signer.address, signature)
            self.gossip.broadcast(json.dumps(conflicting.message(self.chain_id)))

    def _decide(self, decision: Decide) -> None:
        from chain.services import block_commit

        block = block_commit(body=decision.block, commit=decision.commit, checked=True)
        self.decided_at = time.time()
        # The commit alone: the peers hold the block (its proposal) unless they missed it, and
        # then fetch it; the whole block to each would cost every node three copies a height.
        message = json.dumps({"type": "commit", "commit": decision.commit})
        self.last_commit_messages = [message]
        self.gossip.broadcast(message)
        logger.info(
            "height %d final in round %d: %d transactions, id %s",
            block.height,
            decision.round,
            block.tx_count,
            block.id[:16],
        )
        self._new_height()

    def _record_misbehaviour(self, output: Misbehaviour) -> None:
        from chain.services import evidence_record

        evidence = {"votes": [output.first.message(self.chain_id), output.second.message(self.chain_id)]}
        if evidence_record(votes=evidence):
            logger.warning(
                "double signing by %s at height %d round %d",
                output.first.validator,
                output.first.height,
                output.first.round,
            )
            self.gossip.broadcast(json.dumps({"type": "evidence", "evidence": evidence}))

    def _stale_block(self, text: str) -> bool:
        """Whether a block message names a height this node has (its other peers' copies)."""
        end = text.find(",", len(BLOCK_PREFIX), len(BLOCK_PREFIX) + 20)
        digits = text[len(BLOCK_PREFIX) : end]
        return end > 0 and digits.isascii() and digits.isdigit() and int(digits) <= self.height

    # messages
    def _on_text(self, peer: Peer, text: str) -> None:
        peer.handled += 1
        if text.startswith(BLOCK_PREFIX) and self._stale_block(text):
            return
        digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
        if not self._mark_seen(digest):
            return
        try:
            # The C decoder, not the strict one: every object inside is checked field by field
            # (types, integer ranges, encodability) before anything uses it, and transactions
            # and votes are verified over their canonical re-encoding, so duplicate keys or
            # floats gain a peer nothing; the strict decoder cost more than the rest of gossip.
            message = json.loads(text)
        except (ValueError, RecursionError):
            self.gossip.penalize(peer, PENALTY["malformed_json"], "malformed JSON")
            return
        if not isinstance(message, dict) or type(message.get("type")) is not str:
            self.gossip.penalize(peer, PENALTY["no_type"], "message without a type")
            return
        kind = message["type"]
        if kind in ("hello", "status"):
            # These describe one connection, not gossip: a node's hello on its second connection
            # (or its status to two peers) is the same text, and must still name that peer.
            with self.seen_lock:
                self.seen.pop(digest, None)
        if kind == "hello":
            self._on_hello(peer, message)
        elif kind == "auth":
            self._on_auth(peer, message)
        elif kind == "status":
            links = message.get("peers")
            if (
                peer.node_id
                and isinstance(links, list)
                and len(links) <= MAX_LINKS
                and all(type(n) is str for n in links)
            ):
                self.gossip.links[peer.node_id] = frozenset(links)
            if type(message.get("height")) is int:
                peer.height = max(peer.height, message["height"])
                self._maybe_sync(peer)
        elif kind == "txs":
            try:
                self.tx_inbox.put_nowait((peer, message, text))
            except queue.Full:
                self.gossip.counters["dropped_txs"] += 1
        elif kind in ("proposal", "vote"):
            self._consensus_message(peer, message)
        elif kind == "commit":
            self._on_commit(peer, message)
        elif kind == "block":
            self._on_block(peer, message, text)
        elif kind == "evidence":
            from chain.services import evidence_record

            if evidence_record(votes=message.get("evidence")):
                self.gossip.broadcast(text, exclude=peer)
        else:
            self.gossip.penalize(peer, PENALTY["unknown_type"], f"unknown message type {kind[:40]!r}")

    def _on_hello(self, peer: Peer, message: dict) -> None:
        """A peer's hello (chain.handshake): answered with ours if it dialed us, checked against
        our challenge if we dialed it. Its node id counts only once its proof checks."""
        if message.get("chain_id") != self.chain_id or message.get("genesis_id") != self.genesis_id:
            self.gossip.penalize(peer, PENALTY["other_chain"], "hello from another chain")
            return
        identity = handshake.claimed_identity(message)
        challenge = message.get("challenge")
        if identity is None or not handshake.well_formed_challenge(challenge) or peer.claimed is not None:
            self.gossip.penalize(peer, PENALTY["bad_hello"], "a hello without a node id, key and challenge that agree")
            return
        node_id = identity[0]
        if node_id == self.node_id or self.gossip.is_banned(node_id):
            if node_id != self.node_id:
                self.gossip.counters["refused"] += 1
            self.gossip.disconnect(peer)
            return
        peer.claimed, peer.hello = identity, message
        if peer.direction == "in":
            peer.challenge = handshake.new_challenge()
            peer.send(self.hello_text(challenge=peer.challenge, answer_to=challenge))
            return
        # We dialed it: its hello answers ours, with its proof over our challenge.
        if not self._proven(peer, message.get("proof")):
            self.gossip.penalize(peer, PENALTY["bad_hello"], f"a hello whose proof of {node_id} does not verify")
            return
        peer.send(json.dumps({"type": "auth", "proof": self._prove(challenge)}))
        self._identified(peer)

    def _on_auth(self, peer: Peer, message: dict) -> None:
        """The proof of an inbound peer's id, over the challenge our hello sent it."""
        if peer.direction != "in" or peer.claimed is None or peer.node_id:
            self.gossip.penalize(peer, PENALTY["bad_hello"], "an auth out of turn")
            return
        node_id, _pubkey = peer.claimed
        if not self._proven(peer, message.get("proof")):
            self.gossip.penalize(peer, PENALTY["bad_hello"], f"an auth whose proof of {node_id} does not verify")
            return
        self._identified(peer)

    def _proven(self, peer: Peer, proof: Any) -> bool:
        """Whether ``proof`` proves the id ``peer`` claimed, over the challenge we sent it."""
        node_id, pubkey = peer.claimed
        return handshake.proof_valid(
            proof,
            pubkey=pubkey,
            node_id=node_id,
            chain_id=self.chain_id,
            genesis_id=self.genesis_id,
            challenge=peer.challenge,
        )

    def _identified(self, peer: Peer) -> None:
        node_id, _pubkey = peer.claimed
        if self.gossip.is_banned(node_id):
            self.gossip.counters["refused"] += 1
            self.gossip.disconnect(peer)
            return
        peer.node_id = node_id
        hello = peer.hello or {}
        if type(hello.get("rpc_url")) is str and hello["rpc_url"].startswith(("http://", "https://")):
            peer.rpc_url = hello["rpc_url"].rstrip("/")
        if type(hello.get("height")) is int:
            peer.height = max(peer.height, hello["height"])
        self._maybe_sync(peer)

    def _on_txs(self, peer: Peer, message: dict, text: str | None = None) -> None:
        self._admit_gossiped([(peer, message, text)])

    def _admit_gossiped(self, items: list[tuple[Peer, dict, str | None]]) -> None:
        """Admit the transactions of several ``txs`` messages at once; relay each message's fresh ones."""
        from chain.models import ChainState
        from chain.services import mempool_admit

        batches: list[tuple[Peer, list, str | None]] = []
        for peer, message, text in items:
            txs = message.get("txs")
            if not isinstance(txs, list) or len(txs) > 5000:
                self.gossip.penalize(peer, PENALTY["bad_txs"], "bad txs message")
                continue
            batches.append((peer, txs, text))
        if not batches:
            return
        if self.min_fee is None:  # a genesis parameter: read once
            self.min_fee = ChainState.objects.get(singleton=1).params["min_fee"]
        every = [tx for _peer, txs, _text in batches for tx in txs]
        results = mempool_admit(txs=every, chain_id=self.chain_id, min_fee=self.min_fee)
        start = 0
        for peer, txs, text in batches:
            mine = results[start : start + len(txs)]
            start += len(txs)
            fresh = [tx for tx, r in zip(txs, mine, strict=True) if r.error is None]
            # Codes no honest node's admitted transaction can earn here (state-dependent ones can: races).
            bad = sum(
                1
                for r in mine
                if r.error is not None
                and r.error.code in ("malformed", "invalid_address", "bad_signature", "wrong_chain")
            )
            if bad:
                self.gossip.penalize(peer, min(50, 5 * bad), f"{bad} invalid transactions")
            if not fresh:
                continue
            # All of a message fresh (the usual case): relayed as it came, so the nodes that got it
            # already drop the copy by its digest instead of parsing and checking it again.
            if len(fresh) == len(txs) and text is not None and len(text) <= 64 + RELAY_CHARS_PER_TX * len(txs):
                self.gossip.broadcast(text, exclude=peer)  # its digest is marked seen already
            else:
                self._send_txs(json.dumps({"type": "txs", "txs": fresh}, ensure_ascii=False), exclude=peer)

    def _consensus_message(self, peer: Peer | None, message: dict) -> None:
        state = self.height_state
        try:
            if message["type"] == "proposal":
                item = Proposal.from_message(message, self.chain_id)
            else:
                item = Vote.from_message(message, self.chain_id)
        except (ValueError, KeyError, TypeError) as exc:
            if peer is not None:
                self.gossip.penalize(peer, PENALTY["malformed_consensus"], f"malformed {message.get('type')}: {exc}")
            return
        if state is None or item.height < state.height:
            return  # a height already decided: a late or replayed message, harmless
        if state.started and item.height == state.height and state.has(item):
            return  # the same signed message again (a relay): counted, verified and relayed already
        if peer is not None and not self._authentic(peer, item, state):
            return
        if item.height > state.height or not state.started:
            if item.height <= state.height + 1:
                if len(self.future) < FUTURE_MAX:
                    self.future.append((peer, dict(message, height_hint=item.height)))
                else:
                    self.gossip.counters["dropped_future"] += 1
            if peer is not None and item.height > state.height:
                peer.height = max(peer.height, item.height - 1)
                self._maybe_sync(peer)
            return
        if isinstance(item, Proposal):
            outputs = state.receive_proposal(item)
            accepted = state.proposals.get(item.round) is item
        else:
            outputs = state.receive_vote(item)
            tally = state.votes.get((item.round, item.step))
            accepted = tally is not None and tally.votes.get(item.validator) is item
        if accepted:
            # Relay what we accepted, so a partially connected network still hears it: only the
            # first accepted copy of a proposal or vote (variants of it are duplicates here and
            # stop), with its author's fields only, encoded as its author encodes it, so an
            # honest copy is the author's text to the byte and the nodes that had it from its
            # author drop the relay by its digest, unparsed.
            targets = self.gossip.targets(exclude=peer)
            if targets:  # encoding a proposal's block for nobody would cost as much as sending it
                relay = {k: message[k] for k in RELAY_FIELDS[message["type"]] if k in message}
                self.gossip.send_to(targets, json.dumps(relay, ensure_ascii=False))
        self._do(outputs)

    def _authentic(self, peer: Peer, item: Proposal | Vote, state: HeightState) -> bool:
        """Whether a consensus message from ``peer`` is signed by its validator; penalize it if not.

        Checked against the current validator set before the message is believed at all, so
        a non-validator cannot make this node sync from it or fill its queue for the next height.
        A validator not in the current set may be one that joins at a later height: its messages
        for later heights are dropped without a penalty (the others' will say the same).
        """
        validators = state.validators
        sender = item.proposer if isinstance(item, Proposal) else item.validator
        pubkey = validators.pubkey(sender)
        if pubkey is None or validators.power(sender) == 0:
            if item.height == state.height:
                self.gossip.penalize(peer, PENALTY["non_validator"], "consensus message from a non-validator")
            return False
        if isinstance(item, Proposal):
            if item.height == state.height and item.proposer != validators.proposer(item.height, item.round):
                why = f"proposal from a non-proposer of round {item.round}"
                self.gossip.penalize(peer, PENALTY["not_proposer"], why)
                return False
            valid = state.proposal_verified(item) or verify_proposal_signature(
                pubkey, item.body(self.chain_id), item.signature
            )
        else:
            valid = state.vote_verified(item) or verify_vote(pubkey, item.body(self.chain_id), item.signature)
        if valid and item.height == state.height:
            state.note_verified(item)
        if not valid:
            kind = "proposal" if isinstance(item, Proposal) else item.step
            self.gossip.penalize(peer, PENALTY["bad_signature"], f"{kind} with an invalid signature")
        return valid

    def _on_commit(self, peer: Peer, message: dict) -> None:
        """A peer decided a height: applied here too when this node holds the block it names."""

        commit = message.get("commit")
        if not (isinstance(commit, dict) and type(commit.get("height")) is int and type(commit.get("block_id")) is str):
            self.gossip.penalize(peer, PENALTY["bad_block"], "malformed commit message")
            return
        height = commit["height"]
        if height <= self.height:
            return  # decided here already: the usual case
        peer.height = max(peer.height, height)
        state = self.height_state
        block = state.blocks.get(commit["block_id"]) if state is not None and state.height == height else None
        if block is None:
            # This node missed the block's proposal (or is further behind): the block comes
            # whole from the peer's RPC, its commit checked there as any synced block's.
            if height == self.height + 1 and time.monotonic() >= peer.sync_after:
                if self.sync_from(peer) == 0:
                    peer.sync_after = time.monotonic() + SYNC_RETRY_S
            else:
                self._maybe_sync(peer)
            return
        if not self._commit_from(peer, block, commit, f"commit {height}"):
            return
        self.decided_at = time.time()
        logger.info("height %d final from a peer's commit: %d transactions", height, len(block.get("txs") or []))
        self.last_commit_messages = [json.dumps({"type": "commit", "commit": commit})]
        self._new_height()

    def _commit_from(self, peer: Peer, block: dict, commit: Any, what: str) -> bool:
        """Apply a peer's block with its commit; False (the peer penalized) if either is refused."""
        from chain.services import BlockInvalid, block_commit

        try:
            block_commit(body=block, commit=commit)
        except BlockInvalid as exc:
            self.gossip.penalize(peer, PENALTY["bad_block"], f"invalid {what}: {exc}")
            return False
        except (KeyError, TypeError, ValueError, ProtocolError) as exc:
            # ValueError: a header the canonical encoding refuses (a lone surrogate, NaN from the C decoder).
            self.gossip.penalize(peer, PENALTY["bad_block"], f"malformed {what}: {exc}")
            return False
        return True

    def _on_block(self, peer: Peer, message: dict, text: str | None = None) -> None:
        from chain.models import ChainState

        block, commit = message.get("block"), message.get("commit")
        if not isinstance(block, dict) or not isinstance(block.get("header"), dict):
            self.gossip.penalize(peer, PENALTY["bad_block"], "malformed block message")
            return
        height = block["header"].get("height")
        current = ChainState.objects.get(singleton=1).height
        if type(height) is not int or height <= current:
            return
        if height > current + 1:
            peer.height = max(peer.height, height)
            self._maybe_sync(peer)
            return
        if not self._commit_from(peer, block, commit, f"block {height}"):
            return
        self.decided_at = time.time()
        logger.info("height %d final from a peer's block: %d transactions", height, len(block.get("txs") or []))
        if text is None or not text.startswith(f"{BLOCK_PREFIX}{height},"):
            text = json.dumps({"type": "block", "height": height, "block": block, "commit": commit}, ensure_ascii=False)
        self.gossip.broadcast(text, exclude=peer)
        self._new_height()

    # ticks and sync
    def _on_tick(self) -> None:
        state = self.height_state
        if state is not None and state.started:
            for output in state.retransmit():
                if isinstance(output, Broadcast):
                    self.gossip.broadcast(json.dumps(output.message, ensure_ascii=False))
        height = self.height  # kept by this thread, which alone applies blocks
        self.gossip.broadcast(json.dumps({"type": "status", "height": height, "peers": self.gossip.linked_nodes()}))
        with self.gossip.lock:
            peers = list(self.gossip.peers.values())
        for peer in peers:
            # The last decided block again, only to peers known to be one behind: a full
            # block to every peer every second would cost them all a parse of megabytes.
            if peer.node_id and peer.height == height - 1:
                for text in self.last_commit_messages:
                    peer.send(text)
            self._maybe_sync(peer)

    def _maybe_sync(self, peer: Peer) -> None:
        from chain.models import ChainState

        # Cheap checks first: this runs for every status a peer sends.
        if peer.height <= self.height or time.monotonic() < peer.sync_after:
            return
        height = ChainState.objects.get(singleton=1).height
        due = peer.height > height + 1 or (peer.height > height and time.time() - self.decided_at > 5)
        # Whatever the reason a sync brings nothing (a peer that lied about its height, one whose
        # RPC is down), asking that peer again at once would only stall this thread again.
        if due and self.sync_from(peer) == 0:
            peer.sync_after = time.monotonic() + SYNC_RETRY_S

    def sync_from(self, peer: Peer) -> int:
        """Fetch blocks with their commits from ``peer`` and apply each after checking its commit."""
        from chain.models import ChainState
        from chain.services import BlockInvalid, block_commit

        base = peer.rpc_url or (rpc_base(peer.url) if peer.url else None)
        if base is None:
            return 0
        start = ChainState.objects.get(singleton=1).height + 1
        target = peer.height
        applied = 0
        progress = SyncProgress(start - 1, target)
        session = requests.Session()
        height = start
        while height <= target and not self._stop.is_set():
            try:
                answer = session.get(
                    f"{base}/v1/chain/blocks", params={"from": height, "limit": SYNC_BATCH, "full": 1}, timeout=30
                )
                blocks = answer.json()["blocks"]
            except (requests.RequestException, ValueError, KeyError) as exc:
                logger.warning("sync from %s failed at height %d: %s", base, height, exc)
                break
            if not blocks:
                if applied == 0 and peer.id in self.gossip.peers:
                    self.gossip.penalize(peer, PENALTY["unservable_height"], f"claims height {target}, serves none")
                break
            refused = False
            for item in blocks:
                try:
                    block_commit(body=item["block"], commit=item["commit"])
                except (BlockInvalid, KeyError, TypeError, ValueError, ProtocolError) as exc:
                    self.gossip.penalize(peer, PENALTY["bad_block"], f"sync: bad block {height}: {exc}")
                    refused = True
                    break
                applied += 1
                height += 1
                progress.update(height - 1)
            if refused:
                # The blocks applied before the bad one still start the next height: the
                # driver's head and height must follow every block this thread applies.
                break
        progress.close()
        if applied:
            self.decided_at = time.time()
            logger.info("synced %d blocks from %s, now at height %d", applied, base, height - 1)
            self._new_height()
        return applied


class SyncProgress:
    """A progress bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, start: int, target: int) -> None:
        self.start, self.target = start, target
        self.bar = None
        self.last_log = 0.0
        if target - start >= 100 and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=target - start, desc="sync", unit="block")

    def update(self, height: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.target - self.start >= 100 and time.monotonic() - self.last_log > 2:
            self.last_log = time.monotonic()
            logger.info(
                "sync: height %d of %d (%.0f%%)",
                height,
                self.target,
                100 * (height - self.start) / max(1, self.target - self.start),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _txs_len(item: tuple) -> int:
    txs = item[1].get("txs") if isinstance(item[1], dict) else None
    return len(txs) if isinstance(txs, list) else 1


def rpc_base(p2p_url: str) -> str:
    """``ws://host:port/p2p/`` -> ``http://host:port`` (a node serves RPC and P2P on one port)."""
    url = p2p_url.replace("wss://", "https://").replace("ws://", "http://")
    return url.split("/p2p", 1)[0].rstrip("/")


_driver: ConsensusDriver | None = None


def set_driver(driver: ConsensusDriver | None) -> None:
    global _driver
    _driver = driver


def driver() -> ConsensusDriver | None:
    return _driver
