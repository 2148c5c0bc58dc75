"""The marketplace's pages: offers and prices per model, providers, my jobs, deposits, a prompt box.

Reads go through ``marketplace.dashboard``; writes (submitting a job, opening or closing
a deposit) are made by the page's script through the REST API (``/v1/jobs``,
``/v1/deposits``) with the session and its CSRF token, so the page and API clients
share one code path. The answer of a job streams in over ``/ws/events/``.
"""

from __future__ import annotations

import json
from typing import Any

from django.apps import apps
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse

from aitbc_site.pages import Fragment, render_page
from marketplace import dashboard


def _offers() -> dict[str, Any]:
    from marketplace import selectors

    return {"models": dashboard.offers_by_model(), "providers": selectors.provider_list()}


def _jobs(user) -> dict[str, Any]:
    return {"jobs": dashboard.my_jobs(user=user)}


def _deposits(user) -> dict[str, Any]:
    return {"deposits": dashboard.my_deposits(user=user)}


def _api_keys(user) -> dict[str, Any]:
    """The user's gateway API keys once the gateway's key model exists; until then, how to make one."""
    try:
        model = apps.get_model("marketplace", "ApiKey")
    except LookupError:
        return {"api_keys_supported": False, "api_keys": []}
    keys = model.objects.filter(owner=user).order_by("-id")[:50] if hasattr(model, "owner") else []
    return {"api_keys_supported": True, "api_keys": list(keys)}


@login_required
def market(request: HttpRequest) -> HttpResponse:
    from wallet.selectors import wallet_list

    user = request.user
    return render_page(
        request,
        "marketplace/market.html",
        {
            "offers": Fragment("marketplace/_offers.html", _offers),
            "jobs": Fragment("marketplace/_jobs.html", lambda: _jobs(user)),
            "deposits": Fragment("marketplace/_deposits.html", lambda: _deposits(user)),
            "keys": Fragment("marketplace/_api_keys.html", lambda: _api_keys(user)),
        },
        {"nav": "market", "wallets": list(wallet_list(owner=user))},
    )


@login_required
def job(request: HttpRequest, job_id: str) -> HttpResponse:
    found = dashboard.job_for(user=request.user, job_id=job_id)
    if found is None:
        raise Http404("no such job among yours")

    def build() -> dict[str, Any]:
        fresh = dashboard.job_for(user=request.user, job_id=job_id)
        detail = dashboard.job_detail(fresh)
        receipt = detail.get("receipt")
        return {"job": detail, "receipt_json": json.dumps(receipt, indent=2, sort_keys=True) if receipt else ""}

    return render_page(
        request,
        "marketplace/job.html",
        {"job": Fragment("marketplace/_job.html", build)},
        {"nav": "market", "job_id": job_id},
    )
