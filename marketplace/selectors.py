"""Reads of the marketplace, scoped to who may see them (``interfaces.md``, who may read what).

A job is visible to its owner, to staff, and to whoever holds its job token (anonymous
submissions); to anyone else it does not exist (404, like a missing one), so job ids
cannot be probed. Providers and offers are public.
"""

from __future__ import annotations

import hmac
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Prefetch, QuerySet
from django.utils import timezone

from aitbc_site.errors import ApiError
from chain.client import ChainClient
from marketplace import chain
from marketplace.keys import coordinator_address
from marketplace.models import Deposit, Job, Offer, Provider
from marketplace.services import matching
from marketplace.services.jobs import hash_job_token


def _not_found(what: str) -> ApiError:
    return ApiError(f"no {what}", code="not_found", status=404)


def job_get(*, job_id: str, user: AbstractBaseUser | AnonymousUser | None, token: str | None = None) -> Job:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise _not_found(f"job {job_id}")
    if user is not None and user.is_authenticated and (user.is_staff or job.owner_id == user.pk):
        return job
    if token and job.token_hash and hmac.compare_digest(job.token_hash, hash_job_token(token)):
        return job
    raise _not_found(f"job {job_id}")


def job_list(*, user: AbstractBaseUser, states: list[str] | None = None, model: str | None = None) -> QuerySet[Job]:
    """The caller's jobs (staff: everyone's); active ones unless ``states`` says otherwise."""
    jobs = Job.objects.all() if user.is_staff else Job.objects.filter(owner=user)
    jobs = jobs.filter(state__in=states) if states else jobs.filter(state__in=Job.ACTIVE)
    if model:
        jobs = jobs.filter(model=model)
    return jobs.select_related("provider").order_by("-created_at", "id")


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "reason": job.reason,
        "model": job.model,
        "max_price": job.max_price,
        "payment": job.payment,
        "provider": job.provider_id,
        "charge": job.charge,
        "created_at": job.created_at,
        "expires_at": job.expires_at,
    }


def job_detail(job: Job) -> dict[str, Any]:
    return job_summary(job) | {
        "input": job.input,
        "options": job.options,
        "input_tokens_estimate": job.input_tokens_estimate,
        "payer": job.payer,
        "escrow_id": job.escrow_id,
        "escrow_amount": job.escrow_amount,
        "escrow_timeout_height": job.escrow_timeout_height,
        "deposit": job.deposit_id,
        "attempts": job.attempts,
        "output": job.output if job.completed_at else None,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "refund": job.refund,
        "disputed_at": job.disputed_at,
        "dispute_reason": job.dispute_reason,
        "funded_at": job.funded_at,
        "assigned_at": job.assigned_at,
        "started_at": job.started_at,
        "completed_at": job.completed_at,
        "settled_at": job.settled_at,
        "refunded_at": job.refunded_at,
        "events": [
            {"state": e.state, "reason": e.reason, "provider": e.provider, "at": e.at} for e in job.events.all()
        ],
    }


def provider_list() -> list[dict[str, Any]]:
    now = timezone.now()
    since = matching.online_since(now)
    offers = Prefetch("offers", queryset=Offer.objects.filter(withdrawn=False).order_by("model"))
    providers = Provider.objects.prefetch_related(offers).order_by("address")
    return [
        {
            "address": p.address,
            "name": p.name,
            "url": p.url,
            "online": p.online and p.last_seen_at is not None and p.last_seen_at >= since,
            "last_seen_at": p.last_seen_at,
            "registered_at": p.registered_at,
            "reputation": matching.reputation(p, now).as_dict(),
            "offers": [
                {
                    "model": o.model,
                    "input_price": o.input_price,
                    "output_price": o.output_price,
                    "context_length": o.context_length,
                    "concurrency": o.concurrency,
                    "active": o.active,
                }
                for o in p.offers.all()
            ],
        }
        for p in providers
    ]


def offer_list(*, model: str | None = None, online_only: bool = False) -> list[dict[str, Any]]:
    since = matching.online_since()
    offers = Offer.objects.filter(withdrawn=False).select_related("provider").order_by("model", "input_price", "id")
    if model:
        offers = offers.filter(model=model)
    rows = [
        {
            "provider": o.provider_id,
            "provider_name": o.provider.name,
            "model": o.model,
            "input_price": o.input_price,
            "output_price": o.output_price,
            "context_length": o.context_length,
            "concurrency": o.concurrency,
            "active": o.active,
            "online": o.provider.online and o.provider.last_seen_at is not None and o.provider.last_seen_at >= since,
        }
        for o in offers
    ]
    return [row for row in rows if row["online"]] if online_only else rows


def deposit_get(*, deposit_id: str, user: AbstractBaseUser) -> Deposit:
    deposit = Deposit.objects.filter(pk=deposit_id).first()
    if deposit is None or not (user.is_staff or deposit.owner_id == user.pk):
        raise _not_found(f"deposit {deposit_id}")
    return deposit


def deposit_list(*, user: AbstractBaseUser) -> QuerySet[Deposit]:
    return Deposit.objects.filter(owner=user).order_by("-created_at", "id")


def deposit_detail(deposit: Deposit) -> dict[str, Any]:
    return {
        "id": deposit.id,
        "state": deposit.state,
        "reason": deposit.reason,
        "payer": deposit.payer,
        "escrow_id": deposit.escrow_id,
        "amount": deposit.amount,
        "timeout_height": deposit.timeout_height,
        "reserved": deposit.reserved,
        "charged": deposit.charged,
        "paid": deposit.paid,
        "owed": deposit.charged - deposit.paid,
        "available": deposit.available,
        "refunded": deposit.refunded,
        "created_at": deposit.created_at,
        "opened_at": deposit.opened_at,
        "closed_at": deposit.closed_at,
    }


def coordinator_info(*, client: ChainClient | None = None) -> dict[str, Any]:
    """``GET /v1/coordinator`` (docs/marketplace.md)."""
    client = client or chain.get_chain_client()
    view = chain.chain_view(client)
    return {
        "address": coordinator_address(),
        "chain_id": view.chain_id,
        "node_url": getattr(client, "base_url", ""),
        "min_escrow_blocks": chain.required_escrow_blocks(view),
        "min_fee": view.min_fee,
    }
