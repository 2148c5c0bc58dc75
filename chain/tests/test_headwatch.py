"""The web process's head watcher announces each new block of its node once."""

from __future__ import annotations

import pytest

from chain import headwatch, tasks

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]
pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    events: list[dict] = []
    monkeypatch.setattr(headwatch, "send_event", lambda group, event: events.append(event))
    return events


def test_each_new_block_is_announced_once_with_the_nodes_shape(node, sent) -> None:
    first = node.produce()
    assert headwatch.watch_once() == 1
    assert sent == [{"type": "block", "height": first.height, "id": first.id, "time": sent[0]["time"], "tx_count": 0}]
    assert headwatch.watch_once() == 0, "the same height is not announced twice"
    second, third = node.produce(), node.produce()
    assert headwatch.watch_once() == 2
    assert [e["height"] for e in sent[1:]] == [second.height, third.height]
    assert sent[-1]["id"] == third.id


def test_the_task_does_nothing_in_a_node_process(node, sent, monkeypatch: pytest.MonkeyPatch) -> None:
    import chain.network

    node.produce()
    monkeypatch.setattr(chain.network, "_driver", object())
    tasks.watch_head()
    assert sent == []
    monkeypatch.setattr(chain.network, "_driver", None)
    tasks.watch_head()
    assert [e["type"] for e in sent] == ["block"]


def test_without_a_node_the_watcher_announces_nothing(sent, monkeypatch: pytest.MonkeyPatch) -> None:
    from chain import dashboard

    def unavailable():
        raise dashboard.NodeUnavailable("none")

    monkeypatch.setattr(dashboard, "client", unavailable)
    assert headwatch.watch_once() == 0
    assert sent == []
