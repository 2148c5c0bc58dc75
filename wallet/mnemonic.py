"""BIP-39 mnemonic backups and SLIP-0010 ed25519 derivation (``protocol.md``, no Django).

A mnemonic (English list, 24 words by default, optional passphrase) gives a 64-byte
BIP-39 seed; SLIP-0010 derives the key's 32-byte seed along ``m/44'/7337'/0'/0'``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import unicodedata
from functools import lru_cache

from mnemonic import Mnemonic

from chain.protocol.keys import Key
from wallet.errors import InvalidMnemonic

DERIVATION_PATH = "m/44'/7337'/0'/0'"
WORD_COUNTS = (12, 15, 18, 21, 24)
DEFAULT_WORDS = 24
HARDENED = 0x80000000
_SLIP10_CURVE_KEY = b"ed25519 seed"


@lru_cache(maxsize=1)
def _english() -> Mnemonic:
    return Mnemonic("english")


@lru_cache(maxsize=1)
def _wordset() -> frozenset[str]:
    return frozenset(_english().wordlist)


def generate_mnemonic(words: int = DEFAULT_WORDS) -> str:
    """A new random mnemonic of ``words`` English words (entropy from the OS)."""
    if words not in WORD_COUNTS:
        raise ValueError(f"a mnemonic has {', '.join(map(str, WORD_COUNTS))} words")
    return _english().generate(strength=words * 32 // 3)


def normalize_mnemonic(text: str) -> str:
    """The mnemonic as BIP-39 reads it: NFKD, lowercase, words separated by single spaces."""
    return " ".join(unicodedata.normalize("NFKD", text).lower().split())


def validate_mnemonic(text: str) -> str:
    """Check word count, words and checksum; return the normalized mnemonic.

    Raises ``InvalidMnemonic`` giving the position (counting from 1) of the first
    unknown word, never the word: a misspelt word still tells much of the real one,
    and the message reaches pages, API answers and logs. Or saying the checksum is bad.
    """
    phrase = normalize_mnemonic(text)
    words = phrase.split()
    if len(words) not in WORD_COUNTS:
        raise InvalidMnemonic(f"a mnemonic has {', '.join(map(str, WORD_COUNTS))} words, got {len(words)}")
    known = _wordset()
    for position, word in enumerate(words, start=1):
        if word not in known:
            raise InvalidMnemonic(f"word {position} is not in the BIP-39 English word list")
    if not _english().check(phrase):
        raise InvalidMnemonic("bad checksum: the words are valid but do not form a valid mnemonic")
    return phrase


def mnemonic_to_seed(text: str, passphrase: str = "") -> bytes:
    """The 64-byte BIP-39 seed of a valid mnemonic and optional passphrase."""
    return Mnemonic.to_seed(validate_mnemonic(text), passphrase)


def slip10_ed25519(seed: bytes, path: str = DERIVATION_PATH) -> bytes:
    """SLIP-0010 ed25519 derivation of ``seed`` along ``path``: the child's 32-byte key."""
    digest = hmac.new(_SLIP10_CURVE_KEY, seed, hashlib.sha512).digest()
    key, chain_code = digest[:32], digest[32:]
    for index in _parse_path(path):
        data = b"\x00" + key + struct.pack(">I", index)
        digest = hmac.new(chain_code, data, hashlib.sha512).digest()
        key, chain_code = digest[:32], digest[32:]
    return key


def _parse_path(path: str) -> list[int]:
    parts = path.split("/")
    if parts[0] != "m":
        raise ValueError(f"a derivation path starts with m/: {path!r}")
    indexes = []
    for part in parts[1:]:
        # ed25519 has only hardened derivation (SLIP-0010).
        if not part.endswith("'") or not part[:-1].isdigit() or int(part[:-1]) >= HARDENED:
            raise ValueError(f"ed25519 derivation paths are all hardened: {part!r} in {path!r}")
        indexes.append(int(part[:-1]) | HARDENED)
    return indexes


def key_from_mnemonic(text: str, passphrase: str = "", path: str = DERIVATION_PATH) -> Key:
    """The wallet key a mnemonic (and passphrase) backs up."""
    return Key(slip10_ed25519(mnemonic_to_seed(text, passphrase), path))
