"""The marketplace's pages: offers, providers, my jobs, a job with its receipt and settlement."""

from __future__ import annotations

import pytest

from marketplace.models import Job

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]
pytestmark = pytest.mark.django_db


def test_the_market_page_needs_a_login(client) -> None:
    assert client.get("/market/").status_code == 302


def test_offers_providers_and_my_settled_job_with_its_receipt_and_settlement(market, user) -> None:
    provider = market.provider("p1", input_price=100, output_price=200)
    market.http.force_login(user)
    answer = market.submit(max_price=10_000)
    assert answer.status_code == 202, answer.content
    job_id = answer.json()["id"]
    assert Job.objects.get(pk=job_id).owner_id == user.pk

    page = market.http.get("/market/").content.decode()
    assert "smollm2:135m" in page or provider.model in page
    assert "p1" in page and "online" in page
    assert job_id in page, "my jobs list my job"

    market.pump()
    provider.run_all(input_tokens=12, output_tokens=5)
    market.pump()
    job_page = market.http.get(f"/market/jobs/{job_id}").content.decode()
    assert 'id="job-state">settled' in job_page
    assert "Hello there!" in job_page
    assert 'id="job-receipt"' in job_page and provider.address in job_page
    job = Job.objects.get(pk=job_id)
    assert f"/explorer/escrows/{job.escrow_id}" in job_page
    assert "job_pay" in job_page and "job_refund" in job_page
    fragment = market.http.get("/market/?fragment=jobs").content.decode()
    assert job_id in fragment and "settled" in fragment

    counts = market.http.get("/?fragment=market").content.decode()
    assert 'data-state="settled">1<' in counts


def test_someone_elses_job_is_not_found_and_search_finds_only_mine(market, user, django_user_model) -> None:
    market.provider("p1")
    market.http.force_login(user)
    job_id = market.submit().json()["id"]
    assert market.http.get("/search", {"q": job_id})["Location"] == f"/market/jobs/{job_id}"

    other = django_user_model.objects.create_user(username="mallory", password="another long one 2")
    market.http.force_login(other)
    assert market.http.get(f"/market/jobs/{job_id}").status_code == 404
    assert job_id not in market.http.get("/market/").content.decode()
