"""``GET /metrics``: Prometheus text format, figures collected when scraped.

- chain: height, time of the last block, mempool, peers, validators by state, finalized
  transactions per second over the last minute. A node reports its own database; the web
  process asks its node (``chain.dashboard``), and reports ``aitbc_chain_up 0`` when it
  cannot.
- marketplace: jobs by state, providers online, dispatch latency (funded to assigned).
- Celery: task outcomes by task name.

Counters that workers increment (task outcomes, dispatch latency) are kept in
``aitbc_site.shared_state``, so with Redis a scrape of any web process sees every
worker's. Access (``interfaces.md``): loopback clients, or ``Authorization: Bearer
<METRICS_TOKEN>``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from aitbc_site import shared_state
from aitbc_site.errors import json_error

logger = logging.getLogger(__name__)

DISPATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
TASK_OUTCOMES = ("success", "failure", "retry", "revoked")


# -- counters kept across processes -------------------------------------------------------------


def _field(name: str, **labels: str) -> str:
    return json.dumps([name, sorted(labels.items())], separators=(",", ":"))


def count_task(task: str, outcome: str) -> None:
    try:
        shared_state.counter_add(_field("celery_task", task=task, outcome=outcome))
    except Exception:  # metrics must never break a task
        logger.debug("could not count task %s %s", task, outcome, exc_info=True)


def observe_dispatch(seconds: float) -> None:
    try:
        for bound in DISPATCH_BUCKETS:
            if seconds <= bound:
                shared_state.counter_add(_field("dispatch_bucket", le=str(bound)))
        shared_state.counter_add(_field("dispatch_count"))
        shared_state.counter_add(_field("dispatch_sum"), seconds)
    except Exception:
        logger.debug("could not record a dispatch latency", exc_info=True)


def _parsed_counters() -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for field, value in shared_state.counters().items():
        try:
            name, labels = json.loads(field)
        except ValueError:
            continue
        out.setdefault(name, []).append((dict(labels), value))
    return out


# -- signal receivers (connected in aitbc_site.apps) ---------------------------------------------


def on_task_success(sender=None, **kwargs: Any) -> None:
    count_task(getattr(sender, "name", str(sender)), "success")


def on_task_failure(sender=None, **kwargs: Any) -> None:
    count_task(getattr(sender, "name", str(sender)), "failure")


def on_task_retry(sender=None, **kwargs: Any) -> None:
    count_task(getattr(sender, "name", str(sender)), "retry")


def on_task_revoked(sender=None, request=None, **kwargs: Any) -> None:
    count_task(getattr(request, "task", None) or getattr(sender, "name", str(sender)), "revoked")


def on_job_event(sender, instance, created: bool, **kwargs: Any) -> None:
    """A job was assigned: how long it waited since it was (re)funded."""
    if not created or instance.state != "assigned":
        return
    try:
        funded = (
            type(instance)
            .objects.filter(job_id=instance.job_id, state="funded", at__lte=instance.at)
            .order_by("-at", "-id")
            .values_list("at", flat=True)
            .first()
        )
    except Exception:
        logger.debug("dispatch latency: no funded event", exc_info=True)
        return
    if funded is not None:
        observe_dispatch(max(0.0, (instance.at - funded).total_seconds()))


# -- the collector --------------------------------------------------------------------------------


def _chain_figures() -> dict[str, Any] | None:
    """The chain's figures: from this process's own database on a node, else from the node."""
    from chain.models import ChainState

    state = ChainState.objects.filter(singleton=1).first()
    if state is not None:
        from chain import selectors
        from chain.network import driver

        current = driver()
        status = selectors.status(state, peers=current.peers_info() if current else [])
        stats = selectors.block_stats(state, window_s=120, bucket_s=60)
        return {"status": status, "tx_per_s": stats["tx_per_s_last_minute"]}
    from chain import dashboard

    try:
        status = dashboard.status()
        tx_per_s = dashboard.cached("stats-metrics", 2.0, lambda c: c.stats(window=120, bucket=60))[
            "tx_per_s_last_minute"
        ]
    except Exception as exc:  # the node is away: say so, report the rest
        logger.debug("metrics: chain unavailable: %s", exc)
        return None
    return {"status": status, "tx_per_s": tx_per_s}


def _timestamp(text: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return None


class AitbcCollector:
    def collect(self):
        yield from self._chain()
        yield from self._market()
        yield from self._counters()

    def _chain(self):
        figures = _chain_figures()
        up = GaugeMetricFamily("aitbc_chain_up", "1 when the chain node answered this scrape")
        up.add_metric([], 1 if figures else 0)
        yield up
        if not figures:
            return
        status = figures["status"]
        yield GaugeMetricFamily("aitbc_chain_height", "height of the chain's last block", value=status["height"])
        last = _timestamp(status.get("latest_block_time", ""))
        if last is not None:
            yield GaugeMetricFamily(
                "aitbc_chain_last_block_timestamp_seconds", "time of the last block (Unix seconds)", value=last
            )
        yield GaugeMetricFamily(
            "aitbc_chain_mempool_size", "transactions waiting in the mempool", value=status.get("mempool_size", 0)
        )
        yield GaugeMetricFamily(
            "aitbc_chain_peers", "peers connected to the node", value=len(status.get("peers") or [])
        )
        validators = GaugeMetricFamily("aitbc_chain_validators", "validators by state", labels=["status"])
        by_status: dict[str, int] = {"active": 0, "inactive": 0, "jailed": 0}
        for validator in status.get("validators") or []:
            by_status[validator.get("status", "unknown")] = by_status.get(validator.get("status", "unknown"), 0) + 1
        for name, count in sorted(by_status.items()):
            validators.add_metric([name], count)
        yield validators
        yield GaugeMetricFamily(
            "aitbc_chain_finalized_tx_per_second",
            "transactions in blocks per second over the last minute",
            value=figures["tx_per_s"],
        )

    def _market(self):
        try:
            from marketplace import dashboard as market

            jobs = market.jobs_by_state()
            online = market.providers_online()
        except Exception:
            logger.exception("metrics: marketplace figures")
            return
        family = GaugeMetricFamily("aitbc_jobs", "jobs by state", labels=["state"])
        for state, count in jobs.items():
            family.add_metric([state], count)
        yield family
        yield GaugeMetricFamily("aitbc_providers_online", "providers seen online", value=online)

    def _counters(self):
        try:
            counters = _parsed_counters()
        except Exception:
            logger.exception("metrics: shared counters")
            return
        tasks = CounterMetricFamily("aitbc_celery_tasks", "Celery task outcomes", labels=["task", "outcome"])
        for labels, value in sorted(counters.get("celery_task", []), key=lambda item: sorted(item[0].items())):
            tasks.add_metric([labels.get("task", ""), labels.get("outcome", "")], value)
        yield tasks
        buckets = {labels.get("le"): value for labels, value in counters.get("dispatch_bucket", [])}
        count = sum(value for _labels, value in counters.get("dispatch_count", []))
        total = sum(value for _labels, value in counters.get("dispatch_sum", []))
        histogram = HistogramMetricFamily(
            "aitbc_dispatch_latency_seconds", "time from a job's funding to its assignment to a provider"
        )
        histogram.add_metric(
            [],
            [(str(bound), buckets.get(str(bound), 0.0)) for bound in DISPATCH_BUCKETS] + [("+Inf", count)],
            sum_value=total,
        )
        yield histogram


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(AitbcCollector())


# -- the view -------------------------------------------------------------------------------------


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), token.encode()):
        return True
    # Behind a proxy on this host every client arrives from loopback: a forwarded request needs the token.
    if request.META.get("HTTP_X_FORWARDED_FOR") or request.META.get("HTTP_FORWARDED"):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        response = json_error("not_authenticated", "metrics are for loopback clients or the metrics token", 401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    started = time.monotonic()
    body = generate_latest(REGISTRY)
    logger.debug("metrics scraped in %.0f ms", (time.monotonic() - started) * 1000)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
