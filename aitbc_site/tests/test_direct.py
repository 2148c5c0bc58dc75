"""The gateway's inference endpoints are served past the session, CSRF and auth middleware.

Through the real ASGI application: a ``@direct`` view's request never enters the
middlewares that would each hop to a thread, still gets the security and frame
headers, and every other request still goes through the whole stack.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.contrib.sessions.middleware import SessionMiddleware
from django.urls import get_resolver

from aitbc_site.direct import is_direct
from aitbc_site.testing import asgi_request

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def session_hooks(monkeypatch) -> list[str]:
    """Paths whose requests went through SessionMiddleware."""
    seen: list[str] = []
    original = SessionMiddleware.process_request

    def counting(self, request):
        seen.append(request.path)
        return original(self, request)

    monkeypatch.setattr(SessionMiddleware, "process_request", counting)
    return seen


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/chat/completions", {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/v1/models", None),
        ("POST", "/api/chat", {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/k/not-a-key/api/generate", {"model": "smollm2:135m", "prompt": "hi"}),
    ],
)
def test_gateway_endpoints_skip_the_middleware_and_keep_security_headers(
    session_hooks: list[str], method: str, path: str, body
) -> None:
    payload = json.dumps(body).encode() if body is not None else b""
    status, headers, content = async_to_sync(asgi_request)(method, path, payload)
    # No key: the gateway's own authentication answers, in its API's error shape.
    assert status == 401, (status, content)
    assert "error" in json.loads(content)
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("x-frame-options") == "DENY"
    assert headers.get("referrer-policy") == "same-origin"
    assert session_hooks == []


def test_other_requests_go_through_the_whole_stack(session_hooks: list[str]) -> None:
    status, headers, _content = async_to_sync(asgi_request)("GET", "/accounts/login/")
    assert status == 200
    assert headers.get("x-content-type-options") == "nosniff"
    assert "csrftoken" in headers.get("set-cookie", "")
    assert session_hooks == ["/accounts/login/"]


def test_only_views_marked_direct_are_direct() -> None:
    assert is_direct("/v1/chat/completions") and is_direct("/api/tags") and is_direct("/k/abc/api/chat")
    for path in ("/v1/jobs", "/v1/keys", "/api/schema/", "/market/keys/", "/admin/", "/", "/no/such/path"):
        assert not is_direct(path), path
    # Every direct view is an async view of the gateway, exempt from CSRF.
    marked = []
    patterns = list(get_resolver().url_patterns)
    while patterns:
        pattern = patterns.pop()
        patterns.extend(getattr(pattern, "url_patterns", []))
        callback = getattr(pattern, "callback", None)
        if getattr(callback, "direct", False):
            marked.append(callback)
            assert callback.__module__.startswith("marketplace.gateway."), callback
            assert getattr(callback, "csrf_exempt", False), callback
    assert len(marked) >= 9
