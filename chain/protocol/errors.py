"""Protocol error codes and their HTTP statuses (``protocol.md``, RPC)."""

from __future__ import annotations

HTTP_STATUS: dict[str, int] = {
    "malformed": 400,
    "invalid_address": 400,
    "wrong_chain": 400,
    "bad_signature": 400,
    "fee_too_low": 400,
    "bad_nonce": 409,
    "duplicate": 409,
    "insufficient_funds": 409,
    "escrow_not_found": 404,
    "escrow_closed": 409,
    "not_arbiter": 403,
    "exceeds_escrow": 409,
    "timeout_too_short": 400,
    "not_found": 404,
    "mempool_full": 503,
    "rate_limited": 429,
    # Added by this project for its own transaction types (docs/protocol.md).
    "not_validator": 403,
}


class ProtocolError(Exception):
    """A rule of the protocol was broken; ``code`` is one of ``HTTP_STATUS``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown protocol error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):
        # Rebuilt from its code and message when it crosses a process boundary (pickle).
        return (type(self), (self.code, self.message))

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message}
