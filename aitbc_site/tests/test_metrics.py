"""``/metrics``: Prometheus text, who may read it, and figures that move."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from aitbc_site import metrics, shared_state
from chain.tests.support import transfer

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]
pytestmark = pytest.mark.django_db


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics", **headers)
    assert answer.status_code == 200, answer.content
    assert answer["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_chain_figures_move_with_blocks(client, node) -> None:
    before = scrape(client)
    assert before[("aitbc_chain_up", ())] == 1
    height = before[("aitbc_chain_height", ())]
    alice, bob = node.keys.funded[0], node.keys.funded[1]
    node.submit(transfer(alice, 0, bob.address, 5))
    assert scrape(client)[("aitbc_chain_mempool_size", ())] == 1
    node.produce()
    after = scrape(client)
    assert after[("aitbc_chain_height", ())] == height + 1
    assert after[("aitbc_chain_mempool_size", ())] == 0
    assert after[("aitbc_chain_finalized_tx_per_second", ())] == pytest.approx(1 / 60, abs=1e-3)
    assert after[("aitbc_chain_validators", (("status", "active"),))] == 1
    assert after[("aitbc_chain_peers", ())] == 0


def test_without_a_node_the_chain_is_down_and_the_rest_is_reported(client, no_node) -> None:
    samples = scrape(client)
    assert samples[("aitbc_chain_up", ())] == 0
    assert ("aitbc_chain_height", ()) not in samples
    assert samples[("aitbc_jobs", (("state", "settled"),))] == 0
    assert samples[("aitbc_providers_online", ())] == 0


def test_only_loopback_or_the_token_may_read(client, settings, no_node) -> None:
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", **remote).status_code == 401
    settings.METRICS_TOKEN = "s3cret-metrics-token"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong", **remote).status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token", **remote).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


def test_task_outcomes_and_dispatch_latency_are_counted(client, no_node) -> None:
    from celery import signals

    from aitbc_site.tasks import echo
    from marketplace.models import Job, JobEvent

    signals.task_success.send(sender=echo, result={})
    signals.task_success.send(sender=echo, result={})
    signals.task_failure.send(sender=echo, task_id="1", exception=RuntimeError("x"))
    now = timezone.now()
    job = Job.objects.create(
        model="m",
        input={"prompt": "x"},
        options={},
        input_tokens_estimate=1,
        max_price=1,
        payment="escrow",
        expires_at=now + timedelta(minutes=5),
    )
    JobEvent.objects.create(job=job, state="funded", at=now)
    JobEvent.objects.create(job=job, state="assigned", at=now + timedelta(milliseconds=300))
    samples = scrape(client)
    assert samples[("aitbc_celery_tasks_total", (("outcome", "success"), ("task", "aitbc_site.echo")))] == 2
    assert samples[("aitbc_celery_tasks_total", (("outcome", "failure"), ("task", "aitbc_site.echo")))] == 1
    assert samples[("aitbc_dispatch_latency_seconds_count", ())] == 1
    assert samples[("aitbc_dispatch_latency_seconds_sum", ())] == pytest.approx(0.3)
    assert samples[("aitbc_dispatch_latency_seconds_bucket", (("le", "0.25"),))] == 0
    assert samples[("aitbc_dispatch_latency_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("aitbc_jobs", (("state", "submitted"),))] == 1


def test_with_redis_counters_are_shared_between_processes(redis_url, settings, unique_name, monkeypatch) -> None:
    prefix = f"{unique_name('metrics')}:state"
    monkeypatch.setattr(shared_state, "prefix", lambda: prefix)
    import redis

    settings.REDIS_URL = redis_url
    monkeypatch.setattr(shared_state, "_client", None)
    try:
        metrics.count_task("chain.watch_head", "success")
        # Another process writes to the same hash; this one reads both.
        other = redis.Redis.from_url(redis_url)
        field = metrics._field("celery_task", task="chain.watch_head", outcome="success")
        other.hincrbyfloat(f"{shared_state.prefix()}:counters", field, 2)
        assert metrics._parsed_counters()["celery_task"] == [({"task": "chain.watch_head", "outcome": "success"}, 3.0)]
        assert shared_state.raise_value("head", 5) == -1
        assert shared_state.raise_value("head", 5) == 5
        assert shared_state.raise_value("head", 4) == 5
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{shared_state.prefix()}:*"):
            client.delete(key)
        monkeypatch.setattr(shared_state, "_client", None)
