"""Which offers may run a job, and in which order (reads only).

An offer is eligible when its provider is online (seen within ``conf.OFFLINE_AFTER_S``),
serves the model, fits the job in its context, has a free slot, has not tried this job
before, and its **worst case** charge (``max_tokens`` of output and the input size
estimate, at its prices) fits the client's ``max_price``. Eligible offers go cheapest
worst case first, then best reputation: success rate, then latency, then uptime.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from chain.protocol.market import job_charge
from marketplace import conf
from marketplace.models import Offer, Provider

# The input size estimate, before any tokenizer has seen the text: about 3 UTF-8 bytes per
# token for English under the usual BPE vocabularies, plus the chat template's few tokens
# per message. Generous on purpose: underestimating would let a job through whose real
# charge the max price cannot cover (the provider would then be paid less than it metered).
BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 8
TOKENS_PER_INPUT = 8


def estimate_input_tokens(job_input: dict[str, Any]) -> int:
    if "prompt" in job_input:
        texts, messages = [job_input["prompt"]], 1
    else:
        texts = [message["content"] for message in job_input["messages"]]
        messages = len(texts)
    size = sum(len(text.encode("utf-8")) for text in texts)
    return math.ceil(size / BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * messages + TOKENS_PER_INPUT


def worst_case_charge(offer: Offer, *, input_tokens: int, max_tokens: int) -> int:
    return job_charge(
        input_tokens=input_tokens,
        output_tokens=max_tokens,
        input_price=offer.input_price,
        output_price=offer.output_price,
    )


@dataclass(frozen=True)
class Reputation:
    """From recorded outcomes. A newcomer starts at a success rate of 1/2 (Laplace's rule)."""

    completed: int
    failed: int
    rejected: int
    disputed: int
    success_rate: float
    avg_latency_ms: int | None
    uptime: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "completed": self.completed,
            "failed": self.failed,
            "rejected": self.rejected,
            "disputed": self.disputed,
            "success_rate": round(self.success_rate, 4),
            "avg_latency_ms": self.avg_latency_ms,
            "uptime": round(self.uptime, 4),
        }


def reputation(provider: Provider, now: datetime | None = None) -> Reputation:
    now = now or timezone.now()
    bad = provider.jobs_failed + provider.jobs_rejected + provider.jobs_disputed
    success_rate = (provider.jobs_completed + 1) / (provider.jobs_completed + bad + 2)
    latency = provider.latency_ms_total // provider.jobs_completed if provider.jobs_completed else None
    known_ms = max(1.0, (now - provider.first_registered_at).total_seconds() * 1000)
    return Reputation(
        completed=provider.jobs_completed,
        failed=provider.jobs_failed,
        rejected=provider.jobs_rejected,
        disputed=provider.jobs_disputed,
        success_rate=success_rate,
        avg_latency_ms=latency,
        uptime=min(1.0, provider.online_ms / known_ms),
    )


@dataclass(frozen=True)
class Candidate:
    offer: Offer
    worst_case: int
    reputation: Reputation

    def rank(self) -> tuple:
        latency = self.reputation.avg_latency_ms
        return (
            self.worst_case,
            -round(self.reputation.success_rate, 6),
            # Unknown latency sorts after every measured one: a known fast provider first.
            (latency is None, latency or 0),
            -round(self.reputation.uptime, 3),
            self.offer.provider_id,
        )


def online_since(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(seconds=conf.OFFLINE_AFTER_S)


def online_offers(model: str, now: datetime | None = None):
    """The offers for ``model`` of online providers, with their providers (for ranking)."""
    return Offer.objects.filter(
        model=model, withdrawn=False, provider__online=True, provider__last_seen_at__gte=online_since(now)
    ).select_related("provider")


def eligible_offers(
    *,
    model: str,
    max_price: int,
    input_tokens: int,
    max_tokens: int,
    exclude: Iterable[str] = (),
    require_capacity: bool = True,
    now: datetime | None = None,
) -> list[Candidate]:
    """Offers that may run the job, best first (see the module's docstring)."""
    now = now or timezone.now()
    offers = online_offers(model, now)
    exclude = list(exclude)
    if exclude:
        offers = offers.exclude(provider_id__in=exclude)
    if require_capacity:
        offers = offers.filter(active__lt=F("concurrency"))
    return rank_offers(offers, max_price=max_price, input_tokens=input_tokens, max_tokens=max_tokens, now=now)


def rank_offers(
    offers: Iterable[Offer], *, max_price: int, input_tokens: int, max_tokens: int, now: datetime | None = None
) -> list[Candidate]:
    """Of ``offers`` (online ones for the job's model, providers loaded), those that fit the job, best first."""
    now = now or timezone.now()
    candidates = []
    for offer in offers:
        if input_tokens + max_tokens > offer.context_length:
            continue
        worst = worst_case_charge(offer, input_tokens=input_tokens, max_tokens=max_tokens)
        if worst > max_price:
            continue
        candidates.append(Candidate(offer, worst, reputation(offer.provider, now)))
    candidates.sort(key=Candidate.rank)
    return candidates


def cheapest_worst_case(*, model: str, input_tokens: int, max_tokens: int, now: datetime | None = None) -> int | None:
    """The lowest worst case charge among online offers for ``model`` (for error messages)."""
    offers = Offer.objects.filter(
        model=model, withdrawn=False, provider__online=True, provider__last_seen_at__gte=online_since(now)
    )
    charges = [
        worst_case_charge(offer, input_tokens=input_tokens, max_tokens=max_tokens)
        for offer in offers
        if input_tokens + max_tokens <= offer.context_length
    ]
    return min(charges) if charges else None
