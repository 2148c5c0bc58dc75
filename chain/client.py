"""One interface to a chain node, over its RPC or in-process.

The marketplace, the wallet and the CLI talk to the chain only through a
``ChainClient``. ``HttpChainClient`` speaks the node's RPC (``protocol.md``);
an in-process client with the same methods serves code running inside a node.
Errors come back as ``ProtocolError`` with the node's code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import requests

from chain.protocol.errors import HTTP_STATUS, ProtocolError


class ChainUnavailable(Exception):
    """The node could not be reached or answered outside the protocol."""


class ChainClient(Protocol):
    def status(self) -> dict[str, Any]: ...
    def account(self, address: str) -> dict[str, Any]: ...
    def submit(self, tx: dict[str, Any]) -> str: ...
    def submit_batch(self, txs: list[dict[str, Any]]) -> list[dict[str, Any]]: ...
    def transaction(self, tx_id: str) -> dict[str, Any]: ...
    def escrow(self, escrow_id: str) -> dict[str, Any]: ...
    def blocks(self, start: int, limit: int) -> list[dict[str, Any]]: ...


class HttpChainClient:
    """A node's RPC over HTTP, with one keep-alive session."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ChainUnavailable(f"node at {self.base_url} unreachable: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            raise ChainUnavailable(f"node answered {response.status_code} without JSON") from None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and error.get("code") in HTTP_STATUS:
                raise ProtocolError(error["code"], str(error.get("message", "")))
            raise ChainUnavailable(f"node answered {response.status_code}: {body}")
        return body

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status")

    def account(self, address: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/chain/accounts/{address}")

    def submit(self, tx: dict[str, Any]) -> str:
        body = json.dumps(tx, ensure_ascii=False).encode("utf-8")
        return self._request("POST", "/v1/chain/transactions", data=body, headers={"Content-Type": "application/json"})[
            "id"
        ]

    def submit_batch(self, txs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = json.dumps(txs, ensure_ascii=False).encode("utf-8")
        return self._request(
            "POST", "/v1/chain/transactions/batch", data=body, headers={"Content-Type": "application/json"}
        )

    def transaction(self, tx_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/chain/transactions/{tx_id}")

    def escrow(self, escrow_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/chain/escrows/{escrow_id}")

    def blocks(self, start: int, limit: int) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/chain/blocks", params={"from": start, "limit": limit})["blocks"]

    def block(self, height: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/chain/blocks/{height}")


def default_node_url(data_dir: Path) -> str | None:
    """``AITBC_NODE_URL``, else the first node of a running devnet's ``network.json``."""
    url = os.environ.get("AITBC_NODE_URL")
    if url:
        return url.rstrip("/")
    network = data_dir / "devnet" / "network.json"
    try:
        nodes = json.loads(network.read_text(encoding="utf-8")).get("nodes") or []
    except (OSError, ValueError):
        return None
    return nodes[0]["rpc_url"] if nodes else None
