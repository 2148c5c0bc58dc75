"""The one place the wallet gets its chain client from.

Tests point it at a node with ``AITBC_NODE_URL`` or replace ``get_chain_client``.
"""

from __future__ import annotations

import threading

from django.conf import settings

from chain.client import ChainUnavailable, HttpChainClient, default_node_url

_clients: dict[str, HttpChainClient] = {}
_clients_lock = threading.Lock()


def node_url(override: str | None = None) -> str:
    """``override``, else ``AITBC_NODE_URL``, else the running devnet's first node."""
    url = (override or "").strip().rstrip("/") or default_node_url(settings.DATA_DIR)
    if not url:
        raise ChainUnavailable(
            "no chain node configured: pass --node URL, set AITBC_NODE_URL, or start the devnet "
            "(python manage.py devnet)"
        )
    if not url.startswith(("http://", "https://")):
        raise ChainUnavailable(f"node URL {url!r} is not an http:// or https:// URL")
    return url


def get_chain_client(node: str | None = None) -> HttpChainClient:
    """A client for the configured node; one keep-alive session per node URL."""
    url = node_url(node)
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = HttpChainClient(url)
        return client
