"""Matching: cheapest eligible offer under the max price, reputation breaks ties, concurrency is a hard limit."""

from __future__ import annotations

import pytest
from django.db.models import F

from marketplace.models import Job, Offer, Provider
from marketplace.services import dispatch, matching, providers

pytestmark = pytest.mark.django_db


def funded_jobs(market, count: int, **kwargs) -> list[str]:
    ids = []
    for _ in range(count):
        response = market.submit(**kwargs)
        assert response.status_code == 202, response.content
        ids.append(response.json()["id"])
    market.pump()
    return ids


def test_the_cheapest_offer_under_the_max_price_gets_the_job(market) -> None:
    cheap = market.provider("cheap", input_price=50, output_price=100)
    market.provider("dear", input_price=500, output_price=1000)
    [job_id] = funded_jobs(market, 1)
    assert Job.objects.get(pk=job_id).provider_id == cheap.address


def test_an_offer_whose_worst_case_exceeds_the_max_price_is_skipped(market) -> None:
    # Worst case: the input estimate and all of max_tokens at the offer's prices.
    fits = market.provider("fits", input_price=900, output_price=900)
    market.provider("cheaper-but-short", input_price=10, output_price=10, context_length=20)
    estimate = matching.estimate_input_tokens({"prompt": "Hi"})
    worst = matching.job_charge(input_tokens=estimate, output_tokens=16, input_price=900, output_price=900)
    [job_id] = funded_jobs(market, 1, max_price=worst)
    assert Job.objects.get(pk=job_id).provider_id == fits.address
    response = market.submit(max_price=worst - 1)
    # The short-context offer cannot hold the job at all, and the other is one uait too dear.
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_eligible_offer"


def test_reputation_breaks_a_price_tie(market) -> None:
    shaky = market.provider("shaky")
    solid = market.provider("solid")
    Provider.objects.filter(pk=shaky.address).update(jobs_completed=5, jobs_failed=5)
    Provider.objects.filter(pk=solid.address).update(jobs_completed=9, jobs_failed=1)
    [job_id] = funded_jobs(market, 1)
    assert Job.objects.get(pk=job_id).provider_id == solid.address


def test_among_equal_success_rates_the_faster_provider_wins(market) -> None:
    slow = market.provider("slow")
    fast = market.provider("fast")
    Provider.objects.filter(pk=slow.address).update(jobs_completed=4, latency_ms_total=40_000)
    Provider.objects.filter(pk=fast.address).update(jobs_completed=4, latency_ms_total=4_000)
    [job_id] = funded_jobs(market, 1)
    assert Job.objects.get(pk=job_id).provider_id == fast.address


def test_a_provider_at_its_concurrency_limit_gets_no_more_jobs(market) -> None:
    one = market.provider("one", concurrency=2, input_price=10)
    two = market.provider("two", concurrency=1, input_price=20)
    ids = funded_jobs(market, 5)
    jobs = {job.id: job for job in Job.objects.filter(pk__in=ids)}
    held = [jobs[i].provider_id for i in ids]
    assert held.count(one.address) == 2 and held.count(two.address) == 1
    assert [jobs[i].state for i in ids].count(Job.FUNDED) == 2  # waiting, not overbooked
    assert Offer.objects.filter(active__gt=F("concurrency")).count() == 0
    # A slot frees up: the oldest waiting job takes it.
    one.run_all()
    dispatch.dispatch_pending()
    waiting = [i for i in ids if jobs[i].state == Job.FUNDED]
    assert Job.objects.get(pk=waiting[0]).provider_id == one.address


def test_slot_taking_is_a_conditional_update(market) -> None:
    one = market.provider("one", concurrency=1)
    offer = Offer.objects.get(provider_id=one.address)
    # A dispatcher that read a stale "free" offer cannot push it past its limit.
    Offer.objects.filter(pk=offer.pk).update(active=1)
    [job_id] = funded_jobs(market, 1)
    assert Job.objects.get(pk=job_id).state == Job.FUNDED
    assert Offer.objects.get(pk=offer.pk).active == 1


def test_a_silent_provider_is_not_eligible(market, settings) -> None:
    quiet = market.provider("quiet", input_price=1)
    loud = market.provider("loud", input_price=2)
    from datetime import timedelta

    from django.utils import timezone

    Provider.objects.filter(pk=quiet.address).update(last_seen_at=timezone.now() - timedelta(seconds=31))
    [job_id] = funded_jobs(market, 1)
    assert Job.objects.get(pk=job_id).provider_id == loud.address
    assert providers.providers_mark_silent_offline() == 1
    assert not Provider.objects.get(pk=quiet.address).online


def test_input_estimate_grows_with_the_input() -> None:
    short = matching.estimate_input_tokens({"prompt": "Hi"})
    long = matching.estimate_input_tokens({"prompt": "Hi " * 300})
    chat = matching.estimate_input_tokens({"messages": [{"role": "user", "content": "Hi"}] * 3})
    assert short < chat < long
    assert long >= 900 // matching.BYTES_PER_TOKEN
