"""A chain node's RPC requests cost it little: one hop to a kept thread, with a kept connection.

Through the real ASGI application as ``run_server`` serves it (``ReusedRequestThreads``
around ``aitbc_site.asgi.application``): the node's views still go through every
middleware, in one call to the request's thread; that thread and, after a read, its
database connection serve the next request.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import SyncToAsync, async_to_sync, sync_to_async
from django.contrib.sessions.middleware import SessionMiddleware
from django.db import connections

from aitbc_site.direct import ONE_THREAD, STACK, route
from aitbc_site.server import RequestThread, ReusedRequestThreads
from aitbc_site.testing import asgi_request

pytestmark = pytest.mark.django_db(transaction=True)


async def request(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
    status, headers, _content = await asgi_request(method, path, body, app=app)
    return status, headers


@pytest.fixture
def served():
    """The application as ``run_server`` serves it."""
    from aitbc_site.asgi import application

    app = ReusedRequestThreads(application)
    yield app
    app.close()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each call the event loop made to a thread (``sync_to_async``)."""
    threads: list[int] = []
    original = SyncToAsync.thread_handler

    def counting(self, loop, *args, **kwargs):
        threads.append(threading.get_ident())
        return original(self, loop, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "thread_handler", counting)
    return threads


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each new database connection."""
    threads: list[int] = []
    wrapper = type(connections["default"])
    original = wrapper.get_new_connection

    def counting(self, conn_params):
        threads.append(threading.get_ident())
        return original(self, conn_params)

    monkeypatch.setattr(wrapper, "get_new_connection", counting)
    return threads


def test_node_rpc_views_are_served_in_one_thread_and_other_views_through_the_stack() -> None:
    for path in ("/status", "/v1/chain/blocks", "/v1/chain/transactions", "/v1/chain/explorer/stats"):
        assert route(path) == ONE_THREAD, path
    for path in ("/health", "/v1/jobs", "/accounts/login/", "/admin/", "/no/such/path"):
        assert route(path) == STACK, path


def test_a_node_request_crosses_to_its_thread_a_few_times_and_keeps_every_middleware(
    served, hops: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions: list[str] = []
    original = SessionMiddleware.process_request
    monkeypatch.setattr(
        SessionMiddleware,
        "process_request",
        lambda self, request: sessions.append(request.path) or original(self, request),
    )
    status, headers = async_to_sync(request)(served, "GET", "/status")
    assert status == 503  # no chain loaded: the node's own answer
    # request_started, the whole stack and the view, closing the response: not a hop per hook.
    assert len(hops) <= 3, len(hops)
    assert len(set(hops)) == 1
    assert sessions == ["/status"]
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("x-frame-options") == "DENY"


def test_requests_reuse_a_kept_thread_and_a_read_keeps_its_connection(served, hops, connects) -> None:
    for _ in range(3):
        assert async_to_sync(request)(served, "GET", "/v1/chain/blocks")[0] == 503
    assert len(set(hops)) == 1, "one thread for all three requests"
    assert connects == hops[:1], "one connection, opened by the first request on that thread"


def test_a_submission_keeps_its_connection_too(served, connects) -> None:
    """A node's submission writes nothing to the database (the mempool is in memory)."""
    assert async_to_sync(request)(served, "POST", "/v1/chain/transactions", b"{")[0] in (400, 503)
    assert async_to_sync(request)(served, "GET", "/v1/chain/blocks")[0] == 503
    assert async_to_sync(request)(served, "GET", "/v1/chain/blocks")[0] == 503
    assert len(connects) == 1


def test_a_thread_still_busy_when_its_request_ends_is_not_kept() -> None:
    release = threading.Event()
    started: list[int] = []

    async def app(scope, receive, send):
        def work() -> None:
            started.append(threading.get_ident())
            release.wait(10)

        call = asyncio.ensure_future(sync_to_async(work)())
        while not started:
            await asyncio.sleep(0.01)
        call.cancel()  # the request stops waiting; the call goes on in its thread

    reused = ReusedRequestThreads(app)
    async_to_sync(reused)({"type": "http"}, None, None)
    assert reused._idle == []
    release.set()
    async_to_sync(reused)({"type": "http"}, None, None)
    [kept] = reused._idle
    assert isinstance(kept, RequestThread) and kept.idle
