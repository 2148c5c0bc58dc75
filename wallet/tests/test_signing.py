"""Addresses and transaction signing as the wallet does them, against the protocol vectors."""

from __future__ import annotations

import pytest

from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key, decode_address
from chain.protocol.tx import sign_bytes, tx_id
from wallet.errors import WalletError
from wallet.signing import check_transfer, check_unsigned_fields, sign_fields
from wallet.tests.support import unsigned, vectors

ADDRESSES = vectors()["addresses"]
INVALID = vectors()["invalid_addresses"]
TRANSACTIONS = vectors()["transactions"]


@pytest.mark.parametrize("vector", ADDRESSES, ids=lambda v: v["address"])
def test_vector_seeds_give_their_pubkey_and_address(vector: dict) -> None:
    key = Key(bytes.fromhex(vector["seed"]))
    assert key.pubkey_hex == vector["pubkey"]
    assert key.address == vector["address"]
    assert len(decode_address(vector["address"])) == 20


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v["why"])
def test_invalid_vector_addresses_are_refused_as_recipients(vector: dict) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_transfer(to=vector["address"], amount=1)
    assert caught.value.code == "invalid_address"


@pytest.mark.parametrize("vector", TRANSACTIONS, ids=lambda v: f"{v['tx']['type']} nonce {v['tx']['nonce']}")
def test_signing_the_fields_of_a_vector_transaction_reproduces_it(vector: dict) -> None:
    signed = sign_fields(Key(bytes.fromhex(vector["signer_seed"])), unsigned(vector["tx"]))
    assert signed == vector["tx"]
    assert sign_bytes(signed).hex() == vector["sign_bytes_hex"]
    assert tx_id(signed) == vector["id"]


def test_from_pubkey_and_memo_may_be_left_to_the_wallet() -> None:
    vector = TRANSACTIONS[0]
    fields = {k: v for k, v in unsigned(vector["tx"]).items() if k not in ("from", "pubkey", "memo")}
    assert sign_fields(Key(bytes.fromhex(vector["signer_seed"])), fields) == vector["tx"]


def test_a_transaction_from_another_address_is_refused() -> None:
    vector = TRANSACTIONS[0]
    other = Key(bytes.fromhex(ADDRESSES[1]["seed"]))
    with pytest.raises(WalletError, match="not this wallet"):
        sign_fields(other, unsigned(vector["tx"]))


def test_a_foreign_pubkey_is_refused() -> None:
    vector = TRANSACTIONS[0]
    key = Key(bytes.fromhex(vector["signer_seed"]))
    fields = unsigned(vector["tx"]) | {"pubkey": ADDRESSES[1]["pubkey"]}
    with pytest.raises(WalletError, match="pubkey"):
        sign_fields(key, fields)


def test_an_already_signed_transaction_is_refused() -> None:
    vector = TRANSACTIONS[0]
    with pytest.raises(WalletError, match="signature"):
        sign_fields(Key(bytes.fromhex(vector["signer_seed"])), vector["tx"])


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": True},
        {"fee": -1},
        {"type": "mint"},
        {"payload": {"to": ADDRESSES[1]["address"]}},
        {"extra": 1},
    ],
    ids=["boolean nonce", "negative fee", "unknown type", "missing amount", "unknown field"],
)
def test_malformed_fields_are_refused(change: dict) -> None:
    vector = TRANSACTIONS[0]
    with pytest.raises(ProtocolError) as caught:
        check_unsigned_fields(
            unsigned(vector["tx"]) | change, address=vector["tx"]["from"], pubkey=vector["tx"]["pubkey"]
        )
    assert caught.value.code == "malformed"


@pytest.mark.parametrize("amount", [0, -1, True, 1.5, "1", 2**53])
def test_a_transfer_amount_must_be_a_positive_protocol_integer(amount) -> None:
    with pytest.raises(ProtocolError, match="amount"):
        check_transfer(to=ADDRESSES[1]["address"], amount=amount)
