"""The site's own views: the ping round trip, the overview page and the search box."""

from __future__ import annotations

import secrets
import time
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from aitbc_site import tasks
from aitbc_site.pages import Fragment, line_chart, render_page


@extend_schema(
    summary="Round trip through the task queue and the live-event websocket",
    description=(
        "Queues a task; a Celery worker runs it and sends a `ping` event with the returned token "
        "to the caller's `/ws/events/` websocket. Lets operators and tests check that the broker, "
        "the workers and the channel layer all work together."
    ),
    request=None,
    responses={
        202: inline_serializer("PingQueued", {"token": serializers.CharField()}),
        403: OpenApiResponse(description="not_authenticated: log in first"),
    },
)
@api_view(["POST"])
def system_ping(request: Request) -> Response:
    token = secrets.token_hex(8)
    user_id = request.user.pk
    transaction.on_commit(lambda: tasks.ping.delay(user_id, token, time.time()))
    return Response({"token": token}, status=202)


def _chain_figures() -> dict[str, Any]:
    from chain import dashboard
    from chain.views import node_read

    def build() -> dict[str, Any]:
        status = dashboard.status()
        validators = status.get("validators") or []
        return {
            "status": status,
            "validators": validators,
            "peers": status.get("peers") or [],
            "active_validators": sum(1 for v in validators if v.get("status") == "active"),
        }

    return node_read(build, status=None, validators=[], peers=[])


def _charts() -> dict[str, Any]:
    from chain import dashboard
    from chain.views import node_read

    def build() -> dict[str, Any]:
        stats = dashboard.stats()
        buckets = stats["buckets"]
        return {
            "stats": stats,
            "interval_chart": line_chart([b["interval_ms"] for b in buckets], unit=" ms"),
            "tps_chart": line_chart([b["tx_per_s"] for b in buckets], unit=" tx/s"),
        }

    return node_read(build, stats=None)


def _market() -> dict[str, Any]:
    from marketplace import dashboard as market

    return {"providers_online": market.providers_online(), "jobs_by_state": market.jobs_by_state()}


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    return render_page(
        request,
        "aitbc_site/overview.html",
        {
            "chain": Fragment("aitbc_site/_overview_chain.html", _chain_figures),
            "charts": Fragment("aitbc_site/_overview_charts.html", _charts),
            "market": Fragment("aitbc_site/_overview_market.html", _market),
        },
        {"nav": "overview"},
    )


@login_required
def search(request: HttpRequest) -> HttpResponse:
    """One box for a height, a transaction or block id, an address, a job or deposit id."""
    from chain import dashboard
    from marketplace import dashboard as market

    query = request.GET.get("q", "").strip()
    if not query:
        return redirect("explorer")
    if market.job_for(user=request.user, job_id=query) is not None:
        return redirect("market-job-page", job_id=query)
    if market.deposit_for(user=request.user, deposit_id=query) is not None:
        return redirect(reverse("market-page") + f"#deposit-{query}")
    try:
        found = dashboard.call(lambda c: c.search(query))
    except dashboard.NodeUnavailable:
        return render(request, "aitbc_site/search.html", {"query": query, "node_error": True, "nav": "explorer"})
    except Exception:  # a malformed query the node refuses is simply not found
        found = None
    if found is not None:
        kind = found["kind"]
        if kind == "block":
            return redirect("explorer-block", height=found["height"])
        if kind == "transaction":
            return redirect("explorer-tx", tx_id=found["id"])
        if kind == "account":
            return redirect("explorer-account", address=found["address"])
        if kind == "escrow":
            return redirect("explorer-escrow", escrow_id=found["id"])
    return render(request, "aitbc_site/search.html", {"query": query, "nav": "explorer"}, status=404)


_API_PREFIXES = ("/v1/", "/api/", "/status", "/health", "/k/")


def not_found(request, exception=None):
    """404 in the protocol's error shape for API paths, Django's page elsewhere."""
    from django.views.defaults import page_not_found

    from aitbc_site.errors import json_error

    if request.path.startswith(_API_PREFIXES):
        return json_error("not_found", f"no such endpoint or object: {request.path}", 404)
    return page_not_found(request, exception)


def bad_request(request, exception=None):
    """400 in the protocol's error shape for API paths (a body over the upload limit, a bad header)."""
    from django.core.exceptions import RequestDataTooBig
    from django.views.defaults import bad_request as default_bad_request

    from aitbc_site.errors import json_error

    if request.path.startswith(_API_PREFIXES):
        if isinstance(exception, RequestDataTooBig):
            message = f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"
        else:
            message = "the request could not be read"
        return json_error("malformed", message, 400)
    return default_bad_request(request, exception)


def server_error(request):
    from django.views.defaults import server_error as default_server_error

    from aitbc_site.errors import json_error

    if request.path.startswith(_API_PREFIXES):
        return json_error("internal_error", "the server failed; the error is logged", 500)
    return default_server_error(request)
