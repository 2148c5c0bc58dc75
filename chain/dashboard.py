"""The dashboard's reads of the chain, from the node over HTTP.

The web process is not a node: its own chain tables are empty. Every figure the
dashboard shows about the chain comes from the node at ``AITBC_NODE_URL`` (else the
devnet's first node), through one keep-alive client with a short timeout, cached a
moment so many open pages cost the node one request per figure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache

from chain.client import ChainUnavailable, HttpChainClient, default_node_url
from chain.protocol.errors import ProtocolError

T = TypeVar("T")

TIMEOUT_S = 3.0
# One block time or so: a page refreshed on each block sees the new one.
STATUS_TTL_S = 0.5
STATS_TTL_S = 5.0

_clients: dict[str, ExplorerClient] = {}
_lock = threading.Lock()


class NodeUnavailable(Exception):
    """No node is configured, or it cannot be reached."""


class ExplorerClient(HttpChainClient):
    """The node's RPC plus its explorer reads (``chain.explorer_api``)."""

    def recent_transactions(self, limit: int = 25, *, pending: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if pending:
            params["status"] = "pending"
        return self._request("GET", "/v1/chain/explorer/transactions", params=params)["transactions"]

    def account_transactions(self, address: str, limit: int = 50) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/chain/explorer/accounts/{address}/transactions", params={"limit": limit})[
            "transactions"
        ]

    def escrow_list(self, *, payer: str = "", job_id: str = "", limit: int = 50) -> list[dict[str, Any]]:
        params = {"limit": limit, "payer": payer, "job_id": job_id}
        return self._request("GET", "/v1/chain/explorer/escrows", params=params)["escrows"]

    def stats(self, *, window: int = 3600, bucket: int = 60) -> dict[str, Any]:
        return self._request("GET", "/v1/chain/explorer/stats", params={"window": window, "bucket": bucket})

    def search(self, query: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", "/v1/chain/explorer/search", params={"q": query})
        except ProtocolError as exc:
            if exc.code == "not_found":
                return None
            raise

    def blocks_full(self, start: int, limit: int) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/chain/blocks", params={"from": start, "limit": limit, "full": 1})["blocks"]


def node_url() -> str | None:
    return default_node_url(settings.DATA_DIR)


def client() -> ExplorerClient:
    url = node_url()
    if not url:
        raise NodeUnavailable("no chain node is configured (AITBC_NODE_URL, or a devnet's network.json)")
    with _lock:
        found = _clients.get(url)
        if found is None:
            found = _clients[url] = ExplorerClient(url, timeout=TIMEOUT_S)
        return found


def call(fn: Callable[[ExplorerClient], T]) -> T:
    """``fn(client)``, with an unreachable node as ``NodeUnavailable``."""
    try:
        return fn(client())
    except ChainUnavailable as exc:
        raise NodeUnavailable(str(exc)) from exc


def cached(key: str, ttl: float, fn: Callable[[ExplorerClient], T]) -> T:
    value = cache.get(f"chain-dashboard:{key}")
    if value is None:
        value = call(fn)
        cache.set(f"chain-dashboard:{key}", value, ttl)
    return value


def status() -> dict[str, Any]:
    return cached("status", STATUS_TTL_S, lambda c: c.status())


def stats() -> dict[str, Any]:
    return cached("stats", STATS_TTL_S, lambda c: c.stats())
