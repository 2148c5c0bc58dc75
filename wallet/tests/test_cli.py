"""``manage.py wallet``: files, passwords, output, and clear one-line errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from chain.protocol.keys import Key
from wallet.keystore import decrypt_keystore
from wallet.mnemonic import key_from_mnemonic
from wallet.tests.support import unsigned, vector_key, vectors

PASSWORD = "test password 1"
KEYSTORE_VECTOR = vectors()["keystores"][0]
MNEMONIC_VECTOR = vectors()["mnemonics"][1]


@pytest.fixture
def vector_keystore_file(tmp_path: Path) -> Path:
    path = tmp_path / "funded.keystore.json"
    path.write_text(json.dumps(KEYSTORE_VECTOR["keystore"]), encoding="utf-8")
    return path


@pytest.fixture
def vector_password_file(tmp_path: Path) -> Path:
    path = tmp_path / "vector.password"
    path.write_text(KEYSTORE_VECTOR["password"] + "\n", encoding="utf-8")
    return path


def keystore_of(data_dir: Path, name: str) -> Path:
    return data_dir / "wallets" / f"{name}.keystore.json"


def test_create_writes_a_0600_keystore_with_real_kdf_params_and_prints_the_mnemonic_once(
    real_kdf, wallet_cli, data_dir: Path, password_file: Path
) -> None:
    result = wallet_cli("create", "alice", "--password-file", str(password_file))

    path = keystore_of(data_dir, "alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    written = json.loads(path.read_text())
    assert written["kdf"]["opslimit"] >= 3
    assert written["kdf"]["memlimit"] >= 256 * 1024 * 1024
    phrase = next(line.strip() for line in result.stdout.splitlines() if len(line.split()) == 24)
    assert result.stdout.count(phrase) == 1
    assert phrase not in path.read_text()
    # The keystore holds the key the mnemonic backs up.
    key = decrypt_keystore(path.read_text(), PASSWORD)
    assert key.address == key_from_mnemonic(phrase).address == written["address"]
    assert written["address"] in result.stdout


def test_create_json_gives_the_mnemonic_once_with_the_address(wallet_cli, data_dir: Path, password_file) -> None:
    created = wallet_cli("create", "bob", "--password-file", str(password_file), "--json").json()
    assert key_from_mnemonic(created["mnemonic"]).address == created["address"]
    assert len(created["mnemonic"].split()) == 24
    assert Path(created["path"]) == keystore_of(data_dir, "bob")


def test_create_asks_the_password_twice(wallet_cli, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = []

    def answer(prompt: str) -> str:
        prompts.append(prompt)
        return PASSWORD

    monkeypatch.setattr("getpass.getpass", answer)
    created = wallet_cli("create", "carol", "--json").json()
    assert len(prompts) == 2
    assert decrypt_keystore(keystore_of(data_dir, "carol").read_text(), PASSWORD).address == created["address"]


def test_create_refuses_passwords_that_do_not_match(wallet_cli, data_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    with pytest.raises(CommandError, match="do not match"):
        wallet_cli("create", "carol")
    assert not keystore_of(data_dir, "carol").exists()


def test_without_any_password_source_and_no_terminal_the_error_says_what_to_do(
    wallet_cli, data_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_terminal(prompt: str) -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", no_terminal)
    with pytest.raises(CommandError, match="--password-file FILE or AITBC_WALLET_PASSWORD"):
        wallet_cli("create", "dave")


def test_the_password_comes_from_the_environment(wallet_cli, data_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITBC_WALLET_PASSWORD", PASSWORD)
    created = wallet_cli("create", "erin", "--json").json()
    assert decrypt_keystore(keystore_of(data_dir, "erin").read_text(), PASSWORD).address == created["address"]


def test_the_password_comes_from_the_environment_file(
    wallet_cli, data_dir, password_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AITBC_WALLET_PASSWORD_FILE", str(password_file))
    created = wallet_cli("create", "erin", "--json").json()
    assert decrypt_keystore(keystore_of(data_dir, "erin").read_text(), PASSWORD).address == created["address"]


def test_the_password_file_wins_over_the_environment_and_keeps_inner_spaces(
    wallet_cli, data_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AITBC_WALLET_PASSWORD", "not this one")
    path = tmp_path / "spaced"
    path.write_text(" spaced  password \n")
    wallet_cli("create", "frank", "--password-file", str(path))
    assert decrypt_keystore(keystore_of(data_dir, "frank").read_text(), " spaced  password ")


def test_a_password_is_never_taken_from_a_plain_argument(wallet_cli, data_dir) -> None:
    with pytest.raises(CommandError, match="unrecognized arguments: --password"):
        wallet_cli("create", "gina", "--password", PASSWORD)


def test_a_short_password_is_refused(wallet_cli, data_dir, tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_text("short\n")
    with pytest.raises(CommandError, match="at least 8 characters"):
        wallet_cli("create", "hank", "--password-file", str(path))


def test_create_never_replaces_an_existing_wallet(wallet_cli, data_dir, password_file) -> None:
    wallet_cli("create", "ivan", "--password-file", str(password_file))
    before = keystore_of(data_dir, "ivan").read_bytes()
    with pytest.raises(CommandError, match="already exists"):
        wallet_cli("create", "ivan", "--password-file", str(password_file))
    assert keystore_of(data_dir, "ivan").read_bytes() == before


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "x" * 65])
def test_bad_wallet_names_are_refused(wallet_cli, data_dir, password_file, name: str) -> None:
    with pytest.raises(CommandError, match="bad wallet name"):
        wallet_cli("create", name, "--password-file", str(password_file))


def test_show_json_prints_address_and_pubkey_by_name_or_address(wallet_cli, data_dir, password_file) -> None:
    created = wallet_cli("create", "judy", "--password-file", str(password_file), "--json").json()
    by_name = wallet_cli("show", "judy", "--json").json()
    by_address = wallet_cli("show", created["address"], "--json").json()
    assert by_name["address"] == by_address["address"] == created["address"]
    assert by_name["pubkey"] == created["pubkey"]
    assert Key(key_from_mnemonic(created["mnemonic"]).seed).pubkey_hex == by_name["pubkey"]
    assert "mnemonic" not in by_name


def test_list_shows_every_wallet(wallet_cli, data_dir, password_file) -> None:
    assert wallet_cli("list", "--json").json() == []
    for name in ("kim", "lee"):
        wallet_cli("create", name, "--password-file", str(password_file))
    listed = wallet_cli("list", "--json").json()
    assert [w["name"] for w in listed] == ["kim", "lee"]
    assert all(w["address"].startswith("ait1") for w in listed)
    assert "kim" in wallet_cli("list").stdout


def test_list_reports_an_unreadable_file_and_goes_on(wallet_cli, data_dir, password_file) -> None:
    wallet_cli("create", "kim", "--password-file", str(password_file))
    keystore_of(data_dir, "broken").write_text("{")
    result = wallet_cli("list", "--json")
    assert [w["name"] for w in result.json()] == ["kim"]
    assert "broken" in result.stderr


def test_import_from_mnemonic_file_and_from_keystore_give_the_same_address(
    wallet_cli, data_dir: Path, tmp_path: Path, password_file: Path
) -> None:
    created = wallet_cli("create", "original", "--password-file", str(password_file), "--json").json()
    # Take the keystore out, so the data directory no longer holds the address.
    moved = tmp_path / "moved.keystore.json"
    keystore_of(data_dir, "original").rename(moved)
    mnemonic_file = tmp_path / "backup.txt"
    mnemonic_file.write_text(created["mnemonic"] + "\n")

    from_mnemonic = wallet_cli(
        "import", "restored", "--mnemonic-file", str(mnemonic_file), "--password-file", str(password_file), "--json"
    ).json()
    keystore_of(data_dir, "restored").unlink()
    from_keystore = wallet_cli(
        "import", "--keystore", str(moved), "--password-file", str(password_file), "--json"
    ).json()

    assert from_mnemonic["address"] == from_keystore["address"] == created["address"]
    assert from_keystore["name"] == "moved"


def test_import_from_a_mnemonic_with_a_passphrase_file(wallet_cli, data_dir, tmp_path: Path, password_file) -> None:
    (tmp_path / "words").write_text(MNEMONIC_VECTOR["mnemonic"])
    (tmp_path / "passphrase").write_text(MNEMONIC_VECTOR["passphrase"] + "\n")
    imported = wallet_cli(
        "import",
        "trezor",
        "--mnemonic-file",
        str(tmp_path / "words"),
        "--passphrase-file",
        str(tmp_path / "passphrase"),
        "--password-file",
        str(password_file),
        "--json",
    ).json()
    assert imported["address"] == MNEMONIC_VECTOR["address"]
    assert imported["pubkey"] == MNEMONIC_VECTOR["pubkey"]


def test_import_of_an_invalid_mnemonic_names_the_position_not_the_word(
    wallet_cli, data_dir, tmp_path: Path, password_file
) -> None:
    words = MNEMONIC_VECTOR["mnemonic"].split()
    words[2] = "thanks"
    (tmp_path / "words").write_text(" ".join(words))
    with pytest.raises(CommandError, match=r"word 3 is not in the BIP-39") as raised:
        wallet_cli("import", "x", "--mnemonic-file", str(tmp_path / "words"), "--password-file", str(password_file))
    assert "thanks" not in str(raised.value)


def test_import_of_a_weak_keystore_rewrites_it_at_the_write_parameters(
    wallet_cli, data_dir, vector_keystore_file: Path, vector_password_file: Path
) -> None:
    imported = wallet_cli(
        "import", "--keystore", str(vector_keystore_file), "--password-file", str(vector_password_file), "--json"
    ).json()
    assert imported["address"] == KEYSTORE_VECTOR["keystore"]["address"]
    written = json.loads(keystore_of(data_dir, "funded").read_text())
    assert written["kdf"]["salt"] != KEYSTORE_VECTOR["keystore"]["kdf"]["salt"]
    assert decrypt_keystore(written, KEYSTORE_VECTOR["password"]).seed.hex() == KEYSTORE_VECTOR["seed"]


def test_import_with_the_wrong_password_writes_nothing(wallet_cli, data_dir, vector_keystore_file, password_file):
    with pytest.raises(CommandError, match="wrong password"):
        wallet_cli("import", "--keystore", str(vector_keystore_file), "--password-file", str(password_file))
    assert wallet_cli("list", "--json").json() == []


@pytest.mark.parametrize(
    ("vector", "error"),
    [
        (vectors()["unsupported_keystores"][0], "opslimit 4294967295"),
        (vectors()["unsupported_keystores"][1], "version 2"),
        (vectors()["tampered_keystores"][0], "the file was edited"),
    ],
    ids=["opslimit too high", "unknown version", "address edited"],
)
def test_import_refuses_unsupported_and_tampered_keystores(
    wallet_cli, data_dir, tmp_path: Path, vector_password_file, vector: dict, error: str
) -> None:
    path = tmp_path / "bad.keystore.json"
    path.write_text(json.dumps(vector["keystore"]))
    with pytest.raises(CommandError, match=error):
        wallet_cli("import", "--keystore", str(path), "--password-file", str(vector_password_file))
    assert not keystore_of(data_dir, "bad").exists()


def test_import_refuses_an_address_already_held(
    wallet_cli, data_dir, vector_keystore_file, vector_password_file
) -> None:
    args = ["--keystore", str(vector_keystore_file), "--password-file", str(vector_password_file)]
    wallet_cli("import", "first", *args)
    with pytest.raises(CommandError, match="'first' already holds"):
        wallet_cli("import", "second", *args)


@pytest.fixture
def funded_wallet(wallet_cli, vector_keystore_file, vector_password_file) -> Path:
    keystore_args = ["--keystore", str(vector_keystore_file)]
    wallet_cli("import", "funded", *keystore_args, "--password-file", str(vector_password_file))
    return vector_password_file


@pytest.mark.parametrize(
    "vector",
    [v for v in vectors()["transactions"] if v["signer_seed"] == KEYSTORE_VECTOR["seed"]],
    ids=lambda v: f"{v['tx']['type']} {v['tx']['nonce']}",
)
def test_sign_rebuilds_and_signs_the_vector_transactions_from_stdin(wallet_cli, funded_wallet, vector: dict) -> None:
    result = wallet_cli(
        "sign", "funded", "--tx", "-", "--password-file", str(funded_wallet), stdin=json.dumps(unsigned(vector["tx"]))
    )
    assert json.loads(result.stdout) == vector["tx"]


def test_sign_reads_the_fields_from_a_file(wallet_cli, funded_wallet, tmp_path: Path) -> None:
    vector = vectors()["transactions"][0]
    (tmp_path / "tx.json").write_text(json.dumps(unsigned(vector["tx"])))
    result = wallet_cli("sign", "funded", "--tx", str(tmp_path / "tx.json"), "--password-file", str(funded_wallet))
    assert json.loads(result.stdout)["signature"] == vector["tx"]["signature"]


def test_sign_refuses_a_foreign_from_before_asking_for_the_password(
    wallet_cli, funded_wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt: pytest.fail("asked for a password"))
    fields = unsigned(vectors()["transactions"][3]["tx"])  # from the third address vector
    with pytest.raises(CommandError, match="not this wallet"):
        wallet_cli("sign", "funded", "--tx", "-", stdin=json.dumps(fields))


def test_sign_refuses_a_foreign_pubkey(wallet_cli, funded_wallet) -> None:
    fields = unsigned(vectors()["transactions"][0]["tx"]) | {"pubkey": vectors()["addresses"][1]["pubkey"]}
    with pytest.raises(CommandError, match="pubkey is not this wallet's"):
        wallet_cli("sign", "funded", "--tx", "-", "--password-file", str(funded_wallet), stdin=json.dumps(fields))


def test_sign_refuses_a_transaction_that_already_has_a_signature(wallet_cli, funded_wallet) -> None:
    signed = vectors()["transactions"][0]["tx"]
    with pytest.raises(CommandError, match="already has a signature"):
        wallet_cli("sign", "funded", "--tx", "-", "--password-file", str(funded_wallet), stdin=json.dumps(signed))


def test_sign_refuses_input_that_is_not_strict_json(wallet_cli, funded_wallet) -> None:
    with pytest.raises(CommandError, match="malformed: .*duplicate key"):
        wallet_cli("sign", "funded", "--tx", "-", stdin='{"nonce": 1, "nonce": 2}')


def test_sign_with_the_wrong_password_is_refused(wallet_cli, funded_wallet, password_file: Path) -> None:
    fields = unsigned(vectors()["transactions"][0]["tx"])
    with pytest.raises(CommandError, match="wrong password"):
        wallet_cli("sign", "funded", "--tx", "-", "--password-file", str(password_file), stdin=json.dumps(fields))


def test_an_unknown_wallet_is_a_clear_error(wallet_cli, data_dir) -> None:
    with pytest.raises(CommandError, match="no wallet named or holding 'nobody'"):
        wallet_cli("show", "nobody")


def test_balance_without_a_node_says_how_to_configure_one(wallet_cli, funded_wallet) -> None:
    with pytest.raises(CommandError, match="no chain node configured: pass --node URL, set AITBC_NODE_URL"):
        wallet_cli("balance", "funded")


def test_send_to_an_unreachable_node_is_a_clear_error(wallet_cli, funded_wallet, free_tcp_port: int) -> None:
    with pytest.raises(CommandError, match="unreachable"):
        wallet_cli(
            "send",
            "funded",
            "--to",
            vectors()["addresses"][1]["address"],
            "--amount",
            "1",
            "--node",
            f"http://127.0.0.1:{free_tcp_port}",
            "--password-file",
            str(funded_wallet),
        )


@pytest.mark.parametrize("vector", vectors()["invalid_addresses"], ids=lambda v: v["why"])
def test_send_to_an_invalid_address_is_refused(wallet_cli, funded_wallet, vector: dict) -> None:
    with pytest.raises(CommandError, match="^invalid_address: "):
        wallet_cli("send", "funded", "--to", vector["address"], "--amount", "1", "--node", "http://127.0.0.1:9")


@pytest.mark.parametrize("amount", ["0", "-5", "1.5"])
def test_send_refuses_a_bad_amount(wallet_cli, funded_wallet, amount: str) -> None:
    with pytest.raises(CommandError):
        wallet_cli(
            "send", "funded", "--to", vectors()["addresses"][1]["address"], f"--amount={amount}", "--node", "http://x"
        )


# -- against a real node ------------------------------------------------------------------------


@pytest.mark.process
def test_balance_shows_the_node_s_account(wallet_cli, funded_wallet, node_url: str, live_node) -> None:
    shown = wallet_cli("balance", "funded", "--json").json()
    account = live_node.client.account(vector_key().address)
    assert shown == {"name": "funded", "address": vector_key().address} | {
        "balance": account["balance"],
        "nonce": account["nonce"],
    }
    assert "AIT" in wallet_cli("balance", "funded").stdout


@pytest.mark.process
def test_balance_of_any_address_and_with_an_explicit_node(wallet_cli, data_dir, live_node) -> None:
    stranger = Key.generate().address
    shown = wallet_cli("balance", stranger, "--node", live_node.url, "--json").json()
    assert shown == {"name": None, "address": stranger, "balance": 0, "nonce": 0}


@pytest.mark.process
def test_send_wait_commits_the_transfer_and_moves_the_balance(wallet_cli, funded_wallet, node_url, live_node) -> None:
    recipient = Key.generate().address
    sent = wallet_cli(
        "send",
        "funded",
        "--to",
        recipient,
        "--amount",
        "2500000",
        "--memo",
        "rent ✓",
        "--wait",
        "--password-file",
        str(funded_wallet),
        "--json",
    ).json()
    assert sent["status"] == "committed"
    assert sent["tx"]["fee"] == live_node.min_fee
    assert sent["tx"]["chain_id"] == live_node.chain_id
    assert live_node.client.transaction(sent["id"])["tx"] == sent["tx"]
    assert wallet_cli("balance", recipient, "--json").json()["balance"] == 2_500_000


@pytest.mark.process
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--amount", str(10**15)], "^insufficient_funds: "),
        (["--amount", "1", "--fee", "1"], "^fee_too_low: "),
        (["--amount", "1", "--nonce", "1000"], "^bad_nonce: "),
    ],
    ids=["insufficient funds", "fee too low", "nonce beyond the window"],
)
def test_send_reports_the_node_s_error_code(wallet_cli, funded_wallet, node_url, args: list[str], error: str) -> None:
    with pytest.raises(CommandError, match=error):
        wallet_cli(
            "send", "funded", "--to", Key.generate().address, *args, "--password-file", str(funded_wallet), "--wait"
        )
