"""The wallet's errors: one hierarchy, each failure its own class (no Django).

``protocol.md`` asks for distinct keystore errors: unsupported, wrong password or
corrupted (indistinguishable: the MAC fails either way), and address mismatch.
Invalid addresses are the protocol's own ``ProtocolError("invalid_address")``.
"""

from __future__ import annotations


class WalletError(Exception):
    """Base of every wallet failure; ``code`` is the stable name APIs report."""

    code = "wallet_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KeystoreUnsupported(WalletError):
    """Unknown version, kdf or cipher, or KDF parameters out of bounds: refused before any derivation."""

    code = "unsupported_keystore"


class KeystoreMalformed(KeystoreUnsupported):
    """Not a keystore file at all (not JSON, missing or mistyped fields).

    A subclass of ``KeystoreUnsupported``: callers that only care whether the
    file can be used treat both the same, the message says which.
    """


class WrongPasswordOrCorrupted(WalletError):
    """The ciphertext's MAC does not verify: a wrong password or an altered file."""

    code = "wrong_password"


class AddressMismatch(WalletError):
    """The decrypted key does not give the file's ``address`` and ``pubkey``: the file was edited."""

    code = "address_mismatch"


class InvalidMnemonic(WalletError):
    """Wrong word count, a word not in the BIP-39 English list, or a bad checksum."""

    code = "invalid_mnemonic"


class WeakPassword(WalletError):
    """A new keystore's password is below the minimum length."""

    code = "weak_password"


class InvalidWalletName(WalletError):
    code = "invalid_name"


class WalletNotFound(WalletError):
    code = "wallet_not_found"


class WalletExists(WalletError):
    """A wallet with that name (or holding that address) already exists."""

    code = "wallet_exists"
