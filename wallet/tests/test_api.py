"""REST endpoints of the wallet service: login required, one user's wallets only, clear errors."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth import get_user_model
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from chain.protocol.keys import Key
from wallet.mnemonic import key_from_mnemonic
from wallet.models import Wallet
from wallet.signing import wait_for_transaction
from wallet.tests.support import vectors

pytestmark = pytest.mark.django_db

PASSWORD = "test password 1"
KEYSTORE_VECTOR = vectors()["keystores"][0]
MNEMONIC_VECTOR = vectors()["mnemonics"][0]


def client_for(username: str) -> APIClient:
    user = get_user_model().objects.create_user(username)  # no password: force_login needs none, hashing one is slow
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def alice(data_dir) -> APIClient:
    return client_for("alice")


@pytest.fixture
def bob(data_dir) -> APIClient:
    return client_for("bob")


def create(client: APIClient, name: str = "main", password: str = PASSWORD) -> dict:
    response = client.post("/v1/wallets", {"name": name, "password": password}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def error_of(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/wallets"),
        ("post", "/v1/wallets"),
        ("post", "/v1/wallets/import"),
        ("get", "/v1/wallets/ait1e7vgxthexkwguvjrf7407ct96t75dtwp2rvun9"),
        ("post", "/v1/wallets/ait1e7vgxthexkwguvjrf7407ct96t75dtwp2rvun9/send"),
    ],
)
def test_anonymous_requests_are_refused(data_dir, method: str, path: str) -> None:
    response = getattr(APIClient(), method)(path, {}, format="json")
    assert response.status_code in (401, 403)
    assert response.json()["error"]["code"] == "not_authenticated"


def test_create_answers_the_mnemonic_once_and_list_never_shows_it(alice: APIClient) -> None:
    created = create(alice)
    assert len(created["mnemonic"].split()) == 24
    assert key_from_mnemonic(created["mnemonic"]).address == created["address"]
    listed = alice.get("/v1/wallets").json()
    assert listed == [{k: created[k] for k in ("name", "address", "pubkey", "created_at")}]
    detail = alice.get(f"/v1/wallets/{created['address']}").json()
    for body in (listed[0], detail):
        assert "mnemonic" not in body
        assert "keystore" not in body


def test_create_refuses_a_taken_name_a_weak_password_and_a_bad_name(alice: APIClient) -> None:
    create(alice)
    assert error_of(alice.post("/v1/wallets", {"name": "main", "password": PASSWORD}, format="json")) == (
        409,
        "wallet_exists",
    )
    assert error_of(alice.post("/v1/wallets", {"name": "x", "password": "short"}, format="json")) == (
        400,
        "weak_password",
    )
    assert error_of(alice.post("/v1/wallets", {"name": "../x", "password": PASSWORD}, format="json")) == (
        400,
        "invalid_name",
    )
    assert error_of(alice.post("/v1/wallets", {"name": "x"}, format="json")) == (400, "malformed")


def test_users_see_only_their_own_wallets(alice: APIClient, bob: APIClient) -> None:
    mine = create(alice, "mine")
    create(bob, "theirs")
    assert [w["name"] for w in alice.get("/v1/wallets").json()] == ["mine"]
    assert error_of(bob.get(f"/v1/wallets/{mine['address']}")) == (404, "not_found")


def test_another_user_s_wallet_cannot_be_spent_and_answers_like_a_missing_one(alice, bob) -> None:
    mine = create(alice)
    body = {"to": Key.generate().address, "amount": 1, "password": PASSWORD}
    stranger = Key.generate().address
    theirs = bob.post(f"/v1/wallets/{mine['address']}/send", body, format="json")
    missing = bob.post(f"/v1/wallets/{stranger}/send", body, format="json")
    assert error_of(theirs) == error_of(missing) == (404, "not_found")
    assert theirs.json()["error"]["message"] == f"no wallet {mine['address']}"
    assert missing.json()["error"]["message"] == f"no wallet {stranger}"


def test_import_from_a_mnemonic(alice: APIClient) -> None:
    body = {"name": "restored", "mnemonic": MNEMONIC_VECTOR["mnemonic"], "password": PASSWORD}
    response = alice.post("/v1/wallets/import", body, format="json")
    assert response.status_code == 201
    assert response.json()["address"] == MNEMONIC_VECTOR["address"]
    assert "mnemonic" not in response.json()
    again = alice.post("/v1/wallets/import", body | {"name": "again"}, format="json")
    assert error_of(again) == (409, "wallet_exists")


def test_import_from_a_mnemonic_with_a_passphrase(alice: APIClient) -> None:
    vector = vectors()["mnemonics"][1]
    body = {"name": "t", "mnemonic": vector["mnemonic"], "passphrase": vector["passphrase"], "password": PASSWORD}
    assert alice.post("/v1/wallets/import", body, format="json").json()["address"] == vector["address"]


def test_import_from_a_keystore(alice: APIClient) -> None:
    body = {"name": "v", "keystore": KEYSTORE_VECTOR["keystore"], "password": KEYSTORE_VECTOR["password"]}
    response = alice.post("/v1/wallets/import", body, format="json")
    assert response.status_code == 201
    assert response.json()["address"] == KEYSTORE_VECTOR["keystore"]["address"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"keystore": KEYSTORE_VECTOR["keystore"], "password": "wrong password"}, 403, "wrong_password"),
        (
            {"keystore": vectors()["unsupported_keystores"][0]["keystore"], "password": KEYSTORE_VECTOR["password"]},
            400,
            "unsupported_keystore",
        ),
        (
            {"keystore": vectors()["unsupported_keystores"][1]["keystore"], "password": KEYSTORE_VECTOR["password"]},
            400,
            "unsupported_keystore",
        ),
        ({"keystore": {"version": 1}, "password": KEYSTORE_VECTOR["password"]}, 400, "unsupported_keystore"),
        (
            {"keystore": vectors()["tampered_keystores"][0]["keystore"], "password": KEYSTORE_VECTOR["password"]},
            400,
            "address_mismatch",
        ),
        ({"mnemonic": "abandon " * 24, "password": PASSWORD}, 400, "invalid_mnemonic"),
        ({"mnemonic": "abandon " * 23 + "zzz", "password": PASSWORD}, 400, "invalid_mnemonic"),
        ({"password": PASSWORD}, 400, "malformed"),
        ({"mnemonic": MNEMONIC_VECTOR["mnemonic"], "keystore": {}, "password": PASSWORD}, 400, "malformed"),
    ],
    ids=[
        "wrong password",
        "opslimit too high",
        "unknown version",
        "not a keystore",
        "tampered",
        "bad checksum",
        "unknown word",
        "no source",
        "two sources",
    ],
)
def test_import_refusals_have_their_own_codes(alice: APIClient, body: dict, status: int, code: str) -> None:
    response = alice.post("/v1/wallets/import", {"name": "x"} | body, format="json")
    assert error_of(response) == (status, code)
    assert not Wallet.objects.exists()


def test_an_unknown_mnemonic_word_is_given_by_its_position_not_echoed(alice: APIClient) -> None:
    body = {"name": "x", "mnemonic": "abandon " * 23 + "zzz", "password": PASSWORD}
    message = alice.post("/v1/wallets/import", body, format="json").json()["error"]["message"]
    assert "word 24 is not in the BIP-39" in message and "zzz" not in message


def test_detail_without_a_node_still_shows_the_wallet(alice: APIClient) -> None:
    created = create(alice)
    detail = alice.get(f"/v1/wallets/{created['address']}").json()
    assert detail["address"] == created["address"]
    assert detail["balance"] is None
    assert detail["chain_error"]["code"] == "node_unavailable"


def test_send_without_a_node_is_503_after_the_password_is_checked(alice: APIClient) -> None:
    created = create(alice)
    body = {"to": Key.generate().address, "amount": 1}
    path = f"/v1/wallets/{created['address']}/send"
    assert error_of(alice.post(path, body | {"password": "wrong password"}, format="json")) == (403, "wrong_password")
    assert error_of(alice.post(path, body | {"password": PASSWORD}, format="json")) == (503, "node_unavailable")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        *[({"to": vector["address"]}, "invalid_address") for vector in vectors()["invalid_addresses"]],
        ({"to": " " + Key(bytes(32)).address}, "invalid_address"),
        ({"amount": 0}, "malformed"),
        ({"amount": 1.5}, "malformed"),
        ({"amount": "1"}, "malformed"),
        ({"amount": True}, "malformed"),
        ({"amount": 2**53}, "malformed"),
        ({"fee": "1000"}, "malformed"),
        ({"memo": "x" * 257}, "malformed"),
        ({"password": None}, "malformed"),
    ],
)
def test_send_refuses_bad_input_before_anything_is_signed(alice: APIClient, change: dict, code: str) -> None:
    created = create(alice)
    body = {"to": Key.generate().address, "amount": 1, "password": PASSWORD} | change
    response = alice.post(f"/v1/wallets/{created['address']}/send", body, format="json")
    assert error_of(response) == (400, code)


def test_passwords_and_mnemonics_never_reach_the_logs(alice: APIClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    created = create(alice, password="secret password 1")
    alice.post(
        f"/v1/wallets/{created['address']}/send",
        {"to": Key.generate().address, "amount": 1, "password": "secret password 2"},
        format="json",
    )
    alice.post(
        "/v1/wallets/import",
        {"name": "m", "mnemonic": created["mnemonic"], "password": "secret password 3"},
        format="json",
    )
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in ("secret password", created["mnemonic"], " ".join(created["mnemonic"].split()[:3])):
        assert secret not in logged


def test_form_encoded_bodies_are_refused(alice: APIClient) -> None:
    response = alice.post("/v1/wallets", {"name": "main", "password": PASSWORD})
    assert error_of(response) == (415, "malformed")


def test_the_openapi_schema_documents_the_wallet_endpoints() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]
    assert set(paths["/v1/wallets"]) >= {"get", "post"}
    assert "201" in paths["/v1/wallets"]["post"]["responses"]
    assert "409" in paths["/v1/wallets"]["post"]["responses"]
    assert "201" in paths["/v1/wallets/import"]["post"]["responses"]
    assert "200" in paths["/v1/wallets/{address}"]["get"]["responses"]
    send = paths["/v1/wallets/{address}/send"]["post"]
    assert {"202", "400", "403", "404", "409", "503"} <= set(send["responses"])
    request_schema = send["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][request_schema]["required"]) == {"to", "amount", "password"}


# -- against a real node ------------------------------------------------------------------------


@pytest.fixture
def funded_wallet(alice: APIClient, node_url: str) -> dict:
    """The first mnemonic vector's wallet, funded in the live node's genesis."""
    body = {"name": "funded", "mnemonic": MNEMONIC_VECTOR["mnemonic"], "password": PASSWORD}
    response = alice.post("/v1/wallets/import", body, format="json")
    assert response.status_code == 201
    return response.json()


@pytest.mark.process
def test_detail_shows_the_balance_and_nonce_from_the_node(alice: APIClient, funded_wallet: dict, live_node) -> None:
    detail = alice.get(f"/v1/wallets/{funded_wallet['address']}").json()
    account = live_node.client.account(funded_wallet["address"])
    assert (detail["balance"], detail["nonce"]) == (account["balance"], account["nonce"])
    assert detail["balance"] > 0
    assert detail["chain_error"] is None


@pytest.mark.process
def test_send_submits_a_signed_transfer_that_the_node_commits(alice: APIClient, funded_wallet: dict, live_node) -> None:
    recipient = create(alice, "savings")
    before = live_node.client.account(funded_wallet["address"])
    response = alice.post(
        f"/v1/wallets/{funded_wallet['address']}/send",
        {"to": recipient["address"], "amount": 1_234_567, "memo": "to savings", "password": PASSWORD},
        format="json",
    )
    assert response.status_code == 202, response.json()
    sent = response.json()
    assert sent["tx"]["from"] == funded_wallet["address"]
    assert sent["tx"]["nonce"] == before["nonce"]
    assert wait_for_transaction(live_node.client, sent["id"], timeout=30)["status"] == "committed"
    assert alice.get(f"/v1/wallets/{recipient['address']}").json()["balance"] == 1_234_567
    after = live_node.client.account(funded_wallet["address"])
    assert after["balance"] == before["balance"] - 1_234_567 - sent["tx"]["fee"]


@pytest.mark.process
def test_send_with_the_wrong_password_is_refused_and_nothing_reaches_the_node(
    alice: APIClient, funded_wallet: dict, live_node
) -> None:
    before = live_node.client.account(funded_wallet["address"])
    mempool = live_node.client.status()["mempool_size"]
    response = alice.post(
        f"/v1/wallets/{funded_wallet['address']}/send",
        {"to": Key.generate().address, "amount": 1, "password": "wrong password"},
        format="json",
    )
    assert error_of(response) == (403, "wrong_password")
    assert live_node.client.account(funded_wallet["address"]) == before
    assert live_node.client.status()["mempool_size"] == mempool


@pytest.mark.process
def test_node_errors_keep_their_protocol_code_and_status(alice: APIClient, funded_wallet: dict) -> None:
    path = f"/v1/wallets/{funded_wallet['address']}/send"
    body = {"to": Key.generate().address, "password": PASSWORD}
    assert error_of(alice.post(path, body | {"amount": 10**15}, format="json")) == (409, "insufficient_funds")
    assert error_of(alice.post(path, body | {"amount": 1, "fee": 1}, format="json")) == (400, "fee_too_low")
