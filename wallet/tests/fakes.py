"""A TEST DOUBLE of a chain node's client, for unit tests of the wallet's service layer only.

Everything above the service layer (the CLI, the REST API) is tested against a
real node process (``live_node``). This double holds to the same contract where
the services depend on it: it runs the protocol's own stateless checks on what
it is given and answers with ``ProtocolError`` codes like a node.
"""

from __future__ import annotations

from typing import Any

from chain.protocol.errors import ProtocolError
from chain.protocol.tx import check_transaction


class FakeChainClient:
    """Implements ``chain.client.ChainClient``: a ledger of balances and nonces, no blocks."""

    def __init__(self, *, chain_id: str = "aitbc-fake-1", min_fee: int = 1000) -> None:
        self.chain_id = chain_id
        self.min_fee = min_fee
        self.accounts: dict[str, dict[str, int]] = {}
        self.submitted: list[dict[str, Any]] = []
        self.fail_next: ProtocolError | None = None
        self.calls: list[str] = []

    def fund(self, address: str, amount: int, nonce: int = 0) -> None:
        self.accounts[address] = {"balance": amount, "nonce": nonce}

    def status(self) -> dict[str, Any]:
        self.calls.append("status")
        return {
            "chain_id": self.chain_id,
            "height": 1,
            "params": {"block_time_ms": 1000, "min_fee": self.min_fee, "max_block_txs": 5000, "min_escrow_blocks": 10},
            "mempool_size": len(self.submitted),
        }

    def account(self, address: str) -> dict[str, Any]:
        self.calls.append("account")
        return {"address": address, **self.accounts.get(address, {"balance": 0, "nonce": 0})}

    def submit(self, tx: dict[str, Any]) -> str:
        self.calls.append("submit")
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        checked = check_transaction(tx, chain_id=self.chain_id, min_fee=self.min_fee)
        account = self.accounts.get(checked.sender, {"balance": 0, "nonce": 0})
        if checked.nonce != account["nonce"]:
            raise ProtocolError("bad_nonce", f"nonce {checked.nonce}, account nonce {account['nonce']}")
        if checked.spend > account["balance"]:
            raise ProtocolError("insufficient_funds", "balance cannot cover fee plus amount")
        self.submitted.append(tx)
        return checked.id

    def submit_batch(self, txs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def transaction(self, tx_id: str) -> dict[str, Any]:
        raise ProtocolError("not_found", tx_id)

    def escrow(self, escrow_id: str) -> dict[str, Any]:
        raise ProtocolError("escrow_not_found", escrow_id)

    def blocks(self, start: int, limit: int) -> list[dict[str, Any]]:
        return []
