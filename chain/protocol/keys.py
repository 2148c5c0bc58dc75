"""Ed25519 keys, bech32 addresses and signing under domain tags."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import bech32
import nacl.bindings
import nacl.exceptions
import nacl.signing

from chain.protocol.errors import ProtocolError

HRP = "ait"
ADDRESS_BYTES = 20

# Every signed object kind has its own tag, prepended to its canonical JSON.
DOMAIN_TX = b"aitbc/tx/v1\x00"


def domain_tag(kind: str) -> bytes:
    """The tag ``aitbc/<kind>/v1\\x00`` of a kind of signed object."""
    if not kind or not all(c.isalnum() or c in "-_" for c in kind):
        raise ValueError(f"bad domain kind {kind!r}")
    return f"aitbc/{kind}/v1".encode("ascii") + b"\x00"


@lru_cache(maxsize=65536)
def address_from_pubkey(pubkey: bytes) -> str:
    """bech32(``ait``, first 20 bytes of SHA-256(pubkey)), lowercase."""
    if len(pubkey) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    digest = hashlib.sha256(pubkey).digest()[:ADDRESS_BYTES]
    return bech32.bech32_encode(HRP, bech32.convertbits(digest, 8, 5))


@lru_cache(maxsize=65536)
def address_from_pubkey_hex(pubkey_hex: str) -> str:
    return address_from_pubkey(bytes.fromhex(pubkey_hex))


@lru_cache(maxsize=65536)
def _decode_address(address: str) -> bytes | str:
    """The 20-byte payload, or a str saying why the address is invalid."""
    if not address:
        return "empty address"
    if address != address.lower():
        return "addresses are lowercase only"
    hrp, data = bech32.bech32_decode(address)
    if hrp is None or data is None:
        return "bad bech32 encoding or checksum"
    if hrp != HRP:
        return f"human-readable part is {hrp!r}, not {HRP!r}"
    payload = bech32.convertbits(data, 5, 8, False)
    if payload is None or len(payload) != ADDRESS_BYTES:
        return f"payload is not {ADDRESS_BYTES} bytes"
    return bytes(payload)


def decode_address(address: str) -> bytes:
    """Check ``address`` and return its 20-byte payload, or raise ``invalid_address``."""
    if type(address) is not str:
        raise ProtocolError("invalid_address", "an address is a string")
    result = _decode_address(address[:200])
    if isinstance(result, str):
        raise ProtocolError("invalid_address", f"{address[:100]!r}: {result}")
    return result


def is_address(address: object) -> bool:
    return type(address) is str and not isinstance(_decode_address(address[:200]), str)


class Key:
    """An Ed25519 signing key, known by its 32-byte seed."""

    __slots__ = ("_signing", "pubkey", "address")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("a key seed is 32 bytes")
        self._signing = nacl.signing.SigningKey(seed)
        self.pubkey: bytes = bytes(self._signing.verify_key)
        self.address: str = address_from_pubkey(self.pubkey)

    @classmethod
    def generate(cls) -> Key:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    @property
    def pubkey_hex(self) -> str:
        return self.pubkey.hex()

    def sign(self, tag: bytes, message: bytes) -> bytes:
        """Sign ``tag + message``. Callers pass bytes of an object they built themselves."""
        if not tag.startswith(b"aitbc/") or not tag.endswith(b"/v1\x00"):
            raise ValueError("signing needs a protocol domain tag")
        return self._signing.sign(tag + message).signature

    def __repr__(self) -> str:
        return f"Key({self.address})"


def verify(pubkey: bytes, signed_bytes: bytes, signature: bytes) -> bool:
    """libsodium's strict Ed25519 verification of ``signature`` over ``signed_bytes``."""
    if len(pubkey) != 32 or len(signature) != 64:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + signed_bytes, pubkey)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True
