"""Machine-facing endpoints: the gateway's without the session, CSRF and auth middleware,
a chain node's RPC with all of it in one call to the request's thread.

Under ASGI every middleware built on ``MiddlewareMixin`` runs its request and response
hooks through ``sync_to_async``: with this project's seven, an async view's request
crosses to a worker thread and back about a dozen times, several milliseconds per
request on a busy machine, on the path of every paid inference request. Views marked
``@direct`` (the gateway's Ollama- and OpenAI-compatible endpoints) authenticate each
request themselves by API key, use no session, are exempt from CSRF and never read
``request.user``: ``application`` (``aitbc_site.asgi``) hands their requests to
``DirectASGIHandler``, which keeps what those middlewares do that matters to them (the
security headers, HTTPS redirect and ``X-Frame-Options``) and runs it in the event loop.
Every other request goes through the full middleware stack.

Views marked ``@one_thread`` (a chain node's RPC) go through the full stack too, but
synchronously, as under WSGI: ``OneThreadASGIHandler`` runs the middleware, the view and
the response's rendering in one call to the request's thread instead of a hop there and
back for each hook. A node answers several small requests a second even when idle, and
those hops, not the views, were most of what each request cost it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.db import connections
from django.http import FileResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, get_resolver


def direct(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an async view as served without the session, CSRF and auth middleware."""
    view.direct = True  # type: ignore[attr-defined]
    return view


def one_thread(view_class: type) -> type:
    """Mark a class-based sync view as served with the whole middleware stack in one thread call."""
    view_class.one_thread = True  # type: ignore[attr-defined]
    return view_class


DIRECT, ONE_THREAD, STACK = "direct", "one thread", "stack"


def route(path: str) -> str:
    """How a request for ``path`` is served: ``DIRECT``, ``ONE_THREAD`` or through the ``STACK``."""
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return STACK
    if getattr(match.func, "direct", False):
        return DIRECT
    view_class = getattr(match.func, "view_class", None) or getattr(match.func, "cls", None)
    if getattr(view_class, "one_thread", False):
        return ONE_THREAD
    return STACK


def is_direct(path: str) -> bool:
    return route(path) == DIRECT


class DirectASGIHandler(ASGIHandler):
    """Django's ASGI handler whose middleware is the security and frame headers, run inline.

    Their hooks only read the request and set headers (no database, nothing blocking),
    so they run in the event loop instead of a thread each.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        inner = convert_exception_to_response(self._get_response_async)
        security = SecurityMiddleware(inner)
        frame = XFrameOptionsMiddleware(inner)

        async def chain(request):
            response = security.process_request(request)
            if response is None:
                response = await inner(request)
            response = security.process_response(request, response)
            return frame.process_response(request, response)

        self._middleware_chain = chain


class OneThreadASGIHandler(ASGIHandler):
    """Django's ASGI handler running the whole (sync) middleware stack and a sync view in one
    call to the request's thread, as Django does under WSGI.

    Reading the body and sending the response stay in the event loop, as in ``ASGIHandler``;
    the middleware are the same, in the same order, with the same hooks.
    """

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def run_get_response(self, request):
        response = await sync_to_async(self._get_response_keeping_connection, thread_sensitive=True)(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response

    def _get_response_keeping_connection(self, request):
        response = self.get_response(request)
        # The request keeps its thread's connection for the next request on that thread (see
        # aitbc_site.server.ReusedRequestThreads): opening one, with its pragmas and a read of
        # the schema, cost about as much as the request itself. A node's RPC writes nothing to
        # the database (a submission goes to the in-memory mempool). A broken connection, or
        # one left in a transaction, is still closed when the request finishes.
        for connection in connections.all(initialized_only=True):
            connection.close_at = None
        return response


class DirectRouter:
    """HTTP requests for ``@direct`` views to ``direct``, for ``@one_thread`` views to a
    ``OneThreadASGIHandler``, all others to ``default``."""

    def __init__(self, default, direct_app) -> None:
        self.default = default
        self.direct_app = direct_app
        self.one_thread_app = OneThreadASGIHandler()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            how = route(scope["path"])
            if how == DIRECT:
                return await self.direct_app(scope, receive, send)
            if how == ONE_THREAD:
                return await self.one_thread_app(scope, receive, send)
        return await self.default(scope, receive, send)
