"""P2P node ids are proven by a signature over the other side's fresh challenge (chain.handshake)."""

from __future__ import annotations

from chain.handshake import claimed_identity, new_challenge, proof_valid, prove, well_formed_challenge
from chain.protocol.keys import Key

CHAIN = {"chain_id": "aitbc-test-1", "genesis_id": "ab" * 32}


def hello_of(key: Key, **extra) -> dict:
    hello = {"type": "hello", **CHAIN, "node_id": key.address, "pubkey": key.pubkey_hex, "challenge": new_challenge()}
    return hello | extra


def test_a_proof_over_my_challenge_proves_the_claimed_node_id() -> None:
    node = Key.generate()
    mine = new_challenge()
    identity = claimed_identity(hello_of(node))
    assert identity == (node.address, node.pubkey_hex)
    proof = prove(node, **CHAIN, challenge=mine)
    assert proof_valid(proof, pubkey=node.pubkey_hex, node_id=node.address, **CHAIN, challenge=mine)


def test_a_proof_over_another_challenge_chain_or_genesis_proves_nothing() -> None:
    node = Key.generate()
    mine, theirs = new_challenge(), new_challenge()
    replayed = prove(node, **CHAIN, challenge=theirs)  # what an eavesdropper saw it send to someone else
    assert not proof_valid(replayed, pubkey=node.pubkey_hex, node_id=node.address, **CHAIN, challenge=mine)
    other_chain = prove(node, chain_id="aitbc-other-1", genesis_id=CHAIN["genesis_id"], challenge=mine)
    assert not proof_valid(other_chain, pubkey=node.pubkey_hex, node_id=node.address, **CHAIN, challenge=mine)
    other_genesis = prove(node, chain_id=CHAIN["chain_id"], genesis_id="cd" * 32, challenge=mine)
    assert not proof_valid(other_genesis, pubkey=node.pubkey_hex, node_id=node.address, **CHAIN, challenge=mine)


def test_an_impostor_cannot_claim_an_honest_node_id() -> None:
    honest, impostor = Key.generate(), Key.generate()
    mine = new_challenge()
    # Its own key under the honest id: the id is not the address of that key.
    assert claimed_identity(hello_of(impostor, node_id=honest.address)) is None
    # The honest key under the honest id, signed with its own key: the proof fails.
    forged = prove(impostor, **CHAIN, challenge=mine)
    assert claimed_identity(hello_of(impostor, node_id=honest.address, pubkey=honest.pubkey_hex)) is not None
    assert not proof_valid(forged, pubkey=honest.pubkey_hex, node_id=honest.address, **CHAIN, challenge=mine)


def test_malformed_hello_fields_are_no_identity_and_no_proof() -> None:
    node = Key.generate()
    for bad in ({"pubkey": "zz" * 32}, {"pubkey": node.pubkey_hex.upper()}, {"pubkey": 7}, {"node_id": ["x"]}):
        assert claimed_identity(hello_of(node, **bad)) is None
    for challenge in ("", "ab", "g" * 64, 12, None, "AB" * 32):
        assert not well_formed_challenge(challenge)
    assert well_formed_challenge(new_challenge())
    for proof in (None, 5, "", "00" * 64, "zz" * 64, ["00"]):
        assert not proof_valid(proof, pubkey=node.pubkey_hex, node_id=node.address, **CHAIN, challenge=new_challenge())
