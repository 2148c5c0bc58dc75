"""Helpers of the marketplace's tests: a ledger client, paying clients, scripted providers.

``LedgerClient`` is a ``ChainClient`` over the chain app's own services on the test
database: the real ledger (admission, blocks, escrows), driven block by block by the
test instead of a node's timer. The process tests use a real node (``HttpChainClient``).

``ScriptedProvider`` is a provider written from ``chain.protocol.market`` alone, as the
real daemon is: it registers with a signed body, reads its JOBs, and reports over the
HTTP endpoints with signed receipts (and can lie, to test the refusals).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.test import Client

from chain import selectors as chain_selectors
from chain import services as chain_services
from chain.models import ChainState
from chain.protocol.keys import Key
from chain.protocol.market import build_provider_auth, build_receipt
from chain.protocol.tx import build_transaction
from wallet.keystore import KdfParams

FAST_KDF = KdfParams(opslimit=1, memlimit=8192)
MODEL = "smollm2:135m"
CHAIN_ID = "aitbc-market-test-1"
MIN_FEE = 1000
CLIENT_FUNDS = 10**12
COORDINATOR_FUNDS = 10**10


def named_key(name: str) -> Key:
    """A fixed key per name, so failures reproduce."""
    return Key(hashlib.sha256(b"aitbc-marketplace-tests/" + name.encode()).digest())


def make_genesis(
    *, validator: Key, funded: dict[str, int], chain_id: str = CHAIN_ID, block_time_ms: int = 1000
) -> dict[str, Any]:
    return {
        "chain_id": chain_id,
        "genesis_time": "2026-11-27T00:00:00Z",
        "params": {"block_time_ms": block_time_ms, "min_fee": MIN_FEE, "max_block_txs": 5000, "min_escrow_blocks": 10},
        "validators": [{"address": validator.address, "pubkey": validator.pubkey_hex, "power": 1}],
        "allocations": [{"address": address, "amount": amount} for address, amount in funded.items()],
    }


class LedgerClient:
    """``chain.client.ChainClient`` on the test database's ledger; ``produce()`` makes the next block."""

    def __init__(self, validator: Key) -> None:
        self.validator = validator

    def _state(self) -> ChainState:
        return chain_services.chain_state()

    def status(self) -> dict[str, Any]:
        return chain_selectors.status(self._state())

    def account(self, address: str) -> dict[str, Any]:
        return chain_selectors.account_detail(address)

    def _admit(self, txs: list[dict[str, Any]]):
        state = self._state()
        # Through JSON, as over the wire: the node never shares objects with its caller.
        wire = json.loads(json.dumps(txs))
        return chain_services.mempool_admit(txs=wire, chain_id=state.chain_id, min_fee=state.params["min_fee"])

    def submit(self, tx: dict[str, Any]) -> str:
        [result] = self._admit([tx])
        if result.error is not None:
            raise result.error
        return result.id

    def submit_batch(self, txs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [result.as_dict() for result in self._admit(txs)]

    def transaction(self, tx_id: str) -> dict[str, Any]:
        return chain_selectors.transaction_detail(tx_id)

    def escrow(self, escrow_id: str) -> dict[str, Any]:
        return chain_selectors.escrow_detail(escrow_id)

    def blocks(self, start: int, limit: int) -> list[dict[str, Any]]:
        return chain_selectors.blocks_range(start, limit)

    def produce(self, count: int = 1) -> None:
        for _ in range(count):
            state = self._state()
            now_ms = int(state.latest_block_time.timestamp() * 1000) + state.params["block_time_ms"]
            assert chain_services.block_produce(key=self.validator, now_ms=now_ms) is not None

    @property
    def height(self) -> int:
        return self._state().height

    def balance(self, address: str) -> int:
        return self.account(address)["balance"]

    def pending(self) -> int:
        return self.status()["mempool_size"]


class Payer:
    """A client paying with its own signed escrow_locks (non-custodial); keeps its next nonce."""

    def __init__(self, key: Key, client: Any, chain_id: str) -> None:
        self.key = key
        self.client = client
        self.chain_id = chain_id
        self.nonce: int | None = None

    @property
    def address(self) -> str:
        return self.key.address

    def lock(
        self,
        *,
        amount: int,
        arbiter: str,
        timeout_blocks: int,
        label: str = "job",
        nonce: int | None = None,
        fee: int = MIN_FEE,
        height: int | None = None,
    ) -> dict[str, Any]:
        if nonce is None:
            if self.nonce is None:
                self.nonce = int(self.client.account(self.address)["nonce"])
            nonce = self.nonce
            self.nonce += 1
        height = int(self.client.status()["height"]) if height is None else height
        return build_transaction(
            self.key,
            chain_id=self.chain_id,
            type="escrow_lock",
            nonce=nonce,
            fee=fee,
            payload={"job_id": label, "amount": amount, "arbiter": arbiter, "timeout_height": height + timeout_blocks},
        )

    def forget_nonce(self) -> None:
        self.nonce = None


@dataclass
class ScriptedProvider:
    """A provider written from the protocol module, talking to the coordinator over HTTP."""

    http: Client
    key: Key
    name: str
    coordinator: str
    input_price: int = 100
    output_price: int = 200
    concurrency: int = 2
    context_length: int = 4096
    model: str = MODEL
    token: str | None = None
    handled: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return self.key.address

    def offers(self) -> list[dict[str, Any]]:
        return [
            {
                "model": self.model,
                "input_price": self.input_price,
                "output_price": self.output_price,
                "context_length": self.context_length,
                "concurrency": self.concurrency,
            }
        ]

    def register(self) -> dict[str, Any]:
        body = build_provider_auth(self.key, coordinator=self.coordinator, purpose="register")
        body |= {"name": self.name, "url": f"http://{self.name}.invalid", "offers": self.offers()}
        response = self.http.post("/v1/providers/register", data=json.dumps(body), content_type="application/json")
        assert response.status_code == 200, response.content
        self.token = response.json()["token"]
        return response.json()

    def _headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.token}"}

    def post(self, path: str, body: Any):
        return self.http.post(path, data=json.dumps(body), content_type="application/json", **self._headers())

    def heartbeat(self, active: int = 0):
        return self.post("/v1/providers/heartbeat", {"active": active})

    def poll(self):
        return self.post("/v1/providers/poll", {})

    def send(self, job_id: str, message: dict[str, Any]):
        return self.post(f"/v1/providers/jobs/{job_id}/events", {"job_id": job_id, **message})

    def accept(self, job_id: str):
        return self.send(job_id, {"type": "accepted"})

    def receipt(
        self,
        job: dict[str, Any],
        output: str,
        *,
        input_tokens: int = 12,
        output_tokens: int = 5,
        key: Key | None = None,
        edit: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        signed = build_receipt(
            key or self.key,
            job_id=job["id"],
            coordinator=self.coordinator,
            model=job["model"],
            job_input={"model": job["model"], "input": job["input"], "options": job["options"]},
            output=output,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            started_ms=now_ms - 5,
            finished_ms=now_ms,
            finish_reason="stop",
        )
        if edit is not None:
            edit(signed["receipt"])  # after signing: the signature no longer matches
        return signed

    def result(self, job: dict[str, Any], output: str = "Hello there!", **kwargs: Any):
        signed = self.receipt(job, output, **kwargs)
        return self.send(job["id"], {"type": "result", "output": output, **signed})

    def assigned(self) -> list[dict[str, Any]]:
        """JOBs assigned to this provider that it has not handled yet (as pushed to its websocket)."""
        from marketplace.models import Job
        from marketplace.services.dispatch import job_wire

        jobs = Job.objects.filter(provider_id=self.address, state__in=Job.IN_FLIGHT).order_by("assigned_at")
        return [job_wire(job) for job in jobs if job.id not in self.handled]

    def run_all(self, **kwargs: Any) -> list[str]:
        """Accept and complete every job assigned to it; the ids it completed."""
        done = []
        for job in self.assigned():
            self.handled.add(job["id"])
            assert self.accept(job["id"]).status_code == 200
            response = self.result(job, **kwargs)
            assert response.status_code == 200, response.content
            done.append(job["id"])
        return done


async def close_layer() -> None:
    """Empty and close the channel layer a test used, so the next test starts clean."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if hasattr(layer, "flush"):
        await layer.flush()
    if hasattr(layer, "close_pools"):
        await layer.close_pools()


def wait_for_providers(url: str, count: int, timeout: float = 120) -> None:
    """Wait until ``count`` providers are online at the coordinator ``url`` (a devnet's)."""
    import requests

    from conftest import wait_until

    wait_until(
        lambda: sum(p["online"] for p in requests.get(f"{url}/v1/providers", timeout=10).json()) == count,
        timeout=timeout,
        message=f"{count} providers online",
    )


def bearer(secret: str) -> dict[str, str]:
    """Django test client keywords sending ``secret`` (an API key or provider token) as a Bearer."""
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
