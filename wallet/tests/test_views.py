"""The wallet's pages: create, import, balance, send with the password, history; the faucet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chain.tests.support import ALLOCATION, transfer
from wallet import keystore
from wallet.models import Wallet
from wallet.views import parse_ait

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]
pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery"


@pytest.fixture
def faucet_files(tmp_path: Path, settings, node) -> tuple[Path, Path]:
    """The chain tests' funded ``dave`` as the faucet."""
    dave = node.keys.funded[3]
    path, password_file = tmp_path / "faucet.keystore.json", tmp_path / "faucet.password"
    path.write_text(keystore.keystore_json(keystore.encrypt_key(dave, "faucet password")))
    password_file.write_text("faucet password\n")
    settings.FAUCET_KEYSTORE, settings.FAUCET_PASSWORD_FILE = path, password_file
    settings.FAUCET_PER_HOUR = 2
    return path, password_file


def create_wallet(browser, name: str = "main") -> tuple[str, str]:
    answer = browser.post("/wallet/create", {"name": name, "password": PASSWORD, "password2": PASSWORD})
    assert answer.status_code == 200
    page = answer.content.decode()
    address = re.search(r'id="new-address">(ait1[0-9a-z]+)<', page).group(1)
    mnemonic = re.search(r'id="mnemonic">([a-z ]+)<', page).group(1)
    assert len(mnemonic.split()) == 24
    return address, mnemonic


def test_create_fund_send_and_follow_the_transfer_in_the_history(browser, node, faucet_files) -> None:
    address, _ = create_wallet(browser)
    index = browser.get("/wallet/").content.decode()
    assert address in index

    funded = browser.post(f"/wallet/{address}/faucet")
    assert funded.status_code == 302 and "?sent=" in funded["Location"]
    node.produce()
    assert 'id="wallet-balance">10000000<' in browser.get(f"/wallet/{address}").content.decode()

    bob = node.keys.funded[1].address
    wrong = browser.post(f"/wallet/{address}/send", {"to": bob, "amount": "1.5", "password": "wrong password"})
    assert wrong.status_code == 302
    assert "Nothing was sent" in browser.get(wrong["Location"]).content.decode()

    sent = browser.post(f"/wallet/{address}/send", {"to": bob, "amount": "1.5", "password": PASSWORD})
    tx_id = sent["Location"].split("?sent=")[1]
    history = browser.get(f"/wallet/{address}?fragment=state").content.decode()
    assert tx_id in history and "pending" in history
    node.produce()
    history = browser.get(f"/wallet/{address}?fragment=state").content.decode()
    assert re.search(rf'data-tx="{tx_id}".*?badge committed', history, re.S)
    assert 'id="wallet-balance">8499000<' in history  # 10 AIT - 1.5 AIT - the 1000 uait fee


def test_import_from_the_mnemonic_gives_the_same_address(browser, node) -> None:
    address, mnemonic = create_wallet(browser, "first")
    Wallet.objects.filter(address=address).delete()
    answer = browser.post("/wallet/import", {"name": "again", "mnemonic": mnemonic, "password": PASSWORD})
    assert answer["Location"] == f"/wallet/{address}"


def test_import_from_a_keystore_file(browser, node, tmp_path: Path) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    alice = node.keys.funded[0]
    data = keystore.keystore_json(keystore.encrypt_key(alice, PASSWORD)).encode()
    upload = SimpleUploadedFile("alice.json", data, content_type="application/json")
    answer = browser.post("/wallet/import", {"name": "alice", "password": PASSWORD, "keystore": upload})
    assert answer["Location"] == f"/wallet/{alice.address}"
    assert f'id="wallet-balance">{ALLOCATION}<' in browser.get(answer["Location"]).content.decode()


def test_someone_elses_wallet_page_is_not_found(browser, node, django_user_model) -> None:
    address, _ = create_wallet(browser)
    other = django_user_model.objects.create_user(username="mallory", password="another long one 2")
    browser.force_login(other)
    assert browser.get(f"/wallet/{address}").status_code == 404
    assert (
        browser.post(f"/wallet/{address}/send", {"to": address, "amount": "1", "password": PASSWORD}).status_code == 404
    )


def test_forms_need_the_csrf_token(user, node) -> None:
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post("/wallet/create", {"name": "x", "password": PASSWORD, "password2": PASSWORD}).status_code == 403


@pytest.mark.parametrize(
    ("text", "uait"), [("1", 1_000_000), ("1.5", 1_500_000), ("0.000001", 1), ("2,000", 2_000_000_000)]
)
def test_amounts_in_ait(text: str, uait: int) -> None:
    assert parse_ait(text) == uait


@pytest.mark.parametrize("text", ["0", "-1", "0.0000001", "abc", ""])
def test_bad_amounts_are_refused(text: str) -> None:
    from chain.protocol.errors import ProtocolError

    with pytest.raises(ProtocolError):
        parse_ait(text)


def test_the_faucet_api_sends_throttles_and_is_404_without_a_faucet(browser, node, faucet_files, settings) -> None:
    alice = node.keys.funded[0].address
    first = browser.post("/v1/faucet", {"address": alice}, content_type="application/json")
    assert first.status_code == 202, first.content
    second = browser.post("/v1/faucet", {"address": alice}, content_type="application/json")
    assert second.status_code == 202
    assert second.json()["id"] != first.json()["id"], "two grants in one block take two nonces"
    third = browser.post("/v1/faucet", {"address": alice}, content_type="application/json")
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limited"
    assert int(third["Retry-After"]) > 0
    node.produce()
    for grant in (first, second):
        assert node.client.transaction(grant.json()["id"])["status"] == "committed"

    bad = browser.post("/v1/faucet", {"address": "ait1nope"}, content_type="application/json")
    assert bad.status_code in (400, 429)

    settings.FAUCET_KEYSTORE = faucet_files[0].with_name("missing.json")
    missing = browser.post("/v1/faucet", {"address": alice}, content_type="application/json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_faucet_skips_a_nonce_another_sender_holds(browser, node, faucet_files) -> None:
    dave = node.keys.funded[3]
    # The CLI sent from the faucet's key meanwhile: its nonce 0 is pending.
    node.submit(transfer(dave, 0, node.keys.funded[0].address, 5))
    answer = browser.post("/v1/faucet", {"address": node.keys.funded[1].address}, content_type="application/json")
    assert answer.status_code == 202, answer.content
    assert node.client.transaction(answer.json()["id"])["tx"]["nonce"] == 1


def test_the_faucet_api_needs_a_login(client) -> None:
    assert client.post("/v1/faucet", {"address": "x"}, content_type="application/json").status_code == 403
