"""Keystore files: a key seed encrypted under a password (``protocol.md``, no Django).

The key is ``argon2id.kdf(32, password, salt, opslimit, memlimit)``; the cipher is
``SecretBox`` (XSalsa20-Poly1305). Reading checks every field and the KDF bounds
*before* deriving anything, so a hostile file cannot make us burn CPU or memory.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.secret
import nacl.utils
from nacl.pwhash import argon2id

from chain.protocol.encoding import is_hex, is_int, parse_strict
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key
from wallet.errors import (
    AddressMismatch,
    KeystoreMalformed,
    KeystoreUnsupported,
    WeakPassword,
    WrongPasswordOrCorrupted,
)

VERSION = 1
KDF_NAME = "argon2id"
CIPHER_NAME = "xsalsa20-poly1305"
SEED_BYTES = 32
SALT_BYTES = argon2id.SALTBYTES  # 16
NONCE_BYTES = nacl.secret.SecretBox.NONCE_SIZE  # 24
CIPHERTEXT_BYTES = SEED_BYTES + nacl.secret.SecretBox.MACBYTES  # 48
MiB = 1024 * 1024

# Bounds on files read (protocol.md): above them a file could stall or exhaust
# the machine; below libsodium's minimums the kdf call would fail anyway.
READ_OPSLIMIT_MIN = argon2id.OPSLIMIT_MIN
READ_OPSLIMIT_MAX = 16
READ_MEMLIMIT_MIN = argon2id.MEMLIMIT_MIN
READ_MEMLIMIT_MAX = 1024 * MiB

# The floor for files written (protocol.md: "at least").
WRITE_OPSLIMIT_MIN = 3
WRITE_MEMLIMIT_MIN = 256 * MiB

# A wallet's own password policy, not part of the file format.
MIN_PASSWORD_LENGTH = 8

_FIELDS = frozenset({"version", "address", "pubkey", "kdf", "cipher"})
_KDF_FIELDS = frozenset({"name", "opslimit", "memlimit", "salt"})
_CIPHER_FIELDS = frozenset({"name", "nonce", "ciphertext"})


@dataclass(frozen=True, slots=True)
class KdfParams:
    opslimit: int
    memlimit: int

    @property
    def meets_write_floor(self) -> bool:
        return self.opslimit >= WRITE_OPSLIMIT_MIN and self.memlimit >= WRITE_MEMLIMIT_MIN


# What new files use. Tests and benchmarks override this module attribute to
# make derivations fast; nothing else should.
WRITE_PARAMS = KdfParams(opslimit=WRITE_OPSLIMIT_MIN, memlimit=WRITE_MEMLIMIT_MIN)

# Each derivation holds ``memlimit`` bytes for up to a second: cap how many run at
# once in this process so a burst of sign or unlock requests cannot exhaust memory.
_KDF_SLOTS = threading.BoundedSemaphore(2)


@dataclass(frozen=True, slots=True)
class Keystore:
    """A keystore whose fields were checked; nothing has been decrypted yet."""

    address: str
    pubkey: str
    params: KdfParams
    salt: bytes
    nonce: bytes
    ciphertext: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "address": self.address,
            "pubkey": self.pubkey,
            "kdf": {
                "name": KDF_NAME,
                "opslimit": self.params.opslimit,
                "memlimit": self.params.memlimit,
                "salt": self.salt.hex(),
            },
            "cipher": {"name": CIPHER_NAME, "nonce": self.nonce.hex(), "ciphertext": self.ciphertext.hex()},
        }


def _password_bytes(password: str | bytes) -> bytes:
    # Passwords are used exactly as given (no normalization), encoded as UTF-8.
    return password if isinstance(password, bytes) else password.encode("utf-8")


def _derive(password: str | bytes, salt: bytes, params: KdfParams) -> bytes:
    with _KDF_SLOTS:
        return argon2id.kdf(SEED_BYTES, _password_bytes(password), salt, params.opslimit, params.memlimit)


def check_new_password(password: str | bytes) -> None:
    """Refuse a password too short to protect a new keystore."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")


def parse_keystore(data: dict[str, Any] | str | bytes) -> Keystore:
    """Check every field of a keystore (its JSON text or parsed object) without deriving anything.

    Raises ``KeystoreUnsupported`` for an unknown version, kdf or cipher, or KDF
    parameters out of bounds, and ``KeystoreMalformed`` for anything that is not a
    keystore at all.
    """
    if isinstance(data, str | bytes):
        try:
            data = parse_strict(data)
        except ProtocolError as exc:
            raise KeystoreMalformed(f"not a keystore file: {exc.message}") from None
    if not isinstance(data, dict):
        raise KeystoreMalformed("not a keystore file: a keystore is a JSON object")
    # The version decides how to read the rest, so it is checked first.
    version = data.get("version")
    if not is_int(version):
        raise KeystoreMalformed("not a keystore file: version must be an integer")
    if version != VERSION:
        raise KeystoreUnsupported(f"keystore version {version} is not supported (only {VERSION})")
    _exact_fields(data, _FIELDS, "keystore")
    kdf, cipher = data["kdf"], data["cipher"]
    if not isinstance(kdf, dict) or not isinstance(cipher, dict):
        raise KeystoreMalformed("not a keystore file: kdf and cipher must be JSON objects")
    if kdf.get("name") != KDF_NAME:
        raise KeystoreUnsupported(f"kdf {kdf.get('name')!r} is not supported (only {KDF_NAME})")
    if cipher.get("name") != CIPHER_NAME:
        raise KeystoreUnsupported(f"cipher {cipher.get('name')!r} is not supported (only {CIPHER_NAME})")
    _exact_fields(kdf, _KDF_FIELDS, "kdf")
    _exact_fields(cipher, _CIPHER_FIELDS, "cipher")
    opslimit, memlimit = kdf["opslimit"], kdf["memlimit"]
    if not is_int(opslimit) or not is_int(memlimit):
        raise KeystoreMalformed("not a keystore file: kdf opslimit and memlimit must be integers")
    if not READ_OPSLIMIT_MIN <= opslimit <= READ_OPSLIMIT_MAX:
        raise KeystoreUnsupported(
            f"kdf opslimit {opslimit} is outside [{READ_OPSLIMIT_MIN}, {READ_OPSLIMIT_MAX}]; refused before deriving"
        )
    if not READ_MEMLIMIT_MIN <= memlimit <= READ_MEMLIMIT_MAX:
        raise KeystoreUnsupported(
            f"kdf memlimit {memlimit} is outside [{READ_MEMLIMIT_MIN}, {READ_MEMLIMIT_MAX}]; refused before deriving"
        )
    for where, name, size in (
        (kdf, "salt", SALT_BYTES),
        (cipher, "nonce", NONCE_BYTES),
        (cipher, "ciphertext", CIPHERTEXT_BYTES),
    ):
        if not is_hex(where[name], size):
            raise KeystoreMalformed(f"not a keystore file: {name} must be {size} bytes of lowercase hex")
    if type(data["address"]) is not str:
        raise KeystoreMalformed("not a keystore file: address must be a string")
    if not is_hex(data["pubkey"], 32):
        raise KeystoreMalformed("not a keystore file: pubkey must be 32 bytes of lowercase hex")
    return Keystore(
        address=data["address"],
        pubkey=data["pubkey"],
        params=KdfParams(opslimit, memlimit),
        salt=bytes.fromhex(kdf["salt"]),
        nonce=bytes.fromhex(cipher["nonce"]),
        ciphertext=bytes.fromhex(cipher["ciphertext"]),
    )


def _exact_fields(obj: dict[str, Any], expected: frozenset[str], what: str) -> None:
    if obj.keys() != expected:
        parts = []
        if missing := sorted(expected - obj.keys()):
            parts.append(f"missing {', '.join(missing)}")
        if extra := sorted(obj.keys() - expected):
            parts.append(f"unknown {', '.join(extra)}")
        detail = "; ".join(parts)
        raise KeystoreMalformed(f"not a keystore file: {what} fields: {detail}")


def decrypt_keystore(data: dict[str, Any] | str | bytes | Keystore, password: str | bytes) -> Key:
    """The key a keystore holds.

    Raises ``KeystoreUnsupported``/``KeystoreMalformed`` (before deriving),
    ``WrongPasswordOrCorrupted`` (the MAC fails) or ``AddressMismatch`` (the key
    does not give the file's address and pubkey).
    """
    keystore = data if isinstance(data, Keystore) else parse_keystore(data)
    secret = _derive(password, keystore.salt, keystore.params)
    try:
        seed = nacl.secret.SecretBox(secret).decrypt(keystore.ciphertext, keystore.nonce)
    except nacl.exceptions.CryptoError:
        raise WrongPasswordOrCorrupted("wrong password, or the keystore file is corrupted") from None
    key = Key(seed)
    if key.address != keystore.address or key.pubkey_hex != keystore.pubkey:
        raise AddressMismatch(
            f"the keystore's key gives address {key.address}, but the file says {keystore.address}: the file was edited"
        )
    return key


def encrypt_seed(
    seed: bytes,
    password: str | bytes,
    *,
    params: KdfParams | None = None,
    salt: bytes | None = None,
    nonce: bytes | None = None,
    allow_weak_kdf: bool = False,
) -> dict[str, Any]:
    """A keystore (as a dict) holding ``seed`` under ``password``.

    ``params`` defaults to ``WRITE_PARAMS``. Explicit ``params`` below the write
    floor (opslimit 3, 256 MiB) need ``allow_weak_kdf=True``: that is for test
    vectors and benchmarks only. ``salt`` and ``nonce`` are random unless given
    (again, for reproducing vectors).
    """
    if len(seed) != SEED_BYTES:
        raise ValueError("a key seed is 32 bytes")
    if params is None:
        params = WRITE_PARAMS
    elif not params.meets_write_floor and not allow_weak_kdf:
        raise ValueError(
            f"keystores are written with opslimit >= {WRITE_OPSLIMIT_MIN} and memlimit >= {WRITE_MEMLIMIT_MIN}; "
            f"got {params.opslimit}, {params.memlimit} (allow_weak_kdf is for tests and benchmarks only)"
        )
    if not (
        READ_OPSLIMIT_MIN <= params.opslimit <= READ_OPSLIMIT_MAX
        and READ_MEMLIMIT_MIN <= params.memlimit <= READ_MEMLIMIT_MAX
    ):
        raise ValueError("KDF parameters outside what any reader accepts")
    salt = nacl.utils.random(SALT_BYTES) if salt is None else salt
    nonce = nacl.utils.random(NONCE_BYTES) if nonce is None else nonce
    if len(salt) != SALT_BYTES or len(nonce) != NONCE_BYTES:
        raise ValueError(f"salt is {SALT_BYTES} bytes and nonce {NONCE_BYTES} bytes")
    key = Key(seed)
    secret = _derive(password, salt, params)
    # encrypt() returns nonce + ciphertext; the file keeps them apart.
    ciphertext = nacl.secret.SecretBox(secret).encrypt(seed, nonce).ciphertext
    return Keystore(
        address=key.address, pubkey=key.pubkey_hex, params=params, salt=salt, nonce=nonce, ciphertext=ciphertext
    ).to_dict()


def encrypt_key(key: Key, password: str | bytes, **kwargs: Any) -> dict[str, Any]:
    """``encrypt_seed`` for a ``Key``."""
    return encrypt_seed(key.seed, password, **kwargs)


def keystore_json(keystore: dict[str, Any]) -> str:
    """The text written to a keystore file: indented for people, one trailing newline."""
    return json.dumps(keystore, indent=2, ensure_ascii=False) + "\n"
