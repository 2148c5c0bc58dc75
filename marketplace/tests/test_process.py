"""The coordinator against a REAL chain node process (``manage.py node``), and the whole web
process (``manage.py serve``: Daphne, embedded Celery worker and beat) with providers on
real websockets.

The node gets its own data directory and a genesis funding the clients and the
coordinator (200 ms blocks). The first tests run the coordinator in this process on the
test database, talking to the node over HTTP (``AITBC_NODE_URL``); the last runs it as
a subprocess, so dispatch, the outbox and the sweep run as Celery tasks kicked on commit
and by beat. Providers are scripted from ``chain.protocol.market``. Timeouts are guards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth import get_user_model
from websockets.sync.client import connect as ws_connect

from chain.client import HttpChainClient
from chain.protocol.keys import Key
from chain.protocol.market import build_provider_auth, build_receipt, job_charge, verify_receipt
from conftest import PROJECT_ROOT, clean_env, find_free_port, wait_until
from marketplace import conf
from marketplace.models import Deposit, Job, OutboxTx
from marketplace.services import deposits, dispatch, outbox, providers
from marketplace.tests.support import (
    CLIENT_FUNDS,
    COORDINATOR_FUNDS,
    FAST_KDF,
    MODEL,
    Payer,
    ScriptedProvider,
    make_genesis,
    named_key,
)
from wallet.keystore import encrypt_key, keystore_json

pytestmark = pytest.mark.process

CHAIN_ID = "aitbc-market-process-1"
COORDINATOR = named_key("process/coordinator")
GUARD_S = 120


@dataclass
class Node:
    url: str
    client: HttpChainClient
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def write_coordinator_key(data_dir: Path) -> None:
    """The coordinator's keystore where ``coordinator_key()`` looks (the genesis funds this key)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "coordinator.password").write_text("coordinator pass\n")
    keystore = encrypt_key(COORDINATOR, "coordinator pass", params=FAST_KDF, allow_weak_kdf=True)
    (data_dir / "coordinator.keystore.json").write_text(keystore_json(keystore))
    for name in ("coordinator.password", "coordinator.keystore.json"):
        os.chmod(data_dir / name, 0o600)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    home = tmp_path_factory.mktemp("market-node")
    validator = named_key("process/validator")
    genesis = make_genesis(
        validator=validator,
        chain_id=CHAIN_ID,
        block_time_ms=200,
        funded={
            named_key("alice").address: CLIENT_FUNDS,
            named_key("bob").address: CLIENT_FUNDS,
            COORDINATOR.address: COORDINATOR_FUNDS,
        },
    )
    (home / "genesis.json").write_text(json.dumps(genesis))
    keystore = encrypt_key(validator, "validator pass", params=FAST_KDF, allow_weak_kdf=True)
    (home / "validator.keystore.json").write_text(json.dumps(keystore))
    (home / "validator.password").write_text("validator pass")
    port = find_free_port()
    argv = [
        sys.executable,
        str(PROJECT_ROOT / "manage.py"),
        "node",
        "--genesis",
        str(home / "genesis.json"),
        "--validator-key",
        str(home / "validator.keystore.json"),
        "--validator-password-file",
        str(home / "validator.password"),
        "--port",
        str(port),
    ]
    process = start(argv, clean_env(AITBC_DATA_DIR=home / "data", LOG_LEVEL="WARNING"), home / "node.log")
    url = f"http://127.0.0.1:{port}"
    node = Node(url, HttpChainClient(url), process, home / "node.log")
    try:

        def up() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the node exited with code {process.returncode}:\n{node.log()}")
            try:
                return requests.get(f"{url}/status", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=90, interval=0.2, message="the node to answer /status")
        yield node
    finally:
        stop(process)


@pytest.fixture
def coordinator(node: Node, market_env: Path, monkeypatch: pytest.MonkeyPatch) -> HttpChainClient:
    """The coordinator in this process, with the funded key, talking to the node over HTTP."""
    write_coordinator_key(market_env)
    monkeypatch.setenv("AITBC_NODE_URL", node.url)
    return node.client


def run_until(predicate: Callable[[], Any], message: str, timeout: float = GUARD_S) -> Any:
    """Run the coordinator's periodic work (as its tasks would) until ``predicate`` holds."""

    def step() -> Any:
        outbox.outbox_process()
        dispatch.dispatch_pending()
        # Payout batches are checked after a completion commits (a task) and by beat's sweep;
        # these tests' transactions never commit, so the sweep's pass stands in for both.
        deposits.deposits_sweep(view=None)
        return predicate()

    return wait_until(step, timeout=timeout, interval=0.05, message=message)


def provider(http, name: str, **kwargs: Any) -> ScriptedProvider:
    scripted = ScriptedProvider(http, named_key(f"process/{name}"), name, COORDINATOR.address, **kwargs)
    scripted.register()
    providers.provider_connected(address=scripted.address)
    return scripted


def required_blocks(http) -> int:
    return http.get("/v1/coordinator").json()["min_escrow_blocks"]


@pytest.mark.django_db
def test_failover_on_a_real_node_charges_the_client_once(coordinator: HttpChainClient, client) -> None:
    first = provider(client, "first", input_price=1000)
    second = provider(client, "second", input_price=2000)
    info = client.get("/v1/coordinator").json()
    assert info["address"] == COORDINATOR.address and info["chain_id"] == CHAIN_ID
    alice = Payer(named_key("alice"), coordinator, CHAIN_ID)
    before = {a: coordinator.account(a)["balance"] for a in (alice.address, first.address, second.address)}
    lock = alice.lock(amount=30_000, arbiter=COORDINATOR.address, timeout_blocks=required_blocks(client) + 50)
    body = {"model": MODEL, "prompt": "Say hi", "max_tokens": 16, "max_price": 30_000, "payment": {"escrow_tx": lock}}
    response = client.post("/v1/jobs", data=body, content_type="application/json")
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]

    job = run_until(lambda: Job.objects.filter(pk=job_id, state=Job.ASSIGNED).first(), "the escrow to commit")
    assert job.provider_id == first.address
    first.accept(job_id)
    providers.provider_disconnected(address=first.address)
    job = run_until(
        lambda: Job.objects.filter(pk=job_id, state=Job.ASSIGNED, provider_id=second.address).first(), "failover"
    )
    [wire] = second.assigned()
    assert second.accept(job_id).status_code == 200
    assert second.result(wire, input_tokens=11, output_tokens=6).status_code == 200
    assert first.result(wire).status_code == 409  # the provider that lost the job is not paid
    job = run_until(lambda: Job.objects.filter(pk=job_id, state=Job.SETTLED).first(), "settlement")

    charge = job_charge(input_tokens=11, output_tokens=6, input_price=2000, output_price=200)
    assert job.charge == charge and job.refund == 30_000 - charge
    escrow = coordinator.escrow(job.escrow_id)
    assert escrow["paid"] == charge and escrow["status"] == "closed" and escrow["arbiter"] == COORDINATOR.address
    after = {a: coordinator.account(a)["balance"] for a in before}
    assert after[second.address] - before[second.address] == charge
    assert after[first.address] == before[first.address]
    assert before[alice.address] - after[alice.address] == charge + 1000  # the metered price and the lock's fee
    assert OutboxTx.objects.filter(job_id=job_id, purpose=OutboxTx.JOB_PAY, status=OutboxTx.COMMITTED).count() == 1


@pytest.mark.django_db
def test_deposit_books_equal_the_chains_escrow_after_each_settlement(
    coordinator: HttpChainClient, client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conf, "PAYOUT_BATCH_COUNT", 2)
    client.force_login(get_user_model().objects.create_user("depositor"))
    p1 = provider(client, "d1", concurrency=3)
    bob = Payer(named_key("bob"), coordinator, CHAIN_ID)
    lock = bob.lock(amount=200_000, arbiter=COORDINATOR.address, timeout_blocks=3 * required_blocks(client))
    response = client.post("/v1/deposits", data={"escrow_tx": lock}, content_type="application/json")
    assert response.status_code == 202, response.content
    deposit_id = response.json()["id"]
    run_until(lambda: Deposit.objects.filter(pk=deposit_id, state=Deposit.OPEN).exists(), "the deposit to open")
    bob_before = coordinator.account(bob.address)["balance"]

    def check_books() -> None:
        deposit = Deposit.objects.get(pk=deposit_id)
        escrow = coordinator.escrow(deposit.escrow_id)
        assert (deposit.amount, deposit.paid) == (escrow["amount"], escrow["paid"])
        if escrow["status"] == "open":
            assert escrow["remaining"] == deposit.amount - deposit.paid

    total = 0
    for round_ in range(3):
        ids = []
        for _ in range(2):
            body = {"model": MODEL, "prompt": f"round {round_}", "max_tokens": 8, "max_price": 9_000}
            answer = client.post(
                "/v1/jobs", data=body | {"payment": {"deposit": deposit_id}}, content_type="application/json"
            )
            assert answer.status_code == 202 and answer.json()["state"] == "funded"
            ids.append(answer.json()["id"])
        dispatch.dispatch_pending()
        p1.run_all(input_tokens=9, output_tokens=4 + round_)
        total += 2 * job_charge(input_tokens=9, output_tokens=4 + round_, input_price=100, output_price=200)
        run_until(lambda ids=ids: Job.objects.filter(pk__in=ids, state=Job.SETTLED).count() == 2, "the payout")
        check_books()
        assert Deposit.objects.get(pk=deposit_id).paid == total

    assert client.post(f"/v1/deposits/{deposit_id}/close").status_code == 200
    deposit = run_until(
        lambda: Deposit.objects.filter(pk=deposit_id, state=Deposit.CLOSED).first(), "the deposit to close"
    )
    check_books()
    assert deposit.refunded == 200_000 - total
    assert coordinator.escrow(deposit.escrow_id)["status"] == "closed"
    assert coordinator.account(bob.address)["balance"] == bob_before + deposit.refunded


# -- the whole web process ----------------------------------------------------------------------


@dataclass
class SocketProvider:
    """A provider daemon in miniature: registers over HTTP, then serves jobs pushed on its websocket."""

    base_url: str
    key: Key
    name: str
    input_price: int
    concurrency: int = 2
    active: int = 0
    max_active: int = 0
    results: dict[str, int] = field(default_factory=dict)  # job id -> the charge it metered
    errors: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def register(self, coordinator: str) -> None:
        body = build_provider_auth(self.key, coordinator=coordinator, purpose="register")
        offer = {"model": MODEL, "input_price": self.input_price, "output_price": 200, "context_length": 4096}
        body |= {"name": self.name, "url": "", "offers": [offer | {"concurrency": self.concurrency}]}
        answer = requests.post(f"{self.base_url}/v1/providers/register", json=body, timeout=10)
        assert answer.status_code == 200, answer.text

    def serve(self, coordinator: str, connected: threading.Event) -> None:
        url = self.base_url.replace("http://", "ws://") + "/ws/provider/"
        with ws_connect(url, open_timeout=10) as socket:
            hello = {"type": "hello", **build_provider_auth(self.key, coordinator=coordinator, purpose="connect")}
            socket.send(json.dumps(hello | {"active": 0}))
            assert json.loads(socket.recv(10))["type"] == "welcome"
            connected.set()
            send_lock = threading.Lock()
            last_beat = time.monotonic()

            def send(message: dict[str, Any]) -> None:
                with send_lock:
                    socket.send(json.dumps(message))

            while not self.stopping.is_set():
                if time.monotonic() - last_beat > 5:
                    send({"type": "heartbeat", "active": self.active})
                    last_beat = time.monotonic()
                try:
                    message = json.loads(socket.recv(0.2))
                except TimeoutError:
                    continue
                if message["type"] == "job":
                    threading.Thread(target=self.run, args=(message["job"], send, coordinator), daemon=True).start()
                elif message["type"] == "error":
                    self.errors.append(message)

    def run(self, job: dict[str, Any], send: Callable[[dict[str, Any]], None], coordinator: str) -> None:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            send({"type": "accepted", "job_id": job["id"]})
            started = int(time.time() * 1000)
            time.sleep(0.05)  # "inference"
            output = f"answer to {job['input']['prompt']}"
            send({"type": "chunk", "job_id": job["id"], "index": 0, "text": output})
            output_tokens = 3 + len(job["input"]["prompt"]) % 5
            signed = build_receipt(
                self.key,
                job_id=job["id"],
                coordinator=coordinator,
                model=job["model"],
                job_input={"model": job["model"], "input": job["input"], "options": job["options"]},
                output=output,
                input_tokens=10,
                output_tokens=output_tokens,
                started_ms=started,
                finished_ms=int(time.time() * 1000),
                finish_reason="stop",
            )
            with self.lock:
                self.results[job["id"]] = job_charge(
                    input_tokens=10, output_tokens=output_tokens, input_price=self.input_price, output_price=200
                )
                self.active -= 1
            send({"type": "result", "job_id": job["id"], "output": output, **signed})
        except Exception as exc:  # surfaced by the test
            self.errors.append(repr(exc))


def test_fifty_jobs_through_the_web_process_with_three_websocket_providers(
    node: Node, tmp_path: Path, market_env: Path
) -> None:
    data_dir = tmp_path / "coordinator"
    write_coordinator_key(data_dir)
    port = find_free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        AITBC_DATA_DIR=data_dir,
        AITBC_NODE_URL=node.url,
        LOG_LEVEL="WARNING",
        AITBC_MARKET_PUBLIC_RATE="100000/min",
    )
    argv = [sys.executable, str(PROJECT_ROOT / "manage.py"), "serve", "--migrate", "--host", "127.0.0.1"]
    web = start([*argv, "--port", str(port)], env, tmp_path / "web.log")
    socket_providers: list[SocketProvider] = []
    threads: list[threading.Thread] = []
    try:

        def healthy() -> bool:
            if web.poll() is not None:
                pytest.fail(f"serve exited with {web.returncode}:\n{(tmp_path / 'web.log').read_text()[-4000:]}")
            try:
                return requests.get(f"{base}/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, timeout=90, interval=0.2, message="the web process to be healthy")
        info = requests.get(f"{base}/v1/coordinator", timeout=10).json()
        assert info["address"] == COORDINATOR.address and info["node_url"] == node.url

        for index in range(3):
            p = SocketProvider(base, named_key(f"process/ws{index}"), f"ws{index}", input_price=100 * (index + 1))
            p.register(COORDINATOR.address)
            connected = threading.Event()
            thread = threading.Thread(target=p.serve, args=(COORDINATOR.address, connected), daemon=True)
            thread.start()
            assert connected.wait(15), f"{p.name} did not connect"
            socket_providers.append(p)
            threads.append(thread)

        payers = [Payer(named_key(n), node.client, CHAIN_ID) for n in ("alice", "bob")]
        timeout_blocks = info["min_escrow_blocks"] + 100
        locks = [
            payers[i % 2].lock(amount=20_000, arbiter=COORDINATOR.address, timeout_blocks=timeout_blocks)
            for i in range(50)
        ]

        def submit(index_lock: tuple[int, dict]) -> tuple[str, str]:
            index, lock = index_lock
            body = {
                "model": MODEL,
                "prompt": f"question {index}",
                "max_tokens": 16,
                "max_price": 20_000,
                "payment": {"escrow_tx": lock},
            }
            answer = requests.post(f"{base}/v1/jobs", json=body, timeout=30)
            assert answer.status_code == 202, answer.text
            return answer.json()["id"], answer.json()["token"]

        with ThreadPoolExecutor(max_workers=50) as pool:
            submitted = list(pool.map(submit, enumerate(locks)))

        def job(job_id: str, token: str) -> dict[str, Any]:
            return requests.get(f"{base}/v1/jobs/{job_id}", headers={"X-AITBC-Job-Token": token}, timeout=10).json()

        def all_settled() -> list[dict[str, Any]] | None:
            jobs = [job(*pair) for pair in submitted]
            return jobs if all(j["state"] == "settled" for j in jobs) else None

        started = time.monotonic()
        jobs = wait_until(all_settled, timeout=180, interval=0.5, message="all 50 jobs to settle")
        print(f"50 jobs settled {time.monotonic() - started:.1f} s after their submission")
        receipt = requests.get(
            f"{base}/v1/jobs/{jobs[0]['id']}/receipt", headers={"X-AITBC-Job-Token": submitted[0][1]}, timeout=10
        )
        assert verify_receipt(receipt.json())["job_id"] == jobs[0]["id"]
    finally:
        for p in socket_providers:
            p.stopping.set()
        for thread in threads:
            thread.join(10)
        stop(web)

    metered: dict[str, int] = {}
    for p in socket_providers:
        assert p.max_active <= 2, f"{p.name} ran {p.max_active} jobs at once"
        assert not [e for e in p.errors if not isinstance(e, dict)], p.errors
        for job_id, charge in p.results.items():
            assert job_id not in metered  # one run per job: no job ran twice
            metered[job_id] = charge
    assert sorted(metered) == sorted(j["id"] for j in jobs)
    assert {j["id"]: j["charge"] for j in jobs} == metered
    # On the chain: each escrow paid its metered price once, and providers earned the sum.
    for j in jobs:
        escrow = node.client.escrow(j["escrow_id"])
        assert escrow["paid"] == j["charge"] and escrow["status"] == "closed"
        assert [e["state"] for e in j["events"]][:5] == ["submitted", "funded", "assigned", "running", "completed"]
    earned = {p.key.address: node.client.account(p.key.address)["balance"] for p in socket_providers}
    assert sum(earned.values()) == sum(metered.values())
