"""The one place the coordinator gets its chain client from.

Everything on the chain goes through ``get_chain_client()``: an ``HttpChainClient`` for
``AITBC_NODE_URL`` (or a running devnet's first node). Tests replace this function to run
the coordinator against the ledger in the test database or a node process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chain.client import ChainClient, ChainUnavailable, HttpChainClient, default_node_url
from marketplace import conf

_clients: dict[str, HttpChainClient] = {}
_lock = threading.Lock()


def node_url() -> str:
    url = default_node_url(settings.DATA_DIR)
    if not url:
        raise ChainUnavailable("no chain node configured: set AITBC_NODE_URL or start the devnet")
    return url


def get_chain_client() -> ChainClient:
    """A client for the configured node; one keep-alive session per node URL."""
    url = node_url()
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = HttpChainClient(url)
        return client


@dataclass(frozen=True)
class ChainView:
    """What the coordinator needs to know of the chain at a moment."""

    chain_id: str
    height: int
    min_fee: int
    min_escrow_blocks: int
    block_time_ms: int

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> ChainView:
        params = status["params"]
        return cls(
            chain_id=status["chain_id"],
            height=int(status["height"]),
            min_fee=int(params["min_fee"]),
            min_escrow_blocks=int(params["min_escrow_blocks"]),
            block_time_ms=int(params["block_time_ms"]),
        )


_status: dict[int, tuple[ChainClient, float, ChainView]] = {}


def chain_view(client: ChainClient | None = None, *, max_age: float | None = None) -> ChainView:
    """The node's status, reused for ``conf.STATUS_MAX_AGE_S`` so a burst of jobs asks once."""
    client = client or get_chain_client()
    max_age = conf.STATUS_MAX_AGE_S if max_age is None else max_age
    now = time.monotonic()
    cached = _status.get(id(client))
    if cached is not None and cached[0] is client and now - cached[1] <= max_age:
        return cached[2]
    view = ChainView.from_status(client.status())
    _status[id(client)] = (client, now, view)
    return view


def blocks_for(seconds: float, view: ChainView) -> int:
    """How many blocks pass in ``seconds`` at the chain's block time (rounded up)."""
    return -(-int(seconds * 1000) // max(1, view.block_time_ms))


def required_escrow_blocks(view: ChainView) -> int:
    """How far past the current height a job's escrow must time out.

    It must outlive the job (its time to live) and leave time for the pay and the
    refund to commit, so a client can never take the money back from under a
    provider that did the work.
    """
    return max(view.min_escrow_blocks, blocks_for(conf.JOB_TTL_S + conf.SETTLE_MARGIN_S, view))
