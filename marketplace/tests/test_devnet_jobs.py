"""End to end on a devnet: real node, coordinator and providers running SmolLM2.

A funded client pays with its own escrow; the chain is read through the node's RPC to
check that exactly the metered price reached the provider and the rest came back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from chain.client import HttpChainClient
from chain.protocol.keys import Key
from chain.protocol.tx import build_transaction
from conftest import clean_env, devnet_running, find_free_port_range, wait_until
from marketplace.tests.support import wait_for_providers
from wallet.keystore import decrypt_keystore

ROOT = Path(__file__).resolve().parents[2]
STARTUP = 240
FEE = 1000


class Devnet:
    def __init__(self, data_dir: Path, process: subprocess.Popen) -> None:
        self.data_dir = data_dir
        self.process = process
        self.network = json.loads((data_dir / "devnet" / "network.json").read_text())
        self.url = self.network["coordinator"]["url"]
        self.node = HttpChainClient(self.network["nodes"][0]["rpc_url"])
        faucet = self.network["faucet"]
        self.faucet = decrypt_keystore(
            Path(faucet["keystore"]).read_text(), Path(faucet["password_file"]).read_text().strip()
        )
        self.coordinator = requests.get(f"{self.url}/v1/coordinator", timeout=10).json()

    def balance(self, address: str) -> int:
        return self.node.account(address)["balance"]

    def fund(self, amount: int) -> Key:
        client = Key.generate()
        tx = build_transaction(
            self.faucet,
            chain_id=self.network["chain_id"],
            type="transfer",
            nonce=self.node.account(self.faucet.address)["nonce"],
            fee=FEE,
            payload={"to": client.address, "amount": amount},
        )
        tx_id = self.node.submit(tx)
        wait_until(lambda: self.node.transaction(tx_id)["status"] == "committed", timeout=30, message="funding")
        return client

    def submit_job(self, client: Key, *, prompt: str, max_tokens: int, max_price: int) -> tuple[str, str]:
        status = self.node.status()
        lock = build_transaction(
            client,
            chain_id=status["chain_id"],
            type="escrow_lock",
            nonce=self.node.account(client.address)["nonce"],
            fee=FEE,
            payload={
                "job_id": f"e2e-{time.time_ns()}",
                "amount": max_price,
                "arbiter": self.coordinator["address"],
                "timeout_height": status["height"] + self.coordinator["min_escrow_blocks"] + 20,
            },
        )
        answer = requests.post(
            f"{self.url}/v1/jobs",
            timeout=30,
            json={
                "model": "smollm2:135m",
                "prompt": prompt,
                "max_tokens": max_tokens,
                "max_price": max_price,
                "payment": {"escrow_tx": lock},
            },
        )
        assert answer.status_code == 202, answer.text
        body = answer.json()
        return body["id"], body["token"]

    def job(self, job_id: str, token: str) -> dict:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", headers={"X-AITBC-Job-Token": token}, timeout=10).json()

    def wait_state(self, job_id: str, token: str, states: set[str], timeout: float = 120) -> dict:
        found: dict = {}

        def reached() -> bool:
            found.update(self.job(job_id, token))
            return found["state"] in states

        wait_until(reached, timeout=timeout, interval=0.2, message=f"job in {states}")
        return found


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    data_dir = tmp_path_factory.mktemp("devnet-jobs")
    args = ("--port", str(find_free_port_range(40)), "--providers", "2", "--param", "block_time_ms=500")
    with devnet_running(data_dir, *args, env=clean_env(AITBC_DATA_DIR=data_dir), startup_timeout=STARTUP) as (
        process,
        _network,
    ):
        net = Devnet(data_dir, process)
        wait_for_providers(net.url, 2)
        yield net


@pytest.mark.process
def test_a_paid_job_runs_smollm2_and_pays_exactly_the_metered_price(devnet: Devnet) -> None:
    client = devnet.fund(5_000_000)
    providers = {p["address"]: devnet.balance(p["address"]) for p in devnet.network["providers"]}
    before = devnet.balance(client.address)

    job_id, token = devnet.submit_job(client, prompt="Name three colors.", max_tokens=24, max_price=200_000)
    job = devnet.wait_state(job_id, token, {"settled", "failed", "refunded", "expired"})

    assert job["state"] == "settled", job
    assert job["output"].strip(), "the real model answered"
    assert 0 < job["output_tokens"] <= 24
    receipt = requests.get(f"{devnet.url}/v1/jobs/{job_id}/receipt", headers={"X-AITBC-Job-Token": token}, timeout=10)
    assert receipt.status_code == 200, receipt.text
    charge = job["charge"]
    offer = next(
        o for o in requests.get(f"{devnet.url}/v1/offers", timeout=10).json() if o["provider"] == job["provider"]
    )
    expected = -(-(job["input_tokens"] * offer["input_price"] + job["output_tokens"] * offer["output_price"]) // 1000)
    assert charge == expected

    escrow = devnet.node.escrow(job["escrow_id"])
    assert escrow["status"] == "closed" and escrow["paid"] == charge and escrow["remaining"] == 0
    assert devnet.balance(job["provider"]) - providers[job["provider"]] == charge
    # The client paid the lock's fee and the charge; everything else came back.
    assert before - devnet.balance(client.address) == FEE + charge


@pytest.mark.process
def test_a_provider_killed_mid_job_loses_it_and_the_client_pays_once(devnet: Devnet) -> None:
    client = devnet.fund(5_000_000)
    before = devnet.balance(client.address)
    balances = {p["address"]: devnet.balance(p["address"]) for p in devnet.network["providers"]}

    # Counting keeps the model generating for all of max_tokens, many seconds on this machine.
    job_id, token = devnet.submit_job(
        client, prompt="Count from 1 to 1000, one number per line:", max_tokens=400, max_price=400_000
    )
    running = devnet.wait_state(job_id, token, {"running", "settled", "completed"}, timeout=60)
    assert running["state"] == "running", "the job must still be running when its provider is killed"
    victim = next(p for p in devnet.network["providers"] if p["address"] == running["provider"])
    os.kill(victim["pid"], signal.SIGKILL)

    job = devnet.wait_state(job_id, token, {"settled", "failed", "refunded", "expired"}, timeout=180)
    assert job["state"] == "settled", job
    assert job["output_tokens"] > 0
    assert job["provider"] != victim["address"], "the job completed on the other provider"
    assert job["attempts"] >= 2
    charge = job["charge"]
    assert devnet.balance(victim["address"]) == balances[victim["address"]], "the killed provider is not paid"
    assert devnet.balance(job["provider"]) - balances[job["provider"]] == charge
    assert before - devnet.balance(client.address) == FEE + charge, "charged once, for the completed run only"
