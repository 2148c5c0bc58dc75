"""What a node spends on gossip: one frame per node, relays that die at the digest, one verify per message.

No database and no processes: the gossip layer and the consensus state machine on their own.
"""

from __future__ import annotations

import json

import pytest

from chain import consensus
from chain.consensus import HeightState, ValidatorSet, Vote
from chain.network import ConsensusDriver, Peer
from chain.protocol.block import DOMAIN_VOTE, vote_body
from chain.protocol.encoding import canonical_json
from chain.protocol.keys import Key
from chain.tests.support import gossip_node

CHAIN = "aitbc-gossip-1"


def connect(node: ConsensusDriver, name: str, direction: str, node_id: str = "") -> list[str]:
    """A connected peer whose frames are recorded in the returned list."""
    frames: list[str] = []
    peer = Peer(id=name, direction=direction, node_id=node_id)
    peer.send = frames.append
    node.gossip.add(peer)
    return frames


def test_a_frame_goes_once_to_a_node_connected_twice_over_the_connection_dialed() -> None:
    node = gossip_node(CHAIN)
    dialed_x = connect(node, "out-x", "out", "node-x")
    inbound_x = connect(node, "in-x", "in", "node-x")
    inbound_y = connect(node, "in-y", "in", "node-y")
    anonymous = connect(node, "in-anon", "in")  # no hello yet
    node.gossip.broadcast("frame")
    assert (dialed_x, inbound_x, inbound_y, anonymous) == (["frame"], [], ["frame"], ["frame"])


def test_a_node_not_dialed_gets_the_frame_on_every_connection_claiming_it() -> None:
    """An impostor naming a node first must not cut that node off: a hello's node id proves nothing."""
    node = gossip_node(CHAIN)
    impostor = connect(node, "in-1", "in", "node-x")
    real = connect(node, "in-2", "in", "node-x")
    node.gossip.broadcast("frame")
    assert impostor == ["frame"] and real == ["frame"]


def test_nothing_goes_back_to_the_node_a_frame_came_from_on_any_of_its_connections() -> None:
    node = gossip_node(CHAIN)
    dialed_x = connect(node, "out-x", "out", "node-x")
    inbound_x = connect(node, "in-x", "in", "node-x")
    other = connect(node, "out-y", "out", "node-y")
    source = node.gossip.peers["in-x"]
    node.gossip.broadcast("relay", exclude=source)
    assert (dialed_x, inbound_x, other) == ([], [], ["relay"])


def test_txs_frames_this_node_sends_are_dropped_when_relays_bring_them_back() -> None:
    node = gossip_node(CHAIN)
    sent = connect(node, "out-x", "out", "node-x")
    node.broadcast_txs([{"any": "transaction"}])
    assert len(sent) == 1
    node._on_text(node.gossip.peers["out-x"], sent[0])
    assert node.tx_inbox.empty()


def test_a_batch_admitted_whole_goes_out_as_submitted_and_otherwise_encoded_again() -> None:
    node = gossip_node(CHAIN)
    sent = connect(node, "out-x", "out", "node-x")
    txs = [{"any": "transaction", "n": n} for n in range(3)]
    body = json.dumps(txs, indent=1).encode()  # a client's own spacing
    node.broadcast_txs(txs, submitted=body)
    # Padded past what its transactions could honestly take, it is encoded again.
    node.broadcast_txs(txs, submitted=b" " * (1024 * len(txs)) + json.dumps(txs).encode())
    node.broadcast_txs(txs[:2])
    assert [json.loads(frame)["txs"] for frame in sent] == [txs, txs, txs[:2]]
    assert sent[0] == '{"type": "txs", "txs": ' + body.decode() + "}"
    assert len(sent[1]) < 1024


def test_a_block_of_a_height_the_node_has_is_dropped_before_it_is_parsed() -> None:
    node = gossip_node(CHAIN)
    connect(node, "out-x", "out", "node-x")
    peer = node.gossip.peers["out-x"]
    node.height = 7
    # Not JSON after its prefix: parsing it would cost the peer points for malformed JSON.
    node._on_text(peer, '{"type": "block", "height": 7, "block": <megabytes>')
    assert peer.score == 0 and not node.seen
    node._on_text(peer, '{"type": "block", "height": 8, "block": <megabytes>')
    assert peer.score < 0, "a block of a later height is read (and this one is malformed)"


def test_a_decided_block_message_starts_with_its_height() -> None:
    text = json.dumps({"type": "block", "height": 12, "block": {}, "commit": {}})
    assert text.startswith('{"type": "block", "height": 12,')


@pytest.fixture
def counted_verifies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = consensus.verify_vote

    def counting(pubkey_hex, body, signature_hex):
        calls[0] += 1
        return real(pubkey_hex, body, signature_hex)

    monkeypatch.setattr(consensus, "verify_vote", counting)
    return calls


def signed_vote(key: Key, height: int, step: str, block_id: str) -> Vote:
    body = vote_body(chain_id=CHAIN, height=height, round=0, step=step, block_id=block_id)
    return Vote(height, 0, step, block_id, key.address, key.sign(DOMAIN_VOTE, canonical_json(body)).hex())


def height_state(keys: list[Key]) -> HeightState:
    validators = ValidatorSet({k.address: (k.pubkey_hex, 1) for k in keys})
    state = HeightState(
        chain_id=CHAIN,
        height=1,
        validators=validators,
        signer=None,
        propose=lambda h, r: ("", {}),
        validate=lambda block: None,
    )
    state.start()
    return state


def test_a_vote_the_host_verified_is_not_verified_again_and_its_repeat_is_known(counted_verifies) -> None:
    keys = [Key(bytes([i]) * 32) for i in range(1, 5)]
    state = height_state(keys)
    vote = signed_vote(keys[0], 1, "prevote", "ab" * 32)
    assert not state.has(vote)
    state.note_verified(vote)
    state.receive_vote(vote)
    assert counted_verifies == [0]
    assert state.has(vote)


def test_a_forged_vote_is_still_verified_and_refused(counted_verifies) -> None:
    """What the host verified is the exact signed message: another block id under its signature is new."""
    keys = [Key(bytes([i]) * 32) for i in range(1, 5)]
    state = height_state(keys)
    vote = signed_vote(keys[0], 1, "prevote", "ab" * 32)
    state.note_verified(vote)
    forged = Vote(vote.height, vote.round, vote.step, "cd" * 32, vote.validator, vote.signature)
    assert not state.vote_verified(forged)
    state.receive_vote(forged)
    assert counted_verifies == [1]
    assert not state.has(forged) and not state.has(vote)


@pytest.mark.parametrize("field,value", [("amount", 5.0), ("nonce", False)])
def test_a_block_copy_of_an_admitted_transaction_in_other_json_types_is_checked_afresh(
    chain, django_capture_on_commit_callbacks, monkeypatch: pytest.MonkeyPatch, field: str, value: object
) -> None:
    """A block's copy of a transaction admitted here reuses the admission's check only if it is the same JSON."""
    import copy

    from chain import services
    from chain.models import ChainState
    from chain.protocol.tx import build_transaction

    alice, bob = chain.keys.funded[:2]
    tx = build_transaction(
        alice,
        chain_id=chain.genesis["chain_id"],
        type="transfer",
        nonce=0,
        fee=chain.params["min_fee"],
        payload={"to": bob.address, "amount": 5},
    )
    with django_capture_on_commit_callbacks(execute=True):
        [result] = services.mempool_admit(txs=[tx], chain_id=chain.genesis["chain_id"], min_fee=chain.params["min_fee"])
    assert result.error is None
    last_ms = int(ChainState.objects.get().latest_block_time.timestamp() * 1000)
    block_id, body = services.block_build(proposer=chain.keys.validator.address, round_=0, now_ms=last_ms + 1000)

    checks = [0]
    real_check = services.check_transaction

    def counting(*args, **kwargs):
        checks[0] += 1
        return real_check(*args, **kwargs)

    monkeypatch.setattr(services, "check_transaction", counting)
    assert services.block_check(json.loads(json.dumps(body))) == block_id
    assert checks == [0], "the admitted transaction's check is reused"

    variant = copy.deepcopy(body)
    target = variant["txs"][0]["payload"] if field == "amount" else variant["txs"][0]
    target[field] = value
    assert variant["txs"][0] == body["txs"][0], "equal in Python, different on the wire"
    with pytest.raises(services.BlockInvalid, match="malformed"):
        services.block_check(variant)
    assert checks == [1]


def test_a_block_with_another_transaction_of_a_pending_sender_and_nonce_rejects_the_pending_one(chain) -> None:
    """Found without reading the pending queue when every block transaction is pending here: only one
    not pending here can share a sender and nonce with a pending one (admission allows one per pair)."""
    from chain import services
    from chain.models import Transaction
    from chain.protocol.tx import build_transaction, tx_id
    from chain.tests.harness import commit_peer_block

    alice, bob, carol = chain.keys.funded[:3]

    def transfer(sender, nonce: int, to) -> dict:
        return build_transaction(
            sender,
            chain_id=chain.genesis["chain_id"],
            type="transfer",
            nonce=nonce,
            fee=chain.params["min_fee"],
            payload={"to": to.address, "amount": 7},
        )

    mine, theirs, bobs = transfer(alice, 0, bob), transfer(alice, 0, carol), transfer(bob, 0, carol)
    results = services.mempool_admit(
        txs=[mine, bobs], chain_id=chain.genesis["chain_id"], min_fee=chain.params["min_fee"]
    )
    assert [r.error for r in results] == [None, None]
    commit_peer_block(chain, [theirs, bobs])
    ids = [tx_id(theirs), tx_id(bobs)]

    status = dict(Transaction.objects.values_list("id", "status"))
    assert status == {ids[0]: "committed", ids[1]: "committed", tx_id(mine): "rejected"}
    assert Transaction.objects.get(id=tx_id(mine)).error_code == "duplicate"


def test_a_relayed_vote_carries_its_authors_fields_in_its_authors_encoding() -> None:
    """Whitespace or fields a peer added do not travel on: an honest copy is the author's text to the byte."""
    keys = [Key(bytes([i]) * 32) for i in range(1, 5)]
    node = gossip_node(CHAIN)
    node.height_state = height_state(keys)
    relayed = connect(node, "out-y", "out", "node-y")
    connect(node, "in-x", "in", "node-x")
    vote = signed_vote(keys[1], 1, "prevote", "ab" * 32)
    authors_text = json.dumps(vote.message(CHAIN), ensure_ascii=False)
    padded = json.loads(authors_text) | {"padding": "x" * 10_000}
    node._consensus_message(node.gossip.peers["in-x"], padded)
    assert relayed == [authors_text]


def test_a_padded_txs_message_is_relayed_re_encoded_and_an_honest_one_as_it_came(chain) -> None:
    from chain.protocol.tx import build_transaction

    node = gossip_node(chain.genesis["chain_id"])
    relayed = connect(node, "out-y", "out", "node-y")
    connect(node, "in-x", "in", "node-x")
    source = node.gossip.peers["in-x"]
    alice, bob = chain.keys.funded[:2]
    txs = [
        build_transaction(
            alice,
            chain_id=chain.genesis["chain_id"],
            type="transfer",
            nonce=n,
            fee=chain.params["min_fee"],
            payload={"to": bob.address, "amount": 3},
        )
        for n in range(2)
    ]
    honest = json.dumps({"type": "txs", "txs": [txs[0]]}, ensure_ascii=False)
    padded = '{"type": "txs", "txs": ' + json.dumps([txs[1]], ensure_ascii=False) + " " * 5000 + "}"
    node._admit_gossiped([(source, json.loads(honest), honest), (source, json.loads(padded), padded)])
    assert relayed == [honest, json.dumps({"type": "txs", "txs": [txs[1]]}, ensure_ascii=False)]


def test_a_relay_skips_the_nodes_its_source_says_it_is_connected_to() -> None:
    """The source sent the frame to each node it is connected to: a relay to those would die at the digest."""
    node = gossip_node(CHAIN)
    connect(node, "in-x", "in", "node-x")
    also_linked = connect(node, "out-y", "out", "node-y")
    connect(node, "in-y", "in", "node-y")
    not_linked = connect(node, "out-z", "out", "node-z")
    source = node.gossip.peers["in-x"]
    node._on_text(source, json.dumps({"type": "status", "height": 0, "peers": ["node-y", "node-w"]}))
    # What y says of its own links does not matter here, nor over which connection it said it.
    node._on_text(node.gossip.peers["in-y"], json.dumps({"type": "status", "height": 0, "peers": ["node-z"]}))
    node.gossip.broadcast("relay", exclude=source)
    assert (also_linked, not_linked) == ([], ["relay"])
    node.gossip.broadcast("own frame")
    assert (also_linked, not_linked) == (["own frame"], ["relay", "own frame"])


def test_a_status_names_the_proven_nodes_this_node_exchanges_frames_with() -> None:
    node = gossip_node(CHAIN)
    connect(node, "out-x", "out", "node-x")
    connect(node, "in-x", "in", "node-x")
    connect(node, "in-anon", "in")
    connect(node, "out-y", "out", "node-y")
    node.gossip.blocked_nodes = {"node-y"}
    assert node.gossip.linked_nodes() == ["node-x"]


def test_a_status_with_a_malformed_peer_list_leaves_the_links_as_they_were() -> None:
    node = gossip_node(CHAIN)
    connect(node, "in-x", "in", "node-x")
    peer = node.gossip.peers["in-x"]
    node._on_text(peer, json.dumps({"type": "status", "height": 0, "peers": ["node-y"]}))
    node._on_text(peer, json.dumps({"type": "status", "height": 0, "peers": ["node-z", 7]}))
    node._on_text(peer, json.dumps({"type": "status", "height": 0, "peers": ["n"] * 1001}))
    assert node.gossip.links == {"node-x": {"node-y"}} and peer.score == 0
    anonymous = connect(node, "in-anon", "in")  # no proven id: nothing it says of links is kept
    node._on_text(node.gossip.peers["in-anon"], json.dumps({"type": "status", "height": 0, "peers": ["node-q"]}))
    assert anonymous == [] and node.gossip.links == {"node-x": {"node-y"}}


def test_a_commit_of_a_height_the_node_has_is_dropped_and_a_malformed_one_costs_points() -> None:
    node = gossip_node(CHAIN)
    connect(node, "out-x", "out", "node-x")
    peer = node.gossip.peers["out-x"]
    node.height = 7
    node._on_text(peer, json.dumps({"type": "commit", "commit": {"height": 7, "block_id": "ab" * 32}}))
    assert peer.score == 0
    node._on_text(peer, json.dumps({"type": "commit", "commit": {"height": "8"}}))
    assert peer.score < 0


def test_a_relay_is_not_encoded_when_no_peer_needs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from chain import network

    keys = [Key(bytes([i]) * 32) for i in range(1, 5)]
    node = gossip_node(CHAIN)
    node.height_state = height_state(keys)
    connect(node, "in-x", "in", "node-x")
    connect(node, "out-y", "out", "node-y")
    source = node.gossip.peers["in-x"]
    node.gossip.links["node-x"] = frozenset({"node-y"})  # the only other node had it from the source
    encoded: list[dict] = []
    real_dumps = network.json.dumps
    monkeypatch.setattr(network.json, "dumps", lambda obj, **kw: encoded.append(obj) or real_dumps(obj, **kw))
    node._consensus_message(source, signed_vote(keys[1], 1, "prevote", "ab" * 32).message(CHAIN))
    assert not [m for m in encoded if m.get("type") == "vote"]


@pytest.mark.django_db
def test_a_saved_lock_is_its_round_and_block_id_and_comes_back_for_its_height_only() -> None:
    """The lock restrains votes by its id; the block itself is not written with every lock."""
    from chain.models import SignerState
    from chain.network import clear_lock, load_lock, save_lock

    save_lock(5, 1, "ab" * 32)
    assert SignerState.objects.get(singleton=1).locked == {"height": 5, "round": 1, "block_id": "ab" * 32}
    assert load_lock(5) == (1, "ab" * 32, None)
    assert load_lock(6) is None
    clear_lock()
    assert load_lock(5) is None
