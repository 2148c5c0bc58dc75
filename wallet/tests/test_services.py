"""The wallet service's writes and signing (unit tests, with a test double for the node)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key
from chain.protocol.tx import check_transaction
from wallet import chain, services
from wallet.errors import (
    AddressMismatch,
    InvalidMnemonic,
    InvalidWalletName,
    KeystoreUnsupported,
    WalletExists,
    WalletNotFound,
    WeakPassword,
    WrongPasswordOrCorrupted,
)
from wallet.keystore import decrypt_keystore
from wallet.mnemonic import key_from_mnemonic
from wallet.models import Wallet
from wallet.selectors import wallet_get, wallet_list
from wallet.tests.fakes import FakeChainClient
from wallet.tests.support import vectors

pytestmark = pytest.mark.django_db

PASSWORD = "test password 1"
KEYSTORE_VECTOR = vectors()["keystores"][0]
MNEMONIC_VECTOR = vectors()["mnemonics"][1]


@pytest.fixture
def owner():
    return get_user_model().objects.create_user("owner")


@pytest.fixture
def other():
    return get_user_model().objects.create_user("other")


@pytest.fixture
def fake_node(monkeypatch: pytest.MonkeyPatch) -> FakeChainClient:
    client = FakeChainClient()
    monkeypatch.setattr(chain, "get_chain_client", lambda node=None: client)
    return client


@pytest.fixture
def funded(owner, fake_node: FakeChainClient) -> Wallet:
    wallet = services.wallet_import_keystore(
        owner=owner, name="funded", keystore=KEYSTORE_VECTOR["keystore"], password=KEYSTORE_VECTOR["password"]
    )
    fake_node.fund(wallet.address, 10**9, nonce=3)
    return wallet


def test_create_stores_only_the_encrypted_key_of_the_returned_mnemonic(owner) -> None:
    created = services.wallet_create(owner=owner, name="main", password=PASSWORD)
    wallet = Wallet.objects.get(pk=created.wallet.pk)
    key = decrypt_keystore(wallet.keystore, PASSWORD)
    assert key.address == wallet.address == key_from_mnemonic(created.mnemonic).address
    assert wallet.pubkey == key.pubkey_hex
    row = json.dumps(list(Wallet.objects.filter(pk=wallet.pk).values()), default=str)
    assert created.mnemonic not in row
    assert key.seed.hex() not in row


def test_names_are_unique_per_owner_only(owner, other) -> None:
    services.wallet_create(owner=owner, name="main", password=PASSWORD)
    with pytest.raises(WalletExists):
        services.wallet_create(owner=owner, name="main", password=PASSWORD)
    services.wallet_create(owner=other, name="main", password=PASSWORD)
    assert Wallet.objects.filter(name="main").count() == 2


def test_create_refuses_a_short_password_and_a_bad_name(owner) -> None:
    with pytest.raises(WeakPassword):
        services.wallet_create(owner=owner, name="main", password="short")
    with pytest.raises(InvalidWalletName):
        services.wallet_create(owner=owner, name="../main", password=PASSWORD)
    assert not Wallet.objects.exists()


def test_import_mnemonic_gives_the_vector_address(owner) -> None:
    wallet = services.wallet_import_mnemonic(
        owner=owner,
        name="trezor",
        mnemonic=MNEMONIC_VECTOR["mnemonic"],
        passphrase=MNEMONIC_VECTOR["passphrase"],
        password=PASSWORD,
    )
    assert wallet.address == MNEMONIC_VECTOR["address"]
    assert decrypt_keystore(wallet.keystore, PASSWORD).seed.hex() == MNEMONIC_VECTOR["seed"]


def test_import_mnemonic_refuses_an_invalid_mnemonic(owner) -> None:
    with pytest.raises(InvalidMnemonic, match="bad checksum"):
        services.wallet_import_mnemonic(owner=owner, name="x", mnemonic="legal " * 12, password=PASSWORD)


def test_the_same_address_cannot_be_imported_twice_by_one_owner(owner, other) -> None:
    args = {"mnemonic": MNEMONIC_VECTOR["mnemonic"], "passphrase": "TREZOR", "password": PASSWORD}
    services.wallet_import_mnemonic(owner=owner, name="one", **args)
    with pytest.raises(WalletExists, match="holding"):
        services.wallet_import_mnemonic(owner=owner, name="two", **args)
    services.wallet_import_mnemonic(owner=other, name="one", **args)


def test_import_keystore_keeps_its_password_and_re_encrypts_weak_parameters(owner) -> None:
    wallet = services.wallet_import_keystore(
        owner=owner, name="v", keystore=json.dumps(KEYSTORE_VECTOR["keystore"]), password=KEYSTORE_VECTOR["password"]
    )
    assert wallet.address == KEYSTORE_VECTOR["keystore"]["address"]
    assert wallet.keystore["kdf"]["salt"] != KEYSTORE_VECTOR["keystore"]["kdf"]["salt"]
    assert decrypt_keystore(wallet.keystore, KEYSTORE_VECTOR["password"]).seed.hex() == KEYSTORE_VECTOR["seed"]


@pytest.mark.parametrize(
    ("keystore", "password", "error"),
    [
        (KEYSTORE_VECTOR["keystore"], "wrong password", WrongPasswordOrCorrupted),
        (vectors()["unsupported_keystores"][0]["keystore"], KEYSTORE_VECTOR["password"], KeystoreUnsupported),
        (vectors()["unsupported_keystores"][1]["keystore"], KEYSTORE_VECTOR["password"], KeystoreUnsupported),
        (vectors()["tampered_keystores"][0]["keystore"], KEYSTORE_VECTOR["password"], AddressMismatch),
    ],
    ids=["wrong password", "opslimit too high", "unknown version", "tampered"],
)
def test_import_keystore_refusals_store_nothing(owner, keystore, password, error) -> None:
    with pytest.raises(error):
        services.wallet_import_keystore(owner=owner, name="v", keystore=keystore, password=password)
    assert not Wallet.objects.exists()


def test_send_signs_a_transfer_with_the_node_s_chain_fee_and_nonce(funded: Wallet, fake_node) -> None:
    recipient = Key.generate().address
    sent = services.wallet_send(
        wallet=funded, password=KEYSTORE_VECTOR["password"], to=recipient, amount=2_500_000, memo="hi"
    )
    assert fake_node.submitted == [sent.tx]
    checked = check_transaction(sent.tx, chain_id=fake_node.chain_id, min_fee=fake_node.min_fee)
    assert checked.id == sent.id
    assert (checked.sender, checked.nonce, checked.fee) == (funded.address, 3, fake_node.min_fee)
    assert sent.tx["payload"] == {"to": recipient, "amount": 2_500_000}
    assert sent.tx["memo"] == "hi"


def test_send_with_an_explicit_fee(funded: Wallet, fake_node) -> None:
    sent = services.wallet_send(
        wallet=funded, password=KEYSTORE_VECTOR["password"], to=Key.generate().address, amount=1, fee=5000
    )
    assert sent.tx["fee"] == 5000


def test_send_with_the_wrong_password_asks_the_node_nothing(funded: Wallet, fake_node) -> None:
    fake_node.calls.clear()
    with pytest.raises(WrongPasswordOrCorrupted):
        services.wallet_send(wallet=funded, password="wrong password", to=Key.generate().address, amount=1)
    assert fake_node.calls == []
    assert fake_node.submitted == []


def test_send_to_an_invalid_address_asks_the_node_nothing(funded: Wallet, fake_node) -> None:
    fake_node.calls.clear()
    with pytest.raises(ProtocolError) as caught:
        services.wallet_send(wallet=funded, password=KEYSTORE_VECTOR["password"], to="ait1xyz", amount=1)
    assert caught.value.code == "invalid_address"
    assert fake_node.calls == []


def test_a_node_error_comes_back_with_its_code(funded: Wallet, fake_node) -> None:
    with pytest.raises(ProtocolError) as caught:
        services.wallet_send(
            wallet=funded, password=KEYSTORE_VECTOR["password"], to=Key.generate().address, amount=10**12
        )
    assert caught.value.code == "insufficient_funds"
    fake_node.fail_next = ProtocolError("mempool_full", "try later")
    with pytest.raises(ProtocolError, match="mempool_full"):
        services.wallet_send(wallet=funded, password=KEYSTORE_VECTOR["password"], to=Key.generate().address, amount=1)


def test_a_stored_keystore_for_another_address_is_refused(funded: Wallet, owner) -> None:
    other = services.wallet_create(owner=owner, name="other", password=KEYSTORE_VECTOR["password"]).wallet
    Wallet.objects.filter(pk=funded.pk).update(keystore=other.keystore)
    funded.refresh_from_db()
    with pytest.raises(AddressMismatch):
        services.wallet_unlock(wallet=funded, password=KEYSTORE_VECTOR["password"])


def test_selectors_only_see_the_owner_s_wallets(owner, other) -> None:
    mine = services.wallet_create(owner=owner, name="mine", password=PASSWORD).wallet
    theirs = services.wallet_create(owner=other, name="theirs", password=PASSWORD).wallet
    assert list(wallet_list(owner=owner)) == [mine]
    assert wallet_get(owner=owner, address=mine.address) == mine
    with pytest.raises(WalletNotFound):
        wallet_get(owner=owner, address=theirs.address)
