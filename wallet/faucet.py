"""The devnet's faucet: a few AIT for a logged-in user, from the devnet's funded faucet wallet.

The faucet is configured when its keystore and password files exist (by default the
devnet's ``<data dir>/devnet/faucet.keystore.json`` and ``faucet.password``; elsewhere
``AITBC_FAUCET_KEYSTORE`` and ``AITBC_FAUCET_PASSWORD_FILE``). Grants are limited per
user per hour. The key is decrypted once per process; its nonces are handed out here
under a lock, so concurrent grants do not collide on one nonce.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from aitbc_site import throttling
from chain.client import ChainClient
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key, decode_address
from wallet import chain
from wallet.errors import WalletError
from wallet.keystore import decrypt_keystore
from wallet.signing import build_transfer

NONCE_RETRIES = 5


class FaucetNotConfigured(WalletError):
    code = "not_found"


class FaucetThrottled(WalletError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class FaucetConfig:
    keystore: Path
    password_file: Path
    amount: int
    per_hour: int


@dataclass(frozen=True)
class Grant:
    id: str
    to: str
    amount: int


def faucet_config() -> FaucetConfig | None:
    keystore = Path(settings.FAUCET_KEYSTORE)
    password_file = Path(settings.FAUCET_PASSWORD_FILE)
    if not keystore.is_file() or not password_file.is_file():
        return None
    return FaucetConfig(keystore, password_file, settings.FAUCET_AMOUNT, settings.FAUCET_PER_HOUR)


class _Faucet:
    """The faucet key and its next nonce, one per process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.source: tuple[str, float] | None = None
        self.key: Key | None = None
        self.next_nonce: int | None = None

    @sensitive_variables("password")
    def key_for(self, config: FaucetConfig) -> Key:
        source = (str(config.keystore), config.keystore.stat().st_mtime)
        if self.key is None or self.source != source:
            password = config.password_file.read_text(encoding="utf-8").rstrip("\n")
            self.key = decrypt_keystore(config.keystore.read_text(encoding="utf-8"), password)
            self.source = source
            self.next_nonce = None
        return self.key


_faucet = _Faucet()


def _throttle(user_id: int, per_hour: int) -> None:
    try:
        throttling.take(
            scope="faucet",
            caller=f"user:{user_id}",
            rate=throttling.Rate(per_hour, 3600),
            what="faucet grants for one user",
        )
    except throttling.RateLimited as exc:
        raise FaucetThrottled(exc.message, int(exc.headers["Retry-After"])) from None


def faucet_send(*, user_id: int, to: str, client: ChainClient | None = None) -> Grant:
    """Send the faucet's amount to ``to``; the transaction's id once the node admitted it."""
    config = faucet_config()
    if config is None:
        raise FaucetNotConfigured("no faucet is configured on this network")
    decode_address(to)
    _throttle(user_id, config.per_hour)
    client = client or chain.get_chain_client()
    with _faucet.lock:
        key = _faucet.key_for(config)
        for _attempt in range(NONCE_RETRIES):
            if _faucet.next_nonce is None:
                _faucet.next_nonce = int(client.account(key.address)["nonce"])
            nonce = _faucet.next_nonce
            tx = build_transfer(client, key, to=to, amount=config.amount, nonce=nonce, memo="faucet")
            try:
                tx_id = client.submit(tx)
            except ProtocolError as exc:
                if exc.code == "duplicate":
                    # Another sender of this key (the CLI, another process) holds this nonce.
                    _faucet.next_nonce = nonce + 1
                    continue
                if exc.code == "bad_nonce":
                    _faucet.next_nonce = None
                    continue
                raise
            _faucet.next_nonce = nonce + 1
            return Grant(id=tx_id, to=to, amount=config.amount)
    raise ProtocolError("bad_nonce", "the faucet could not find a free nonce; try again")
