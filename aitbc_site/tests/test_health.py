"""``GET /health``: 200 when the database, channel layer and broker are up, 503 naming what is down."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import requests
from celery import Celery

from aitbc_site import embedded
from aitbc_site.embedded import EmbeddedCelery

IN_MEMORY_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CLOSED_PORT_REDIS = "redis://:not-for-your-eyes@127.0.0.1:1/0"


def core_checks(body: dict) -> dict:
    """The checks every process makes (a node adds its chain's)."""
    return {name: body["checks"].get(name) for name in ("database", "channel_layer", "broker")}


@pytest.fixture
def embedded_settings(settings):
    settings.EMBEDDED = True
    settings.REDIS_URL = None
    settings.CHANNEL_LAYERS = IN_MEMORY_LAYERS
    return settings


@pytest.mark.django_db
def test_health_is_ok_in_embedded_mode(client, embedded_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_current", None)

    response = client.get("/health")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["mode"] == "embedded"
    assert core_checks(body) == {"database": "ok", "channel_layer": "ok", "broker": "ok (in-process)"}
    assert "down" not in body


@pytest.mark.django_db
def test_health_names_the_broker_when_the_embedded_worker_has_stopped(
    client, embedded_settings, memory_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = EmbeddedCelery(memory_app, concurrency=1, beat=False, hostname=f"{uuid.uuid4().hex}@embedded")
    worker.start()
    worker.stop()
    monkeypatch.setattr(embedded, "_current", worker)

    response = client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["broker"], body
    assert body["checks"]["database"] == "ok"
    assert body["error"] == {"code": "unavailable", "message": "down: broker"}


@pytest.mark.process
@pytest.mark.redis
def test_health_is_ok_with_redis(
    start_serve: Callable[..., object], redis_url: str, unique_name: Callable[[str], str]
) -> None:
    served = start_serve(REDIS_URL=redis_url, AITBC_CHANNEL_PREFIX=unique_name("test-health"))

    response = requests.get(f"{served.url}/health", timeout=10)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "redis"
    assert core_checks(body) == {"database": "ok", "channel_layer": "ok", "broker": "ok"}
    assert "down" not in body


@pytest.mark.process
def test_health_names_channel_layer_and_broker_when_redis_is_unreachable(start_serve: Callable[..., object]) -> None:
    served = start_serve(REDIS_URL=CLOSED_PORT_REDIS)

    response = requests.get(f"{served.url}/health", timeout=10)

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert sorted(body["down"]) == ["broker", "channel_layer"]
    assert body["checks"]["database"] == "ok"
    assert body["error"]["code"] == "unavailable"
    # The answer names the Redis it tried, without its password.
    assert body["redis"] == "redis://:***@127.0.0.1:1/0"
    assert "not-for-your-eyes" not in response.text
