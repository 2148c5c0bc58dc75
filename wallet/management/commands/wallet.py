"""``python manage.py wallet create/import/list/show/balance/send/sign``: the wallet CLI.

Wallets are keystore files in ``<data dir>/wallets/`` (``wallet/files.py``).
Passwords come from ``--password-file FILE``, else ``AITBC_WALLET_PASSWORD`` (or
``AITBC_WALLET_PASSWORD_FILE``), else a prompt: never from a plain argument,
which would show in ``ps`` and shell history.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from aitbc_site.env import env_raw
from chain.client import ChainUnavailable
from chain.protocol.encoding import canonical_json, parse_strict
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key, is_address
from wallet import chain
from wallet.errors import AddressMismatch, WalletError, WalletExists, WalletNotFound
from wallet.files import WalletFile, check_name, find_wallet, iter_wallets, wallet_path, write_new_wallet
from wallet.keystore import check_new_password, decrypt_keystore, encrypt_key, parse_keystore
from wallet.mnemonic import DEFAULT_WORDS, WORD_COUNTS, generate_mnemonic, key_from_mnemonic
from wallet.signing import build_transfer, check_transfer, check_unsigned_fields, sign_fields, wait_for_transaction

PASSWORD_ENV = "AITBC_WALLET_PASSWORD"
_IMPORT_SUFFIXES = (".keystore.json", ".json", ".txt")


def format_ait(uait: int) -> str:
    return f"{uait // 1_000_000}.{uait % 1_000_000:06d} AIT"


class Command(BaseCommand):
    help = "Wallets in <data dir>/wallets/: create, import, list, show, balance, send, sign."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        def add(name: str, **kwargs: Any) -> CommandParser:
            # No abbreviations: "--password SECRET" must be an error, not a prefix of --password-file.
            return actions.add_parser(name, allow_abbrev=False, **kwargs)

        p = add("create", help="new wallet from a new mnemonic, shown once")
        p.add_argument("name")
        p.add_argument("--words", type=int, choices=WORD_COUNTS, default=DEFAULT_WORDS)
        self._password_arguments(p)
        p.add_argument("--json", action="store_true")

        p = add("import", help="wallet from a keystore file or a mnemonic file")
        p.add_argument("name", nargs="?", help="default: the file's name without .keystore.json/.json/.txt")
        source = p.add_mutually_exclusive_group(required=True)
        source.add_argument("--keystore", metavar="FILE", help="keystore file; its password stays the wallet's")
        source.add_argument("--mnemonic-file", metavar="FILE", help="file holding the mnemonic words")
        p.add_argument("--passphrase-file", metavar="FILE", help="file holding the mnemonic's passphrase")
        self._password_arguments(p)
        p.add_argument("--json", action="store_true")

        p = add("list", help="the wallets in the data directory")
        p.add_argument("--json", action="store_true")

        p = add("show", help="a wallet's address and public key")
        p.add_argument("wallet", metavar="NAME_OR_ADDRESS")
        p.add_argument("--json", action="store_true")

        p = add("balance", help="balance and nonce from a node")
        p.add_argument("wallet", metavar="NAME_OR_ADDRESS")
        p.add_argument("--node", metavar="URL", help="node RPC URL (default: AITBC_NODE_URL, else the devnet's)")
        p.add_argument("--json", action="store_true")

        p = add("send", help="sign and submit a transfer")
        p.add_argument("wallet", metavar="NAME")
        p.add_argument("--to", required=True, metavar="ADDRESS")
        p.add_argument("--amount", required=True, type=int, metavar="UAIT")
        p.add_argument("--fee", type=int, metavar="UAIT", help="default: the chain's min_fee")
        p.add_argument("--memo", default="")
        p.add_argument("--nonce", type=int, help="default: the account's nonce on the node")
        p.add_argument("--node", metavar="URL")
        p.add_argument("--wait", action="store_true", help="wait until the transaction is committed or rejected")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")
        self._password_arguments(p)
        p.add_argument("--json", action="store_true")

        p = add("sign", help="sign a transaction given as JSON fields without signature")
        p.add_argument("wallet", metavar="NAME")
        p.add_argument("--tx", required=True, metavar="FILE_OR_-", help="JSON fields of the transaction; - for stdin")
        self._password_arguments(p)

    @staticmethod
    def _password_arguments(parser: CommandParser) -> None:
        parser.add_argument(
            "--password-file", metavar="FILE", help=f"file holding the password (else {PASSWORD_ENV}, else a prompt)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.options = options
        self.directory: Path = settings.DATA_DIR / "wallets"
        try:
            getattr(self, f"do_{options['action']}")()
        except ProtocolError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        except WalletError as exc:
            raise CommandError(exc.message) from None
        except (ChainUnavailable, ImproperlyConfigured, TimeoutError) as exc:
            raise CommandError(str(exc)) from None

    # Output

    def emit(self, data: Any, lines: list[str]) -> None:
        if self.options.get("json"):
            self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            for line in lines:
                self.stdout.write(line)

    # Secrets

    def password(self, *, new: bool = False, prompt: str = "Wallet password: ") -> str:
        """The password from --password-file, the environment, or a prompt (twice when ``new``)."""
        return read_password(self.options.get("password_file"), new=new, prompt=prompt)

    # Actions

    def do_create(self) -> None:
        name = check_name(self.options["name"])
        self._refuse_taken(name)
        password = self.password(new=True)
        phrase = generate_mnemonic(self.options["words"])
        key = key_from_mnemonic(phrase)
        path = write_new_wallet(self.directory, name, encrypt_key(key, password))
        self.emit(
            {"name": name, "address": key.address, "pubkey": key.pubkey_hex, "path": str(path), "mnemonic": phrase},
            [
                f"Created wallet {name}",
                f"  address  {key.address}",
                f"  file     {path}",
                "",
                "Recovery mnemonic: write it down and keep it offline. It is shown only this once;",
                "anyone who has it can spend from this wallet.",
                f"  {phrase}",
            ],
        )

    def do_import(self) -> None:
        source = self.options["keystore"] or self.options["mnemonic_file"]
        name = check_name(self.options["name"] or _name_from_file(source))
        self._refuse_taken(name)
        if self.options["keystore"]:
            if self.options["passphrase_file"]:
                raise CommandError("--passphrase-file goes with --mnemonic-file, not --keystore")
            keystore = parse_keystore(_read_file(source, "keystore"))
            self._refuse_held(keystore.address)
            password = self.password(prompt="Keystore password: ")
            key = decrypt_keystore(keystore, password)
            # Everything written meets today's KDF floor, so a weaker file is re-encrypted.
            stored = keystore.to_dict() if keystore.params.meets_write_floor else encrypt_key(key, password)
        else:
            phrase = _read_file(source, "mnemonic file").decode("utf-8", errors="replace")
            passphrase = _read_secret(self.options["passphrase_file"], "passphrase file", allow_empty=True)
            key = key_from_mnemonic(phrase, passphrase)
            self._refuse_held(key.address)
            stored = encrypt_key(key, self.password(new=True))
        path = write_new_wallet(self.directory, name, stored)
        self.emit(
            {"name": name, "address": key.address, "pubkey": key.pubkey_hex, "path": str(path)},
            [f"Imported wallet {name}", f"  address  {key.address}", f"  file     {path}"],
        )

    def do_list(self) -> None:
        wallets = []
        for item in iter_wallets(self.directory):
            if isinstance(item, WalletFile):
                wallets.append(item.describe())
            else:
                path, exc = item
                self.stderr.write(f"skipping {path}: {exc.message}")
        lines = [f"{w['name']:<24} {w['address']}" for w in wallets] or [f"no wallets in {self.directory}"]
        self.emit(wallets, lines)

    def do_show(self) -> None:
        wallet = find_wallet(self.directory, self.options["wallet"])
        params = wallet.keystore.params
        self.emit(
            wallet.describe() | {"kdf": {"opslimit": params.opslimit, "memlimit": params.memlimit}},
            [
                f"name     {wallet.name}",
                f"address  {wallet.address}",
                f"pubkey   {wallet.pubkey}",
                f"file     {wallet.path}",
                f"kdf      argon2id opslimit {params.opslimit}, memlimit {params.memlimit // 1024} KiB",
            ],
        )

    def do_balance(self) -> None:
        target = self.options["wallet"]
        try:
            wallet: WalletFile | None = find_wallet(self.directory, target)
            address = wallet.address
        except WalletNotFound:
            # Balances are public: any valid address can be looked up.
            if not is_address(target):
                raise
            wallet, address = None, target
        account = chain.get_chain_client(self.options["node"]).account(address)
        balance, nonce = account["balance"], account["nonce"]
        self.emit(
            {"name": wallet.name if wallet else None, "address": address, "balance": balance, "nonce": nonce},
            [f"{address}  {format_ait(balance)} ({balance} uait), nonce {nonce}"],
        )

    def do_send(self) -> None:
        opts = self.options
        for flag in ("amount", "fee", "nonce"):
            if opts[flag] is not None and opts[flag] < 0:
                raise CommandError(f"--{flag} cannot be negative")
        check_transfer(to=opts["to"], amount=opts["amount"], fee=opts["fee"], memo=opts["memo"])
        wallet = find_wallet(self.directory, opts["wallet"])
        client = chain.get_chain_client(opts["node"])
        key = self._unlock(wallet)
        tx = build_transfer(
            client, key, to=opts["to"], amount=opts["amount"], fee=opts["fee"], memo=opts["memo"], nonce=opts["nonce"]
        )
        tx_id = client.submit(tx)
        result: dict[str, Any] = {"id": tx_id, "status": "pending", "tx": tx}
        if opts["wait"]:
            answer = wait_for_transaction(client, tx_id, timeout=opts["timeout"])
            result |= {"status": answer["status"], "height": answer.get("height"), "error": answer.get("error")}
        lines = [f"submitted {tx_id}: {opts['amount']} uait to {opts['to']}, fee {tx['fee']}, nonce {tx['nonce']}"]
        if opts["wait"]:
            lines.append(f"{result['status']} at height {result['height']}")
        self.emit(result, lines)
        if result["status"] == "rejected":
            error = result.get("error") or {}
            raise CommandError(f"transaction {tx_id} rejected: {error.get('code')}: {error.get('message')}")

    def do_sign(self) -> None:
        source = self.options["tx"]
        text = sys.stdin.buffer.read() if source == "-" else _read_file(source, "transaction file")
        fields = parse_strict(text)
        wallet = find_wallet(self.directory, self.options["wallet"])
        # Refuse a foreign or malformed transaction before asking for the password.
        check_unsigned_fields(fields, address=wallet.address, pubkey=wallet.pubkey)
        signed = sign_fields(self._unlock(wallet), fields)
        self.stdout.write(canonical_json(signed).decode("utf-8"))

    # Helpers

    def _unlock(self, wallet: WalletFile) -> Key:
        key = decrypt_keystore(wallet.keystore, self.password())
        if key.address != wallet.address:
            raise AddressMismatch(f"{wallet.path} holds {key.address}, not {wallet.address}")
        return key

    def _refuse_taken(self, name: str) -> None:
        if wallet_path(self.directory, name).exists():
            raise WalletExists(f"wallet {name!r} already exists in {self.directory}")

    def _refuse_held(self, address: str) -> None:
        for item in iter_wallets(self.directory):
            if isinstance(item, WalletFile) and item.address == address:
                raise WalletExists(f"wallet {item.name!r} already holds {address}")


def read_password(path: str | None, *, new: bool = False, prompt: str = "Wallet password: ") -> str:
    """A wallet password from ``path``, else ``AITBC_WALLET_PASSWORD``, else a prompt (twice when ``new``).

    Never from a command-line argument, which would land in shell history.
    """
    if path:
        password = _read_secret(path, "password file")
    else:
        password = env_raw(PASSWORD_ENV) or ""
        if not password:
            password = _prompt(prompt)
            if new and _prompt("Repeat password: ") != password:
                raise CommandError("the passwords do not match")
    if not password:
        raise CommandError("the password is empty")
    if new:
        check_new_password(password)
    return password


def _prompt(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except (EOFError, OSError):
        raise CommandError(
            f"no password: give --password-file FILE or {PASSWORD_ENV}, or run in a terminal to be asked"
        ) from None


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path}: {exc.strerror}") from None


def _read_secret(path: str | None, what: str, *, allow_empty: bool = False) -> str:
    """A secret file's content without its final line break (other whitespace is part of it)."""
    if path is None:
        return ""
    try:
        text = _read_file(path, what).decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{what} {path} is not UTF-8") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text and not allow_empty:
        raise CommandError(f"{what} {path} is empty")
    return text


def _name_from_file(path: str) -> str:
    name = Path(path).name
    for suffix in _IMPORT_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name
