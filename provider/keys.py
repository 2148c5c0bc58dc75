"""The provider's chain key: its identity towards the coordinator and where it is paid."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from aitbc_site.devnet import write_secret_file
from aitbc_site.env import env_raw
from chain.protocol.keys import Key
from wallet.keystore import decrypt_keystore, encrypt_key, keystore_json

logger = logging.getLogger("aitbc.provider")

DEFAULT_KEYSTORE_NAME = "provider.keystore.json"
DEFAULT_PASSWORD_NAME = "provider.password"


class KeyLoadError(Exception):
    """The provider's key cannot be loaded; the message says which file and why."""


def read_password_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError as exc:
        raise KeyLoadError(f"cannot read password file {path}: {exc.strerror}") from exc


def load_or_create_key(data_dir: Path, keystore: Path | None = None, password_file: Path | None = None) -> Key:
    """The key in ``keystore`` (given), else the data directory's provider key, made on first use.

    A given keystore takes its password from ``password_file`` or ``AITBC_WALLET_PASSWORD``
    (or ``AITBC_WALLET_PASSWORD_FILE``). The default keystore's password lives next to it
    in ``provider.password``; both are written 0600, the password first, so a crash between
    the two writes leaves a password without a keystore (harmless) rather than the reverse.
    """
    if keystore is None:
        keystore = data_dir / DEFAULT_KEYSTORE_NAME
        default_password = data_dir / DEFAULT_PASSWORD_NAME
        password_file = password_file or default_password
        if not keystore.exists():
            if password_file.exists():
                password = read_password_file(password_file)
            else:
                password = secrets.token_urlsafe(24)
                write_secret_file(password_file, password + "\n")
            key = Key.generate()
            write_secret_file(keystore, keystore_json(encrypt_key(key, password)))
            logger.info("created provider key %s in %s", key.address, keystore)
            return key
    if password_file is not None:
        password = read_password_file(password_file)
    else:
        env_password = env_raw("AITBC_WALLET_PASSWORD")
        if env_password is None:
            raise KeyLoadError(f"{keystore}: give --password-file or AITBC_WALLET_PASSWORD")
        password = env_password
    try:
        text = keystore.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyLoadError(f"cannot read keystore {keystore}: {exc.strerror}") from exc
    try:
        return decrypt_keystore(text, password)
    except Exception as exc:  # keystore errors of every kind end the same way: a message and exit
        raise KeyLoadError(f"keystore {keystore}: {exc}") from exc
