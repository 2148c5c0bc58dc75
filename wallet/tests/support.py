"""Shared helpers of the wallet's tests (no Django import)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from chain.protocol.keys import Key
from wallet import keystore
from wallet.keystore import KdfParams

# A byte-for-byte copy of shared/protocol/vectors.json: the contract's test vectors.
VECTORS_PATH = Path(__file__).resolve().parent / "vectors.json"

# libsodium's minimums: derivations take microseconds, for tests that are not about the KDF.
FAST_KDF = KdfParams(opslimit=1, memlimit=8192)

# The module's default, captured at import, before any fixture overrides it.
DEFAULT_WRITE_PARAMS = keystore.WRITE_PARAMS


@cache
def _vectors_text() -> str:
    return VECTORS_PATH.read_text(encoding="utf-8")


def vectors() -> dict[str, Any]:
    """A fresh copy of the vectors each call, so a test may alter what it gets."""
    return json.loads(_vectors_text())


def vector_key() -> Key:
    """The key of the keystore vector (and the first address vector)."""
    return Key(bytes.fromhex(vectors()["keystores"][0]["seed"]))


def unsigned(tx: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tx.items() if k != "signature"}
