"""Rate limits: over its rate a caller gets 429 with Retry-After, nothing is written, and the window reopens.

Time is moved with a fake clock (``aitbc_site.throttling.clock``), never waited for.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from aitbc_site import throttling
from chain.mempool import mempool
from chain.models import Transaction
from chain.protocol.tx import tx_id
from chain.tests.support import transfer
from marketplace.gateway import keys
from marketplace.models import Job
from marketplace.tests import conftest as market_fixtures
from marketplace.tests.support import MODEL
from wallet import keystore

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]

# The marketplace's fixtures (a coordinator over the test database's ledger), for this module only.
market_env, kicked = market_fixtures.market_env, market_fixtures.kicked
ledger, market = market_fixtures.ledger, market_fixtures.market


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(throttling, "clock", fake)
    cache.clear()
    yield fake
    cache.clear()


def assert_limited(response, *, limit: str) -> int:
    """The answer is 429 in the one error shape, names ``limit``; its whole seconds of Retry-After."""
    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and limit in error["message"], error
    retry_after = response["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    return int(retry_after)


# -- the limiter ----------------------------------------------------------------------------------


def test_a_rate_allows_its_burst_then_one_request_per_interval(clock) -> None:
    rate = throttling.Rate(3, 60)
    for _ in range(3):
        throttling.take(scope="t", caller="a", rate=rate, what="requests")
    with pytest.raises(throttling.RateLimited) as limited:
        throttling.take(scope="t", caller="a", rate=rate, what="requests")
    assert limited.value.headers == {"Retry-After": "20"} and "at most 3 per minute" in limited.value.message
    throttling.take(scope="t", caller="b", rate=rate, what="requests")  # another caller has its own bucket
    clock.advance(19.5)
    with pytest.raises(throttling.RateLimited) as still:
        throttling.take(scope="t", caller="a", rate=rate, what="requests")
    assert still.value.headers == {"Retry-After": "1"}
    clock.advance(0.5)
    throttling.take(scope="t", caller="a", rate=rate, what="requests")


@pytest.mark.parametrize(
    ("text", "rate"),
    [("600/min", (600, 60)), ("200/s", (200, 1)), (" 20 / hour ", (20, 3600)), ("5/day", (5, 86400)), ("7/m", (7, 60))],
)
def test_rates_are_read_in_drfs_syntax(text: str, rate: tuple[int, int]) -> None:
    parsed = throttling.parse_rate(text, setting="X")
    assert (parsed.count, parsed.period) == rate


@pytest.mark.parametrize("text", ["", "600", "0/min", "-1/min", "10/week", "ten/min", "1.5/s"])
def test_a_bad_rate_names_its_setting(text: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="AITBC_CHAIN_SUBMIT_RATE"):
        throttling.parse_rate(text, setting="AITBC_CHAIN_SUBMIT_RATE")


def test_the_client_address_trusts_forwarded_for_only_behind_configured_proxies(rf, settings) -> None:
    request = rf.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7")
    settings.PROXY_COUNT = 0
    assert throttling.client_address(request) == "10.0.0.2"
    settings.PROXY_COUNT = 1
    assert throttling.client_address(request) == "203.0.113.7"
    settings.PROXY_COUNT = 2
    assert throttling.client_address(request) == "6.6.6.6"


# -- the faucet -----------------------------------------------------------------------------------


@pytest.fixture
def faucet(tmp_path: Path, settings, node) -> str:
    """The chain tests' funded ``dave`` as the faucet (2 grants per hour); its address."""
    dave = node.keys.funded[3]
    path, password_file = tmp_path / "faucet.keystore.json", tmp_path / "faucet.password"
    path.write_text(keystore.keystore_json(keystore.encrypt_key(dave, "faucet password")))
    password_file.write_text("faucet password\n")
    settings.FAUCET_KEYSTORE, settings.FAUCET_PASSWORD_FILE = path, password_file
    settings.FAUCET_PER_HOUR = 2
    return dave.address


def sent_by(address: str) -> int:
    """Transactions from ``address`` this node holds: pending, or decided by a block."""
    return len(mempool.nonces_of(address)) + Transaction.objects.filter(sender=address).count()


@pytest.mark.django_db
def test_the_faucet_over_its_rate_pays_nothing_until_the_window_passes(browser, node, faucet, clock) -> None:
    to = node.keys.funded[0].address

    def grant():
        return browser.post("/v1/faucet", {"address": to}, content_type="application/json")

    assert [grant().status_code for _ in range(2)] == [202, 202]
    paid = sent_by(faucet)
    assert paid == 2
    wait = assert_limited(grant(), limit="at most 2 per hour")
    assert sent_by(faucet) == paid
    # Another user has their own grants.
    other = Client()
    other.force_login(get_user_model().objects.create_user("erin"))
    assert other.post("/v1/faucet", {"address": to}, content_type="application/json").status_code == 202
    clock.advance(wait)
    assert grant().status_code == 202
    assert sent_by(faucet) == paid + 2


# -- transaction submission -----------------------------------------------------------------------


@pytest.mark.django_db
def test_transaction_submission_over_its_rate_admits_nothing_until_the_window_passes(node, settings, clock) -> None:
    settings.CHAIN_SUBMIT_RATE = "2/min"
    alice, bob = node.keys.funded[0], node.keys.funded[1]
    txs = [transfer(alice, nonce, to=bob.address, amount=1) for nonce in range(5)]
    http = Client()

    def submit(tx, address="127.0.0.1"):
        return http.post("/v1/chain/transactions", json.dumps(tx), content_type="application/json", REMOTE_ADDR=address)

    def batch(batch_txs, address="127.0.0.1"):
        body = json.dumps(batch_txs)
        return http.post("/v1/chain/transactions/batch", body, content_type="application/json", REMOTE_ADDR=address)

    assert [submit(tx).status_code for tx in txs[:2]] == [202, 202]
    wait = assert_limited(submit(txs[2]), limit="at most 2 per minute")
    assert_limited(batch(txs[2:]), limit="at most 2 per minute")
    assert not any(tx_id(t) in mempool for t in txs[2:])
    assert sent_by(alice.address) == 2
    # Another address is counted on its own; a batch counts as one request.
    answer = batch(txs[2:], address="198.51.100.4")
    assert answer.status_code == 200 and all("id" in r for r in answer.json()), answer.content
    assert sent_by(alice.address) == 5
    clock.advance(wait)
    assert submit(transfer(alice, 5, to=bob.address, amount=1)).status_code == 202


def test_the_default_submission_rate_counts_batches_so_the_benchmarks_stay_far_below_it(settings) -> None:
    rate = throttling.parse_rate(settings.CHAIN_SUBMIT_RATE, setting="AITBC_CHAIN_SUBMIT_RATE")
    # bench/ledger.py sends batches of 5,000 and bench/network.py four batches a second.
    assert rate.count / rate.period >= 100


# -- job submission -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_job_submission_over_its_rate_locks_nothing_until_the_window_passes(market, settings, clock) -> None:
    settings.MARKET_JOB_RATE = "2/min"
    market.provider("p1")
    assert [market.submit().status_code for _ in range(2)] == [202, 202]
    lock = market.lock(market.alice, 10_000)
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 16, "max_price": 10_000, "payment": {"escrow_tx": lock}}

    def submit(http):
        return http.post("/v1/jobs", data=json.dumps(body), content_type="application/json")

    wait = assert_limited(submit(market.http), limit="at most 2 per minute")
    assert Job.objects.count() == 2
    assert tx_id(lock) not in mempool and not Transaction.objects.filter(id=tx_id(lock)).exists()
    # A logged-in user is counted as themself, not by address.
    market.http.force_login(get_user_model().objects.create_user("frank"))
    assert market.submit().status_code == 202
    market.http.logout()
    clock.advance(wait)
    answer = submit(market.http)
    assert answer.status_code == 202, answer.content
    assert Job.objects.count() == 4


# -- the gateway ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_gateway_over_a_keys_rate_starts_no_job_until_the_window_passes(market, clock) -> None:
    owner = get_user_model().objects.create_user("grace")
    market.http.force_login(owner)
    lock = market.lock(market.alice, 1_000_000, timeout_blocks=3 * market.required_blocks())
    opened = market.http.post("/v1/deposits", data={"escrow_tx": lock}, content_type="application/json")
    assert opened.status_code == 202, opened.content
    market.pump()
    market.provider("p1")
    secret = keys.apikey_create(owner=owner, deposit_id=opened.json()["id"], rate_limit=2).secret
    http, auth = Client(), {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    chat = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False})

    assert [http.get("/v1/models", **auth).status_code for _ in range(2)] == [200, 200]
    openai = http.post("/v1/chat/completions", chat, content_type="application/json", **auth)
    assert openai.status_code == 429 and openai.json()["error"]["code"] == "rate_limit_exceeded"
    assert "at most 2 per minute" in openai.json()["error"]["message"]
    assert openai["Retry-After"].isdigit() and int(openai["Retry-After"]) >= 1
    ollama = http.post("/api/chat", chat, content_type="application/json", **auth)
    assert ollama.status_code == 429 and "at most 2 per minute" in ollama.json()["error"]
    assert ollama["Retry-After"].isdigit()
    assert Job.objects.count() == 0
    clock.advance(int(ollama["Retry-After"]))
    assert http.get(f"/k/{secret}/api/tags").status_code == 200
