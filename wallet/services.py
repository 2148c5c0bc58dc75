"""Writes and signing for the wallets the web service keeps (HackSoft-style services).

Key derivations (Argon2id, up to a second each) run outside database
transactions so no row or SQLite write lock is held while they run. Passwords,
mnemonics and seeds are never logged, and ``sensitive_variables`` keeps them out
of Django's error reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.views.decorators.debug import sensitive_variables

from chain.client import ChainClient
from chain.protocol.keys import Key
from wallet import chain
from wallet.errors import AddressMismatch, WalletExists
from wallet.files import check_name
from wallet.keystore import check_new_password, decrypt_keystore, encrypt_key, parse_keystore
from wallet.mnemonic import generate_mnemonic, key_from_mnemonic
from wallet.models import Wallet
from wallet.signing import build_transfer, check_transfer


@dataclass(frozen=True)
class CreatedWallet:
    wallet: Wallet
    mnemonic: str


@dataclass(frozen=True)
class SentTransaction:
    id: str
    tx: dict[str, Any]


def _check_free(owner: AbstractBaseUser, *, name: str, address: str | None = None) -> None:
    # Checked before the costly derivation so a taken name fails fast; the
    # unique constraints still decide under concurrency (see _insert).
    if Wallet.objects.filter(owner=owner, name=name).exists():
        raise WalletExists(f"you already have a wallet named {name!r}")
    if address and Wallet.objects.filter(owner=owner, address=address).exists():
        raise WalletExists(f"you already have a wallet holding {address}")


def _insert(owner: AbstractBaseUser, *, name: str, key: Key, keystore: dict[str, Any]) -> Wallet:
    try:
        with transaction.atomic():
            return Wallet.objects.create(
                owner=owner, name=name, address=key.address, pubkey=key.pubkey_hex, keystore=keystore
            )
    except IntegrityError:
        _check_free(owner, name=name, address=key.address)
        raise


@sensitive_variables("password", "phrase", "key", "keystore")
def wallet_create(*, owner: AbstractBaseUser, name: str, password: str) -> CreatedWallet:
    """A new wallet from a fresh 24-word mnemonic, which is returned once and never stored."""
    check_name(name)
    check_new_password(password)
    _check_free(owner, name=name)
    phrase = generate_mnemonic()
    key = key_from_mnemonic(phrase)
    keystore = encrypt_key(key, password)
    return CreatedWallet(wallet=_insert(owner, name=name, key=key, keystore=keystore), mnemonic=phrase)


@sensitive_variables("password", "mnemonic", "passphrase", "key", "keystore")
def wallet_import_mnemonic(
    *, owner: AbstractBaseUser, name: str, mnemonic: str, password: str, passphrase: str = ""
) -> Wallet:
    """A wallet restored from its mnemonic (and passphrase), encrypted under a new password."""
    check_name(name)
    check_new_password(password)
    key = key_from_mnemonic(mnemonic, passphrase)
    _check_free(owner, name=name, address=key.address)
    keystore = encrypt_key(key, password)
    return _insert(owner, name=name, key=key, keystore=keystore)


@sensitive_variables("password", "key")
def wallet_import_keystore(
    *, owner: AbstractBaseUser, name: str, keystore: dict[str, Any] | str | bytes, password: str
) -> Wallet:
    """A wallet from a keystore and its password; the password stays the wallet's.

    The keystore is decrypted first (wrong password, unsupported and edited files
    are refused). A file written with parameters below today's floor is
    re-encrypted, since everything this service stores meets it.
    """
    check_name(name)
    parsed = parse_keystore(keystore)
    _check_free(owner, name=name, address=parsed.address)
    key = decrypt_keystore(parsed, password)
    stored = parsed.to_dict() if parsed.params.meets_write_floor else encrypt_key(key, password)
    return _insert(owner, name=name, key=key, keystore=stored)


@sensitive_variables("password", "key")
def wallet_unlock(*, wallet: Wallet, password: str) -> Key:
    """The wallet's key, given its password."""
    key = decrypt_keystore(wallet.keystore, password)
    if key.address != wallet.address:
        raise AddressMismatch(f"the stored keystore holds {key.address}, not {wallet.address}")
    return key


@sensitive_variables("password", "key")
def wallet_send(
    *,
    wallet: Wallet,
    password: str,
    to: str,
    amount: int,
    fee: int | None = None,
    memo: str = "",
    client: ChainClient | None = None,
) -> SentTransaction:
    """Sign a transfer from ``wallet`` and submit it to the node; the node's id for it.

    The password is checked before the node is asked anything, so a wrong one
    sends nothing. Node errors come back as ``ProtocolError`` or ``ChainUnavailable``.
    """
    check_transfer(to=to, amount=amount, fee=fee, memo=memo)
    key = wallet_unlock(wallet=wallet, password=password)
    client = client or chain.get_chain_client()
    tx = build_transfer(client, key, to=to, amount=amount, fee=fee, memo=memo)
    submitted = client.submit(tx)
    return SentTransaction(id=submitted, tx=tx)
