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


@pytest.fixture
def asked(node, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the watcher requests from the node, in order."""
    paths: list[str] = []
    original = node.client._request

    def recording(method: str, path: str, **kwargs):
        paths.append(path)
        return original(method, path, **kwargs)

    monkeypatch.setattr(node.client, "_request", recording)
    return paths


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


def test_once_a_height_was_announced_a_pass_asks_the_node_once(node, sent, asked) -> None:
    node.produce()
    assert headwatch.watch_once() == 1
    assert asked == ["/status", "/v1/chain/blocks"], "nothing announced yet: the head first"
    asked.clear()
    assert headwatch.watch_once() == 0
    second = node.produce()
    assert headwatch.watch_once() == 1
    assert sent[-1]["height"] == second.height and sent[-1]["id"] == second.id
    assert asked == ["/v1/chain/blocks", "/v1/chain/blocks"], "an idle pass and a pass with a new block"


def test_after_a_gap_only_the_newest_blocks_are_announced(node, sent, asked) -> None:
    node.produce()
    headwatch.watch_once()
    produced = [node.produce() for _ in range(headwatch.MAX_BLOCKS_PER_PASS + 3)]
    asked.clear()
    assert headwatch.watch_once() == headwatch.MAX_BLOCKS_PER_PASS
    assert [e["height"] for e in sent[1:]] == [b.height for b in produced[3:]]
    assert "/status" in asked, "more blocks are new than a pass announces: the head is read"
    assert headwatch.watch_once() == 0


def test_a_block_made_while_the_node_was_away_is_announced_when_it_is_back(node, sent, monkeypatch) -> None:
    from chain.client import ChainUnavailable

    node.produce()
    headwatch.watch_once()
    made = node.produce()
    reachable = node.client._request

    def away(method: str, path: str, **kwargs):
        raise ChainUnavailable("node at http://node.test unreachable")

    monkeypatch.setattr(node.client, "_request", away)
    assert headwatch.watch_once() == 0
    monkeypatch.setattr(node.client, "_request", reachable)
    assert headwatch.watch_once() == 1
    assert sent[-1]["height"] == made.height and sent[-1]["id"] == made.id
