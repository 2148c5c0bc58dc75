"""protocol.md's test vectors, reproduced byte for byte, and refused where they must be.

The keystore and mnemonic vectors belong to the wallet's tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from chain import services
from chain.mempool import mempool
from chain.models import Transaction
from chain.protocol.encoding import canonical_json, parse_strict
from chain.protocol.errors import HTTP_STATUS, ProtocolError
from chain.protocol.keys import DOMAIN_TX, Key, address_from_pubkey, decode_address, is_address
from chain.protocol.tx import build_transaction, check_transaction, sign_bytes, tx_id, unsigned
from chain.tests.harness import BATCH, PROTOCOL_STATUS, ChainHarness, assert_error
from chain.tests.support import MIN_FEE, Keys, make_genesis, transfer, vectors

VECTORS = vectors()
VECTOR_CHAIN_ID = "aitbc-devnet-1"
VECTOR_MIN_FEE = 1000


def _ids(entries: list[dict], field: str) -> list[str]:
    return [str(entry[field])[:48] or "(empty)" for entry in entries]


# -- the contract's error table -------------------------------------------------------------


def test_error_codes_map_to_the_statuses_of_the_protocol_table():
    # The project may add codes for its own transaction types, never change these.
    assert {code: HTTP_STATUS.get(code) for code in PROTOCOL_STATUS} == PROTOCOL_STATUS


# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["addresses"], ids=_ids(VECTORS["addresses"], "address"))
def test_address_vector_seed_gives_pubkey_and_address(vector):
    key = Key(bytes.fromhex(vector["seed"]))
    assert key.pubkey_hex == vector["pubkey"]
    assert address_from_pubkey(bytes.fromhex(vector["pubkey"])) == vector["address"]
    assert key.address == vector["address"]
    assert len(decode_address(vector["address"])) == 20
    assert is_address(vector["address"])


@pytest.mark.parametrize("vector", VECTORS["invalid_addresses"], ids=[v["why"] for v in VECTORS["invalid_addresses"]])
def test_invalid_address_vector_is_refused_as_invalid_address(vector):
    with pytest.raises(ProtocolError) as caught:
        decode_address(vector["address"])
    assert caught.value.code == "invalid_address"
    assert not is_address(vector["address"])


def _signed_with_fields(key: Key, tx: dict[str, Any]) -> dict[str, Any]:
    """``tx`` signed by ``key`` as it stands, bypassing build_transaction's own field checks."""
    body = unsigned(tx)
    return body | {"signature": key.sign(DOMAIN_TX, canonical_json(body)).hex()}


@pytest.mark.parametrize("vector", VECTORS["invalid_addresses"], ids=[v["why"] for v in VECTORS["invalid_addresses"]])
def test_invalid_address_vector_is_refused_over_http(chain: ChainHarness, vector):
    alice = chain.keys.alice
    valid = transfer(alice, 0, chain.keys.bob.address, 1)
    for tx in (
        _signed_with_fields(alice, valid | {"payload": {"to": vector["address"], "amount": 1}}),
        _signed_with_fields(alice, valid | {"from": vector["address"]}),
    ):
        assert_error(chain.post(tx), "invalid_address")
        assert not Transaction.objects.filter(id=tx_id(tx)).exists() and tx_id(tx) not in mempool
    if vector["address"]:  # an empty one is not a path segment at all
        assert_error(chain.get(f"/v1/chain/accounts/{vector['address']}"), "invalid_address")


# -- transactions -----------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["transactions"], ids=_ids(VECTORS["transactions"], "id"))
def test_transaction_vector_sign_bytes_and_id(vector):
    assert sign_bytes(vector["tx"]).hex() == vector["sign_bytes_hex"]
    assert tx_id(vector["tx"]) == vector["id"]


@pytest.mark.parametrize("vector", VECTORS["transactions"], ids=_ids(VECTORS["transactions"], "id"))
def test_transaction_vector_is_rebuilt_with_the_same_signature(vector):
    tx = vector["tx"]
    rebuilt = build_transaction(
        Key(bytes.fromhex(vector["signer_seed"])),
        chain_id=tx["chain_id"],
        type=tx["type"],
        nonce=tx["nonce"],
        fee=tx["fee"],
        payload=tx["payload"],
        memo=tx["memo"],
    )
    assert rebuilt == tx
    assert canonical_json(rebuilt) == canonical_json(tx)


@pytest.mark.parametrize("vector", VECTORS["transactions"], ids=_ids(VECTORS["transactions"], "id"))
def test_transaction_vector_passes_the_stateless_checks(vector):
    checked = check_transaction(vector["tx"], chain_id=VECTOR_CHAIN_ID, min_fee=VECTOR_MIN_FEE)
    assert checked.id == vector["id"]
    assert checked.sender == vector["tx"]["from"]
    # The verifier rebuilds the signed bytes from the fields: a wire change breaks the signature.
    tampered = vector["tx"] | {"fee": vector["tx"]["fee"] + 1}
    with pytest.raises(ProtocolError) as caught:
        check_transaction(tampered, chain_id=VECTOR_CHAIN_ID, min_fee=VECTOR_MIN_FEE)
    assert caught.value.code == "bad_signature"


@pytest.fixture
def vector_genesis(chain_keys: Keys) -> dict[str, Any]:
    """The vectors' chain: their payer and arbiter funded, our validator producing."""
    payer, _provider, arbiter = (Key(bytes.fromhex(a["seed"])) for a in VECTORS["addresses"])
    genesis = make_genesis(chain_keys, chain_id=VECTOR_CHAIN_ID, funded=[payer])
    genesis["allocations"].append({"address": arbiter.address, "amount": 10 * MIN_FEE})
    return genesis


@pytest.mark.django_db
def test_transaction_vectors_are_admitted_and_applied_over_http(client, chain_keys, vector_genesis):
    services.genesis_load(genesis=vector_genesis)
    chain = ChainHarness(client, chain_keys, vector_genesis)
    by_id = {v["id"]: v["tx"] for v in VECTORS["transactions"]}
    # The batch answers in order with the vectors' ids: the node computes the same ids.
    results = chain.batch([v["tx"] for v in VECTORS["transactions"]])
    assert results == [{"id": v["id"]} for v in VECTORS["transactions"]]
    block = chain.produce()
    # The nonce-7 transfer waits for nonces 2..6; the lock, then the pay and refund of its escrow apply.
    waiting = [v["id"] for v in VECTORS["transactions"] if v["tx"]["nonce"] == 7]
    assert block.tx_ids == [i for i in by_id if i not in waiting]
    assert block.results == {}
    assert chain.tx_status(waiting[0])["status"] == "pending"
    lock_id = next(v["id"] for v in VECTORS["transactions"] if v["tx"]["type"] == "escrow_lock")
    escrow = chain.get(f"/v1/chain/escrows/{lock_id}").json()
    assert (escrow["status"], escrow["paid"], escrow["remaining"]) == ("closed", 2_000_000, 0)


# -- malformed JSON ---------------------------------------------------------------------------

MALFORMED = VECTORS["malformed_json"]


@pytest.mark.parametrize("vector", MALFORMED, ids=[v["why"] for v in MALFORMED])
def test_malformed_vector_is_refused_by_the_strict_parser_or_as_a_field(vector):
    try:
        parsed = parse_strict(vector["body"])
    except ProtocolError as exc:
        assert exc.code == "malformed"
        return
    # Only the boolean parses as JSON: as a transaction field it is not an integer.
    assert parsed == {"nonce": True}
    tx = VECTORS["transactions"][0]["tx"] | parsed
    with pytest.raises(ProtocolError) as caught:
        check_transaction(tx, chain_id=VECTOR_CHAIN_ID, min_fee=VECTOR_MIN_FEE)
    assert caught.value.code == "malformed"


def _splice(tx: dict[str, Any], member: str) -> str:
    """The JSON text of ``tx`` with ``member`` (``"name": value`` text) in place of that field."""
    name = re.match(r'\s*"(\w+)"', member).group(1)
    tx = json.loads(json.dumps(tx))
    target = tx if name in tx else tx["payload"]
    assert name in target, name
    del target[name]
    text = json.dumps(tx, ensure_ascii=False)
    if target is tx:
        return "{" + member + "," + text[1:]
    marker = '"payload": {'
    return text.replace(marker, marker + member + ",", 1)


@pytest.mark.parametrize("vector", MALFORMED, ids=[v["why"] for v in MALFORMED])
def test_malformed_vector_is_refused_over_http(chain: ChainHarness, vector):
    # As the whole body, to the single and to the batch endpoint.
    assert_error(chain.post(vector["body"]), "malformed")
    batch = chain.post("[" + vector["body"] + "]", BATCH)
    if batch.status_code == 200:  # the boolean parses: then the item itself is refused
        assert batch.json()[0]["error"]["code"] == "malformed"
    else:
        assert_error(batch, "malformed")
    # Spliced into a valid, signed transaction in place of the field it names.
    tx = transfer(chain.keys.alice, 0, chain.keys.bob.address, 2_500_000)
    member = vector["body"].strip()[1:-1]
    body = _splice(tx, member)
    assert_error(chain.post(body), "malformed")
    assert not Transaction.objects.exists() and not len(mempool)
    assert chain.get(f"/v1/chain/transactions/{tx_id(tx)}").status_code == 404


def test_boolean_nonce_in_a_valid_transaction_is_malformed_over_http(chain: ChainHarness):
    tx = transfer(chain.keys.alice, 0, chain.keys.bob.address, 2_500_000)
    bad_payload = {"to": chain.keys.bob.address, "amount": True}
    for bad in (tx | {"nonce": True}, tx | {"fee": True}, tx | {"payload": bad_payload}):
        assert_error(chain.post(bad), "malformed")
    # In a batch, the item is refused and its neighbours are not.
    results = chain.batch([tx | {"nonce": True}, tx])
    assert results[0]["error"]["code"] == "malformed"
    assert results[1] == {"id": tx_id(tx)}
    assert [entry.tx.id for entry in mempool.oldest(10)] == [tx_id(tx)]


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", b"", b"{", b"[1, 2", b'{"a": 1} trailing', b'{"\xc3\xa9": 1}'],
    ids=["not utf-8", "empty", "truncated object", "truncated list", "trailing data", "non-ascii key"],
)
def test_other_non_strict_bodies_are_malformed(chain: ChainHarness, body: bytes):
    assert_error(chain.post(body), "malformed")
