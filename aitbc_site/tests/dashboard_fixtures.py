"""Fixtures for the dashboard's tests in every app: a logged-in user and an in-process node."""

from __future__ import annotations

import pytest

from aitbc_site.testing import InProcessNode, start_in_process_node


@pytest.fixture
def node(db, monkeypatch: pytest.MonkeyPatch) -> InProcessNode:
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
def no_node(db, monkeypatch: pytest.MonkeyPatch) -> None:
    """No chain node is configured."""
    from django.core.cache import cache

    from chain import dashboard

    def unavailable():
        raise dashboard.NodeUnavailable("no chain node is configured")

    monkeypatch.setattr(dashboard, "client", unavailable)
    cache.clear()
