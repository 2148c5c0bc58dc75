"""Keystore files of the CLI's wallets: ``<data dir>/wallets/NAME.keystore.json`` (no Django).

Functions take the wallets directory, so the CLI, scripts and tests can point
them anywhere; the CLI passes ``settings.DATA_DIR / "wallets"``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chain.protocol.keys import is_address
from wallet.errors import InvalidWalletName, WalletError, WalletExists, WalletNotFound
from wallet.keystore import Keystore, keystore_json, parse_keystore

SUFFIX = ".keystore.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class WalletFile:
    name: str
    path: Path
    keystore: Keystore

    @property
    def address(self) -> str:
        return self.keystore.address

    @property
    def pubkey(self) -> str:
        return self.keystore.pubkey

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "pubkey": self.pubkey, "path": str(self.path)}


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or name.endswith(SUFFIX):
        raise InvalidWalletName(
            f"bad wallet name {name!r}: 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    return name


def wallet_path(directory: Path, name: str) -> Path:
    return directory / f"{check_name(name)}{SUFFIX}"


def read_wallet(path: Path, name: str | None = None) -> WalletFile:
    """Read and check one keystore file (no password needed, nothing decrypted)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise WalletNotFound(f"no wallet file {path}") from None
    except OSError as exc:
        raise WalletError(f"cannot read {path}: {exc.strerror}") from None
    keystore = parse_keystore(text)
    if name is None:
        name = path.name.removesuffix(SUFFIX)
    return WalletFile(name=name, path=path, keystore=keystore)


def iter_wallets(directory: Path) -> Iterator[WalletFile | tuple[Path, WalletError]]:
    """Every wallet file in ``directory`` by name; an unreadable one as ``(path, error)``."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            yield read_wallet(path)
        except WalletError as exc:
            yield path, exc


def find_wallet(directory: Path, name_or_address: str) -> WalletFile:
    """The wallet called ``name_or_address``, else the one holding that address."""
    if NAME_RE.fullmatch(name_or_address):
        path = directory / f"{name_or_address}{SUFFIX}"
        if path.exists():
            return read_wallet(path)
    if is_address(name_or_address):
        for item in iter_wallets(directory):
            if isinstance(item, WalletFile) and item.address == name_or_address:
                return item
    raise WalletNotFound(f"no wallet named or holding {name_or_address!r} in {directory}")


def write_new_wallet(directory: Path, name: str, keystore: dict[str, Any]) -> Path:
    """Write a new keystore file (0600) that must not replace an existing one.

    A keystore may be the only copy of a key, so this never overwrites:
    the content goes to a private temporary file first and is then hard-linked
    into place, which fails atomically if the name was taken meanwhile.
    """
    path = wallet_path(directory, name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        raise WalletExists(f"wallet {name!r} already exists at {path}")
    tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(keystore_json(keystore))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise WalletExists(f"wallet {name!r} already exists at {path}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path
