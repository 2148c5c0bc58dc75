"""Fixtures of the marketplace's tests.

Every test gets an empty data directory (the coordinator's key is created there with
fast KDF parameters), a chain client that is the ledger in the test database, and a
recorder instead of the Celery broker: tests run the tasks' services themselves
(``Market.pump``), so each step is deterministic and visible.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client

from chain import services as chain_services
from chain.protocol.keys import Key
from marketplace import chain, conf, kicks
from marketplace.keys import coordinator_key
from marketplace.models import OutboxTx
from marketplace.services import dispatch, outbox, providers
from marketplace.tests.support import (
    CHAIN_ID,
    CLIENT_FUNDS,
    COORDINATOR_FUNDS,
    FAST_KDF,
    MODEL,
    LedgerClient,
    Payer,
    ScriptedProvider,
    make_genesis,
    named_key,
)
from wallet import keystore


@pytest.fixture(autouse=True)
def market_env(monkeypatch: pytest.MonkeyPatch, settings, tmp_path: Path) -> Path:
    """An empty data directory, fast key derivations, no node from the environment, no throttling,
    and rate counters (in the cache) that start empty."""
    monkeypatch.setattr(keystore, "WRITE_PARAMS", FAST_KDF)
    monkeypatch.setattr(conf, "STATUS_MAX_AGE_S", 0.0)
    monkeypatch.setattr(conf, "PUBLIC_RATE", "100000/min")
    monkeypatch.delenv("AITBC_NODE_URL", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    settings.DATA_DIR = data
    cache.clear()
    return data


@pytest.fixture(autouse=True)
def kicked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple]]:
    """The tasks enqueued after commit, recorded instead of sent to a broker."""
    calls: list[tuple[str, tuple]] = []
    monkeypatch.setattr(kicks, "enqueue", lambda name, *args, countdown=None: calls.append((name, args)))
    return calls


@dataclass
class Market:
    """The coordinator in this process over the test database's ledger, with two paying clients."""

    ledger: LedgerClient
    coordinator: Key
    http: Client
    alice: Payer
    bob: Payer

    def pump(self, max_rounds: int = 40) -> int:
        """Run the outbox and dispatch, producing blocks, until no transaction is in flight; the rounds used."""
        for rounds in range(max_rounds):
            outbox.outbox_process(client=self.ledger)
            dispatch.dispatch_pending()
            if not OutboxTx.objects.filter(status__in=(OutboxTx.QUEUED, OutboxTx.SUBMITTED)).exists():
                return rounds
            self.ledger.produce()
        raise AssertionError(
            "the outbox did not settle: "
            + str(list(OutboxTx.objects.exclude(status__in=OutboxTx.FINAL).values("purpose", "status", "error_code")))
        )

    def required_blocks(self) -> int:
        return chain.required_escrow_blocks(chain.chain_view(self.ledger))

    def provider(self, name: str, *, online: bool = True, **kwargs: Any) -> ScriptedProvider:
        scripted = ScriptedProvider(self.http, named_key(f"provider/{name}"), name, self.coordinator.address, **kwargs)
        scripted.register()
        if online:
            providers.provider_connected(address=scripted.address)
        return scripted

    def lock(self, payer: Payer, amount: int, **kwargs: Any) -> dict[str, Any]:
        if kwargs.get("timeout_blocks") is None:
            kwargs["timeout_blocks"] = self.required_blocks() + 20
        return payer.lock(amount=amount, arbiter=self.coordinator.address, **kwargs)

    def submit(
        self,
        payer: Payer | None = None,
        *,
        max_price: int = 10_000,
        max_tokens: int = 16,
        prompt: str = "Hi",
        payment: dict[str, Any] | None = None,
        http: Client | None = None,
        **extra: Any,
    ):
        if payment is None:
            payment = {"escrow_tx": self.lock(payer or self.alice, max_price)}
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "max_price": max_price, "payment": payment}
        body |= extra
        return (http or self.http).post("/v1/jobs", data=json.dumps(body), content_type="application/json")


@pytest.fixture
def ledger(db, monkeypatch: pytest.MonkeyPatch) -> Iterator[LedgerClient]:
    """The test database's ledger, funding alice, bob and the coordinator; the coordinator's client."""
    coordinator = coordinator_key()
    validator = named_key("validator")
    genesis = make_genesis(
        validator=validator,
        funded={
            named_key("alice").address: CLIENT_FUNDS,
            named_key("bob").address: CLIENT_FUNDS,
            coordinator.address: COORDINATOR_FUNDS,
        },
    )
    chain_services.genesis_load(genesis=genesis)
    client = LedgerClient(validator)
    monkeypatch.setattr(chain, "get_chain_client", lambda: client)
    yield client


@pytest.fixture
def market(ledger: LedgerClient, client: Client) -> Market:
    return Market(
        ledger=ledger,
        coordinator=coordinator_key(),
        http=client,
        alice=Payer(named_key("alice"), ledger, CHAIN_ID),
        bob=Payer(named_key("bob"), ledger, CHAIN_ID),
    )


@pytest.fixture(params=["in_memory", pytest.param("redis", marks=pytest.mark.redis)])
def channel_layer(request: pytest.FixtureRequest, settings, unique_name: Callable[[str], str]) -> str:
    """The in-memory channel layer, and the real Redis one: the tests using it run on both."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [url], "prefix": unique_name("test-marketplace")},
            }
        }
    else:
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    return request.param
