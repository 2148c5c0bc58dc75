"""The coordinator's chain key: the arbiter of every escrow that pays for jobs.

Kept as an encrypted keystore (``protocol.md``) at ``<data dir>/coordinator.keystore.json``
with its password in ``<data dir>/coordinator.password`` (both 0600), created on first
use. Creation holds an exclusive file lock so two processes starting at once end up with
one key, not one each.
"""

from __future__ import annotations

import fcntl
import secrets
import threading
from pathlib import Path

from django.conf import settings

from aitbc_site.devnet import write_secret_file
from chain.protocol.keys import Key

KEYSTORE_NAME = "coordinator.keystore.json"
PASSWORD_NAME = "coordinator.password"
_LOCK_NAME = "coordinator.key.lock"

_cache: dict[str, Key] = {}
_cache_lock = threading.Lock()


def keystore_path(data_dir: Path | None = None) -> Path:
    return Path(data_dir or settings.DATA_DIR) / KEYSTORE_NAME


def password_path(data_dir: Path | None = None) -> Path:
    return Path(data_dir or settings.DATA_DIR) / PASSWORD_NAME


def _load_or_create(data_dir: Path) -> Key:
    from wallet.keystore import decrypt_keystore, encrypt_key, keystore_json

    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / _LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keystore, password = keystore_path(data_dir), password_path(data_dir)
        if not keystore.exists():
            key = Key.generate()
            secret = secrets.token_urlsafe(24)
            # The password first: a keystore without its password would be a key lost.
            write_secret_file(password, secret + "\n")
            write_secret_file(keystore, keystore_json(encrypt_key(key, secret)))
            return key
        return decrypt_keystore(keystore.read_text(encoding="utf-8"), password.read_text(encoding="utf-8").strip())


def coordinator_key() -> Key:
    """The coordinator's key for this data directory, created on first use and cached."""
    data_dir = Path(settings.DATA_DIR)
    name = str(data_dir.resolve())
    with _cache_lock:
        key = _cache.get(name)
        if key is None:
            key = _cache[name] = _load_or_create(data_dir)
        return key


def coordinator_address() -> str:
    return coordinator_key().address
