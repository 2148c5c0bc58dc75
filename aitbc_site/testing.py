"""Test support for the dashboard: the node's RPC served in-process.

The dashboard reads the chain from a node over HTTP. In the database-layer tests the
"node" is this same test process: the real RPC views (``chain.api``,
``chain.explorer_api``) over the test database, reached through Django's test client
instead of a socket, with ``HttpChainClient``'s own request and error handling. The
process-level tests (``aitbc_site/tests/test_browser.py``) use a real devnet instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.test import Client

NODE_URL = "http://node.test"


class _Response:
    def __init__(self, response) -> None:
        self.status_code = response.status_code
        self.content = response.content

    def json(self) -> Any:
        return json.loads(self.content)


class InProcessSession:
    """The part of ``requests.Session`` that ``HttpChainClient`` uses, answered by Django's test client."""

    def __init__(self) -> None:
        self.client = Client()

    def request(self, method: str, url: str, *, timeout: float | None = None, params=None, data=None, headers=None):
        path = urlsplit(url).path
        if method == "GET":
            query = {k: v for k, v in (params or {}).items() if v is not None}
            return _Response(self.client.get(path, query))
        return _Response(self.client.generic(method, path, data or b"", content_type="application/json"))


@dataclass
class InProcessNode:
    """A loaded test chain and the client the dashboard uses to read it."""

    client: Any
    keys: Any
    genesis: dict[str, Any]

    def produce(self, *, now: bool = True):
        """The next block (timed now, so it falls within the dashboard's last hour)."""
        from chain import services
        from chain.models import ChainState

        state = ChainState.objects.get()
        last_ms = int(state.latest_block_time.timestamp() * 1000)
        now_ms = max(int(time.time() * 1000), last_ms + state.params["block_time_ms"]) if now else None
        block = services.block_produce(key=self.keys.validator, now_ms=now_ms)
        assert block is not None
        return block

    def submit(self, tx: dict[str, Any]) -> str:
        return self.client.submit(tx)


def start_in_process_node(monkeypatch) -> InProcessNode:
    """Load the chain tests' genesis and point the dashboard, wallet and faucet at it."""
    from django.core.cache import cache

    from aitbc_site import shared_state
    from chain import dashboard, services
    from chain.tests.support import fixed_keys, make_genesis
    from wallet import chain as wallet_chain

    keys = fixed_keys()
    genesis = make_genesis(keys)
    services.genesis_load(genesis=genesis)
    client = dashboard.ExplorerClient(NODE_URL, session=InProcessSession())
    monkeypatch.setattr(dashboard, "client", lambda: client)
    monkeypatch.setattr(wallet_chain, "get_chain_client", lambda node=None: client)
    cache.clear()
    shared_state.reset_local()
    return InProcessNode(client=client, keys=keys, genesis=genesis)


async def asgi_request(method: str, path: str, body: bytes = b"", *, app=None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request through ``app``, by default the project's real ASGI application: status, headers, body."""
    from asgiref.testing import ApplicationCommunicator

    from aitbc_site.asgi import application

    app = app or application

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
    }
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(10)
    content = b""
    while True:
        message = await communicator.receive_output(10)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, content
