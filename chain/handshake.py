"""Who is on the other end of a P2P connection: node ids proven by a signed challenge.

A node id is the address of a key the node holds (its validator key, or a key made at
start-up by a node that follows without one). Each side of a connection sends a fresh
random challenge in its ``hello``; the other proves its id by signing that challenge
bound to the chain, the genesis and the id it claims::

    dialer   -> hello {chain_id, genesis_id, node_id, pubkey, height, rpc_url, challenge: cD}
    listener -> hello {..., challenge: cL, proof: sign_listener(cD)}
    dialer   -> auth  {proof: sign_dialer(cL)}

A proof over someone else's challenge is worth nothing elsewhere, and a hello copied
from an honest node proves nothing without its key. Until its proof checks, a peer has
no node id: nothing it does is held against the id it claims (an attacker cannot get an
honest validator banned by misbehaving in its name), and gossip does not route by it.

Pure code (no Django): the node and the tests build and check the same objects.
"""

from __future__ import annotations

import secrets
from typing import Any

from chain.protocol.encoding import canonical_json, is_hex
from chain.protocol.keys import Key, address_from_pubkey_hex, domain_tag, verify

DOMAIN_HELLO = domain_tag("p2p-hello")
CHALLENGE_BYTES = 32


def new_challenge() -> str:
    return secrets.token_hex(CHALLENGE_BYTES)


def _signed_object(*, chain_id: str, genesis_id: str, node_id: str, challenge: str) -> bytes:
    return canonical_json({"chain_id": chain_id, "genesis_id": genesis_id, "node_id": node_id, "challenge": challenge})


def prove(key: Key, *, chain_id: str, genesis_id: str, challenge: str) -> str:
    """``key``'s proof that it is node ``key.address`` on this chain, over the peer's ``challenge``."""
    body = _signed_object(chain_id=chain_id, genesis_id=genesis_id, node_id=key.address, challenge=challenge)
    return key.sign(DOMAIN_HELLO, body).hex()


def claimed_identity(message: dict[str, Any]) -> tuple[str, str] | None:
    """``(node_id, pubkey)`` a hello claims when they agree with each other and are well formed."""
    node_id, pubkey = message.get("node_id"), message.get("pubkey")
    if not is_hex(pubkey, 32) or type(node_id) is not str:
        return None
    try:
        if address_from_pubkey_hex(pubkey) != node_id:
            return None
    except ValueError:
        return None
    return node_id, pubkey


def well_formed_challenge(value: Any) -> bool:
    return is_hex(value, CHALLENGE_BYTES)


def proof_valid(proof: Any, *, pubkey: str, node_id: str, chain_id: str, genesis_id: str, challenge: str) -> bool:
    """Whether ``proof`` is ``pubkey``'s signature over ``challenge`` (one this side sent) for ``node_id``."""
    if not is_hex(proof, 64):
        return False
    body = _signed_object(chain_id=chain_id, genesis_id=genesis_id, node_id=node_id, challenge=challenge)
    return verify(bytes.fromhex(pubkey), DOMAIN_HELLO + body, bytes.fromhex(proof))
