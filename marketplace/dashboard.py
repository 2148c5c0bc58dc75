"""The dashboard's reads of the marketplace (its pages and the site's overview and search).

Read-only and scoped like ``marketplace.selectors``: a user sees their own jobs and
deposits (staff: everyone's); aggregate counts are for every logged-in user.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count

from aitbc_site.errors import ApiError
from marketplace import selectors
from marketplace.models import Deposit, Job


def jobs_by_state() -> dict[str, int]:
    """Every state with its number of jobs (0 included), in the lifecycle's order."""
    counts = dict(Job.objects.values_list("state").annotate(n=Count("id")).order_by())
    return {state: counts.get(state, 0) for state, _label in Job.STATES}


def providers_online() -> int:
    return sum(1 for p in selectors.provider_list() if p["online"])


def offers_by_model() -> list[dict[str, Any]]:
    """``[{model, offers: [...], cheapest_input, cheapest_output, online}]`` sorted by model."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for offer in selectors.offer_list():
        grouped[offer["model"]].append(offer)
    out = []
    for model, offers in sorted(grouped.items()):
        online = [o for o in offers if o["online"]]
        priced = online or offers
        out.append(
            {
                "model": model,
                "offers": offers,
                "online": len(online),
                "cheapest_input": min(o["input_price"] for o in priced),
                "cheapest_output": min(o["output_price"] for o in priced),
            }
        )
    return out


def my_jobs(*, user: AbstractBaseUser, limit: int = 50) -> list[Job]:
    """The user's jobs of every state, newest first (staff: everyone's)."""
    jobs = Job.objects.all() if user.is_staff else Job.objects.filter(owner=user)
    return list(jobs.select_related("provider").order_by("-created_at", "id")[:limit])


def job_for(*, user: AbstractBaseUser, job_id: str) -> Job | None:
    """The job if ``user`` may see it, else None (someone else's is like a missing one)."""
    try:
        return selectors.job_get(job_id=job_id, user=user)
    except ApiError:
        return None


def job_detail(job: Job) -> dict[str, Any]:
    detail = selectors.job_detail(job)
    detail["receipt"] = job.receipt
    detail["txs"] = [
        {"purpose": t.purpose, "kind": t.kind, "tx_id": t.tx_id, "status": t.status, "height": t.height}
        for t in job.txs.order_by("id")
    ]
    return detail


def my_deposits(*, user: AbstractBaseUser) -> list[dict[str, Any]]:
    return [selectors.deposit_detail(d) for d in selectors.deposit_list(user=user)]


def deposit_for(*, user: AbstractBaseUser, deposit_id: str) -> Deposit | None:
    try:
        return selectors.deposit_get(deposit_id=deposit_id, user=user)
    except ApiError:
        return None
