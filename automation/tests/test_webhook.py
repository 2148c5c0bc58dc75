"""The Gitea webhook: signature, replays, unknown events; jobs queued only after commit."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest

from automation import services, tasks
from automation.models import Run, WebhookDelivery

SECRET = "s3cret-for-tests"
URL = "/v1/automation/webhook"


@pytest.fixture
def queued(monkeypatch) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(tasks.claim_task, "delay", lambda **kw: calls.append(("claim_task", kw)))
    monkeypatch.setattr(tasks.monitor_prs, "delay", lambda **kw: calls.append(("monitor_prs", kw)))
    return calls


@pytest.fixture
def secret(db, monkeypatch) -> str:
    monkeypatch.delenv("GITEA_WEBHOOK_SECRET", raising=False)
    config = services.config_get()
    config.repo = "oib/aitbc"
    config.save()
    services.config_set_webhook_secret(config=config, secret=SECRET)
    return SECRET


def _post(
    client, payload: dict, *, event: str, key: str = SECRET, delivery: str | None = None, raw: bytes | None = None
):
    body = raw if raw is not None else json.dumps(payload).encode()
    signature = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return client.post(
        URL,
        data=body,
        content_type="application/json",
        headers={
            "X-Gitea-Event": event,
            "X-Gitea-Signature": signature,
            "X-Gitea-Delivery": delivery or str(uuid.uuid4()),
        },
    )


def _pr_event() -> dict:
    return {"action": "opened", "number": 3, "repository": {"full_name": "oib/aitbc"}}


def test_a_signed_pull_request_event_queues_monitor_prs_after_commit(
    client, secret, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = _post(client, _pr_event(), event="pull_request")
    assert response.status_code == 202
    assert response.json()["job"] == Run.JOB_MONITOR
    assert len(callbacks) == 1
    assert queued == [("monitor_prs", {"trigger": "webhook"})]


def test_an_issue_event_queues_claim_task(client, secret, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, {"action": "label_updated", "repository": {"full_name": "oib/aitbc"}}, event="issues")
    assert response.status_code == 202
    assert queued == [("claim_task", {"trigger": "webhook"})]


def test_a_bad_signature_is_refused_and_changes_nothing(client, secret, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, _pr_event(), event="pull_request", key="wrong")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "bad_signature"
    assert queued == [] and not WebhookDelivery.objects.exists()


def test_a_signature_over_a_different_body_is_refused(client, secret, queued):
    body = json.dumps(_pr_event()).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    response = client.post(
        URL,
        data=body + b" ",
        content_type="application/json",
        headers={"X-Gitea-Event": "pull_request", "X-Gitea-Signature": signature, "X-Gitea-Delivery": "d-1"},
    )
    assert response.status_code == 403 and queued == []


def test_a_missing_signature_or_secret_is_refused(client, db, queued, monkeypatch):
    monkeypatch.delenv("GITEA_WEBHOOK_SECRET", raising=False)
    response = _post(client, _pr_event(), event="pull_request")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "webhook_not_configured"
    assert not WebhookDelivery.objects.exists()


def test_a_replayed_delivery_is_ignored(client, secret, queued, django_capture_on_commit_callbacks):
    delivery = str(uuid.uuid4())
    with django_capture_on_commit_callbacks(execute=True):
        first = _post(client, _pr_event(), event="pull_request", delivery=delivery)
        again = _post(client, _pr_event(), event="pull_request", delivery=delivery)
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(queued) == 1
    assert WebhookDelivery.objects.count() == 1


def test_an_unknown_event_is_recorded_and_queues_nothing(client, secret, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, {"zen": "hi"}, event="wiki")
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert queued == []
    assert WebhookDelivery.objects.get().queued_job == ""


def test_an_event_for_another_repository_queues_nothing(client, secret, queued, django_capture_on_commit_callbacks):
    payload = {"action": "opened", "repository": {"full_name": "someone/else"}}
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, payload, event="pull_request")
    assert response.json()["status"] == "ignored" and queued == []


def test_a_signed_body_that_is_not_json_is_malformed(client, secret, queued):
    response = _post(client, {}, event="pull_request", raw=b"not json")
    assert response.status_code == 400 and queued == []


def test_the_webhook_takes_only_post(client, secret):
    assert client.get(URL).status_code == 405


def test_the_secret_can_come_from_the_environment(client, db, queued, monkeypatch):
    monkeypatch.setenv("GITEA_WEBHOOK_SECRET", "from-env")
    response = _post(client, {"zen": "x"}, event="ping", key="from-env")
    assert response.status_code == 200


def test_a_broker_failure_does_not_fail_the_delivery(client, secret, monkeypatch, django_capture_on_commit_callbacks):
    def broken(**kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.monitor_prs, "delay", broken)
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, _pr_event(), event="pull_request")
    assert response.status_code == 202
    assert WebhookDelivery.objects.count() == 1
