"""Machine-facing endpoints served without Django's session, CSRF and auth middleware.

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import Resolver404, get_resolver


def direct(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an async view as served without the session, CSRF and auth middleware."""
    view.direct = True  # type: ignore[attr-defined]
    return view


def is_direct(path: str) -> bool:
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return False
    return getattr(match.func, "direct", False)


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


class DirectRouter:
    """HTTP requests for ``@direct`` views to ``direct``, all others to ``default``."""

    def __init__(self, default, direct_app) -> None:
        self.default = default
        self.direct_app = direct_app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and is_direct(scope["path"]):
            return await self.direct_app(scope, receive, send)
        return await self.default(scope, receive, send)
