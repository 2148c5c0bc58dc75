"""Fixtures for the dashboard's tests in every app: a logged-in user and an in-process node."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from aitbc_site.testing import InProcessNode, start_in_process_node


@pytest.fixture
def isolated_shared_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Shared state (Redis when REDIS_URL is set) of this test alone, removed afterwards."""
    from aitbc_site import shared_state

    prefix = f"test-{uuid.uuid4().hex}:state"
    monkeypatch.setattr(shared_state, "prefix", lambda: prefix)
    shared_state.reset_local()
    yield
    client = shared_state.redis_client()
    if client is not None:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
    shared_state.reset_local()


@pytest.fixture
def node(db, monkeypatch: pytest.MonkeyPatch, isolated_shared_state: None) -> InProcessNode:
    from chain import dashboard

    # Figures are cached a moment in production; tests read what they just wrote.
    monkeypatch.setattr(dashboard, "STATUS_TTL_S", 0)
    monkeypatch.setattr(dashboard, "STATS_TTL_S", 0)
    return start_in_process_node(monkeypatch)


@pytest.fixture
def user(db, django_user_model):
    return django_user_model.objects.create_user(username="carol", password="a long password 1")


@pytest.fixture
def browser(client, user):
    """A test client logged in as ``user``."""
    client.force_login(user)
    return client


@pytest.fixture
def no_node(db, monkeypatch: pytest.MonkeyPatch, isolated_shared_state: None) -> None:
    """No chain node is configured."""
    from django.core.cache import cache

    from chain import dashboard

    def unavailable():
        raise dashboard.NodeUnavailable("no chain node is configured")

    monkeypatch.setattr(dashboard, "client", unavailable)
    cache.clear()
