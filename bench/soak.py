"""Soak check: a 4-validator devnet with providers under mixed load and injected faults.

    python bench/soak.py [--minutes 3] [--rate 25] [--job-every 1.5] [--gateway-every 2] [--keep]

Loopback only. Starts ``manage.py devnet --validators 4 --providers 2`` on a free port
block in a scratch data directory (embedded mode, SQLite), funds its own wallets from the
faucet, then for ``--minutes`` runs together:

  - a stream of signed transfers (``--rate`` a second) from ``--senders`` funded wallets,
    to the nodes' RPC in turn, single and batched; a transaction whose submission failed
    (node down, timeout, 429/503) is sent again, the same bytes, to another node;
  - marketplace jobs (``POST /v1/jobs``), alternately paid by the client's own signed
    escrow (anonymous, read back with the job token) and from a deposit the admin login
    opened (``POST /v1/deposits``);
  - gateway requests with the devnet's API key, in turn Ollama ``/api/chat`` and OpenAI
    ``/v1/chat/completions``, streamed and not, all on the embedded SmolLM2 with short
    answers.

Faults, at fixed points of the window: at 20 % one validator (``--fault-node``, default
node1; node0 is the one the coordinator talks to) is SIGKILLed and, ``--down-s`` later,
started again from ``network.json``'s ``argv`` and ``env`` (it resumes from its own data);
at 55 % a long job is submitted and, once it runs, its provider is SIGKILLed with whatever
else it holds: its jobs must fail over or be refunded; it is started again the same way.

Submission then stops and the network drains (at most ``--drain-s``). Checked, and
printed; any failure makes the exit status 1:

  1. every transaction a node accepted (answered with its id, or later ``duplicate`` or
     ``bad_nonce`` for the same bytes) is in exactly one block, not rejected, on every
     node, and the restarted node reports each as committed; no id appears twice;
  2. every node has the same block id at every height;
  3. every job is settled, refunded or unfunded (none stuck), the coordinator lists no
     active job, and each escrow-paid job's escrow is closed having paid exactly the
     job's charge;
  4. total supply is conserved: on every node the balances of every address the chain
     ever touched (genesis, senders, recipients, proposers) plus what remains in open
     escrows equal the genesis allocations, and each node's ``total_supply`` says the
     same; fees are part of the balances, since each is paid to the block's proposer;
  5. each deposit's books equal its escrow on every node (amount and paid), with nothing
     reserved or owed, and its charges equal the sum of its settled jobs' charges;
  6. no ERROR, CRITICAL or Traceback in any process log, read once everything has
     stopped (shutdown included), except lines an injected fault explains (``ALLOWED``
     below, each with its reason), and those only while that fault lasts;
  7. no answer 500 from the coordinator, and no 502 or 503 outside a fault.

Figures: transfers offered and committed per second, jobs and gateway requests by
outcome, p50/p95 latencies (transfer submission to first sight in a block, job
submission to its final state, gateway request), the faults with their recovery times.
Slowness is never a failure: the machine is shared. The scratch directory is kept
(and printed) when a check fails, or with ``--keep``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from _common import ROOT, free_port_block, percentile, start_devnet, stop_devnet, wait_until

from chain.protocol.keys import Key
from chain.protocol.tx import build_transaction, tx_id

FEE = 1000
MODEL = "smollm2:135m"
TICK = 0.25  # seconds between transfer batches
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
FINAL = ("settled", "refunded", "unfunded")
ACTIVE = ("submitted", "funded", "assigned", "running", "completed", "cancelled", "expired", "failed")
JOB_STATES = (*ACTIVE, *FINAL)
UNSERVED = ("submitted", "funded", "assigned", "running")
# Retried with the same bytes: the transaction may or may not have reached a mempool.
RETRIABLE = {"unreachable", "timeout", "mempool_full", "rate_limited", "unavailable"}
# Our own bytes already known to the network: accepted earlier (an answer lost to a timeout
# or a node killed), so they count as accepted.
ALREADY_ACCEPTED = {"duplicate", "bad_nonce"}
JOB_TOKENS = 8
MAX_JOBS_IN_FLIGHT = 6
MAX_GATEWAY_IN_FLIGHT = 3
WINDOW_MARGIN_S = 10  # a fault's consequences may be logged this long after its part has recovered

# Log lines that an injected fault explains, allowed only once that fault has happened.
# (fault, compiled pattern, why)
ALLOWED: list[tuple[str, re.Pattern[str], str]] = []

LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def allow(fault: str, pattern: str, why: str) -> None:
    ALLOWED.append((fault, re.compile(pattern), why))


allow(
    "validator",
    r"ERROR \d+ django\.request: Service Unavailable: /(v1/jobs|v1/deposits|v1/chat/completions|api/chat|api/generate)",
    "503 node_unavailable while the killed validator is the coordinator's node (--fault-node 0); "
    "Django logs every 5xx answer at ERROR",
)


def now() -> float:
    return time.monotonic()


# -- the devnet ---------------------------------------------------------------------------------


@dataclass
class Part:
    """A node or provider of the devnet, as network.json describes it."""

    role: str
    name: str
    url: str
    argv: list[str]
    env: dict[str, str]
    pid: int
    address: str
    log_path: Path
    process: subprocess.Popen | None = None  # set once the soak restarted it itself

    @classmethod
    def of(cls, role: str, entry: dict) -> Part:
        base = Path(entry["env"]["AITBC_DATA_DIR"])
        url = entry["rpc_url"] if role == "node" else entry["url"]
        address = entry["validator_address"] if role == "node" else entry["address"]
        log = base / ("node.log" if role == "node" else "provider.log")
        return cls(role, entry["name"], url, entry["argv"], entry["env"], entry["pid"], address, log)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)
        else:
            wait_until(lambda: not Path(f"/proc/{self.pid}").exists() or _zombie(self.pid), 30, 0.05, "exit")

    def restart(self, base_env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env={**base_env, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def devnet_env(data_dir: Path) -> dict[str, str]:
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.update({"AITBC_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"})
    return env


def launch_devnet(workdir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, dict, dict[str, str]]:
    env = devnet_env(workdir / "data")
    port = free_port_block(10 * max(args.validators, args.providers) + 20)
    devnet_args = ["--port", str(port), "--validators", str(args.validators), "--providers", str(args.providers)]
    devnet_args += ["--param", f"block_time_ms={args.block_time_ms}"]
    process, network = start_devnet(workdir, devnet_args, env, timeout=400)
    return process, network, env


# -- shared records -----------------------------------------------------------------------------


@dataclass
class Record:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # transfers
    offered: int = 0
    accepted: dict[str, float] = field(default_factory=dict)  # tx id -> first submission time
    accepted_late: set[str] = field(default_factory=set)  # via duplicate / bad_nonce
    refused: Counter = field(default_factory=Counter)  # code -> count (not retriable)
    retried: Counter = field(default_factory=Counter)  # code -> count
    held_back: int = 0
    seen: dict[str, tuple[float, int]] = field(default_factory=dict)  # tx id -> (first seen in a block, height)
    block_seen: dict[int, float] = field(default_factory=dict)  # height -> when the follower first saw it
    # jobs and gateway
    jobs: dict[str, dict] = field(default_factory=dict)  # job id -> {kind, token?, submitted, state, done}
    job_refusals: Counter = field(default_factory=Counter)
    gateway: list[dict] = field(default_factory=list)  # {api, stream, status, ok, error, latency, job, at}
    # faults
    faults: list[dict] = field(default_factory=list)
    # fault name -> [from, until] in wall-clock seconds: from the kill until the part has recovered
    fault_windows: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, network: dict, env: dict[str, str], workdir: Path, args: argparse.Namespace) -> None:
        from wallet.keystore import decrypt_keystore

        self.network = network
        self.env = env
        self.workdir = workdir
        self.args = args
        self.chain_id = network["chain_id"]
        self.nodes = [Part.of("node", n) for n in network["nodes"]]
        self.providers = [Part.of("provider", p) for p in network["providers"]]
        self.url = network["coordinator"]["url"]
        self.api_key = Path(network["gateway"]["api_key_file"]).read_text().strip()
        self.faucet = decrypt_keystore(
            Path(network["faucet"]["keystore"]).read_text(),
            Path(network["faucet"]["password_file"]).read_text().rstrip("\n"),
        )
        self.record = Record()
        self.stop = threading.Event()
        self.local = threading.local()
        self.rng = random.Random(9)
        self.coordinator: dict = {}
        self.admin = requests.Session()
        self.deposit_id = ""
        self.counter = itertools.count(1)

    # -- HTTP helpers ---------------------------------------------------------------------------

    def session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session().get(url, timeout=kwargs.pop("timeout", 15), **kwargs)

    def node_json(self, node: Part, path: str, **params: Any) -> Any:
        return self.get(node.url + path, params=params).json()

    def any_node(self, path: str, **params: Any) -> Any:
        last: Exception | None = None
        for node in self.nodes:
            try:
                return self.node_json(node, path, **params)
            except (requests.RequestException, ValueError) as exc:
                last = exc
        raise RuntimeError(f"no node answers {path}: {last}")

    def wait_committed(self, ids: list[str], what: str, timeout: float = 120) -> None:
        def done() -> bool:
            for i in ids:
                answer = self.any_node(f"/v1/chain/transactions/{i}")
                if answer.get("status") == "rejected":
                    raise RuntimeError(f"{what}: {i} rejected: {answer.get('error')}")
                if answer.get("status") != "committed":
                    return False
            return True

        wait_until(done, timeout, 0.3, what)

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self) -> None:
        wait_until(
            lambda: sum(p["online"] for p in self.get(f"{self.url}/v1/providers").json()) == len(self.providers),
            180,
            0.5,
            "every provider online",
        )
        self.coordinator = self.get(f"{self.url}/v1/coordinator").json()
        self.senders = [Key.generate() for _ in range(self.args.senders)]
        self.job_clients = [Key.generate() for _ in range(JOB_TOKENS)]
        self.depositor = Key.generate()
        self.fault_client = Key.generate()
        self.sink = [Key.generate().address for _ in range(8)]
        per_sender = 20_000_000
        payees = [(k, per_sender) for k in self.senders] + [(k, 100_000_000) for k in self.job_clients]
        payees += [(self.depositor, 60_000_000), (self.fault_client, 10_000_000)]
        nonce = self.node_json(self.nodes[0], f"/v1/chain/accounts/{self.faucet.address}")["nonce"]
        txs = [
            build_transaction(
                self.faucet,
                chain_id=self.chain_id,
                type="transfer",
                nonce=nonce + i,
                fee=FEE,
                payload={"to": k.address, "amount": amount},
            )
            for i, (k, amount) in enumerate(payees)
        ]
        ids = []
        for start in range(0, len(txs), 60):  # within the faucet's 64-nonce window each time
            answer = (
                self.session()
                .post(f"{self.nodes[0].url}/v1/chain/transactions/batch", json=txs[start : start + 60], timeout=60)
                .json()
            )
            if not all("id" in a for a in answer):
                raise RuntimeError(f"funding refused: {answer[:3]}")
            ids += [a["id"] for a in answer]
            self.wait_committed([ids[-1]], "funding")
        self.wait_committed(ids, "funding")
        self.login_and_open_deposit()

    def login_and_open_deposit(self) -> None:
        admin = self.network["admin"]
        password = Path(admin["password_file"]).read_text().strip()
        login = f"{self.url}/accounts/login/"
        self.admin.get(login, timeout=15)
        answer = self.admin.post(
            login,
            data={
                "username": admin["username"],
                "password": password,
                "csrfmiddlewaretoken": self.admin.cookies["csrftoken"],
            },
            headers={"Referer": login},
            timeout=15,
            allow_redirects=False,
        )
        if answer.status_code != 302:
            raise RuntimeError(f"admin login failed: {answer.status_code}")
        status = self.node_json(self.nodes[0], "/status")
        lock = build_transaction(
            self.depositor,
            chain_id=self.chain_id,
            type="escrow_lock",
            nonce=0,
            fee=FEE,
            payload={
                "job_id": "soak-deposit",
                "amount": 50_000_000,
                "arbiter": self.coordinator["address"],
                "timeout_height": status["height"] + 2 * self.coordinator["min_escrow_blocks"] + 60,
            },
        )
        answer = self.admin_post("/v1/deposits", {"escrow_tx": lock})
        if answer.status_code != 202:
            raise RuntimeError(f"deposit refused: {answer.status_code} {answer.text[:300]}")
        self.deposit_id = answer.json()["id"]
        wait_until(
            lambda: self.admin.get(f"{self.url}/v1/deposits/{self.deposit_id}", timeout=15).json()["state"] == "open",
            120,
            0.5,
            "the deposit open",
        )

    def admin_post(self, path: str, body: dict) -> requests.Response:
        return self.admin.post(
            self.url + path,
            json=body,
            headers={"X-CSRFToken": self.admin.cookies.get("csrftoken", ""), "Referer": self.url + "/"},
            timeout=60,
        )

    # -- transfers ------------------------------------------------------------------------------

    def transfers(self, deadline: float) -> None:
        """Open loop: ``rate * TICK`` new transfers each tick, plus what has to be sent again."""
        per_tick = self.args.rate * TICK
        next_nonce = {k.address: 0 for k in self.senders}
        in_flight: dict[str, set[str]] = defaultdict(set)  # sender -> accepted ids not yet seen in a block
        retry: list[tuple[dict, str, Key]] = []  # to send again, the same bytes
        node_cycle = itertools.cycle(range(len(self.nodes)))
        down_until = [0.0] * len(self.nodes)
        carry = 0.0
        tick = 0
        start = now()
        pool = ThreadPoolExecutor(4, thread_name_prefix="transfers")
        outstanding: list = []

        def pick_node() -> int:
            for _ in range(len(self.nodes)):
                index = next(node_cycle)
                if down_until[index] <= now():
                    return index
            return next(node_cycle)

        def submit(index: int, batch: list[tuple[dict, str, Key]]) -> list[str]:
            """Send one batch to node ``index``: the outcome of each transaction, "accepted" or a code."""
            node = self.nodes[index]
            txs = [t for t, _, _ in batch]
            try:
                if len(txs) == 1 and self.rng.random() < 0.5:
                    r = self.session().post(f"{node.url}/v1/chain/transactions", json=txs[0], timeout=10)
                    answers = [_tx_answer(r)]
                else:
                    r = self.session().post(f"{node.url}/v1/chain/transactions/batch", json=txs, timeout=10)
                    answers = r.json() if r.status_code == 200 else [_tx_answer(r)] * len(txs)
            except requests.Timeout:
                answers = [{"error": {"code": "timeout"}}] * len(txs)
            except (requests.RequestException, ValueError):
                down_until[index] = now() + 1.0
                answers = [{"error": {"code": "unreachable"}}] * len(txs)
            return ["accepted" if "id" in a else a["error"]["code"] for a in answers]

        def settle(batch: list[tuple[dict, str, Key]], outcomes: list[str], at: float) -> None:
            with self.record.lock:
                for (tx, id_, key), outcome in zip(batch, outcomes, strict=True):
                    if outcome == "accepted" or outcome in ALREADY_ACCEPTED:
                        self.record.accepted.setdefault(id_, at)
                        if outcome != "accepted":
                            self.record.accepted_late.add(id_)
                        if id_ not in self.record.seen:
                            in_flight[key.address].add(id_)
                    elif outcome in RETRIABLE:
                        self.record.retried[outcome] += 1
                        retry.append((tx, id_, key))
                    else:
                        self.record.refused[outcome] += 1
                        self.record.problems.append(f"transfer {id_} refused: {outcome}")

        def run_batch(index: int, batch: list[tuple[dict, str, Key]], at: float) -> None:
            settle(batch, submit(index, batch), at)

        while now() < deadline and not self.stop.is_set():
            at = start + tick * TICK
            time.sleep(max(0.0, at - now()))
            tick += 1
            outstanding = [f for f in outstanding if not f.done()]
            with self.record.lock:
                seen = self.record.seen
                for address, ids in in_flight.items():
                    in_flight[address] = {i for i in ids if i not in seen}
                waiting = Counter(key.address for _, _, key in retry)
                batch = retry[:]
                retry.clear()
                carry += per_tick
                wanted = int(carry)
                carry -= wanted
                ready = [
                    k
                    for k in self.senders
                    if len(in_flight[k.address]) + waiting[k.address] < self.args.per_sender_in_flight
                ]
                self.rng.shuffle(ready)
                fresh = ready[:wanted]
                self.record.held_back += wanted - len(fresh)
                self.record.offered += len(fresh)
            for key in fresh:
                tx = build_transaction(
                    key,
                    chain_id=self.chain_id,
                    type="transfer",
                    nonce=next_nonce[key.address],
                    fee=FEE,
                    payload={"to": self.rng.choice(self.sink), "amount": 1 + self.rng.randrange(1000)},
                )
                next_nonce[key.address] += 1
                batch.append((tx, tx_id(tx), key))
            if not batch:
                continue
            # A sender's transactions in nonce order, so a node sees them in the order signed.
            batch.sort(key=lambda item: (item[2].address, item[0]["nonce"]))
            if len(outstanding) >= 8:
                # The nodes are slower than the offered rate: queue, never pile up threads.
                with self.record.lock:
                    retry.extend(batch)
                continue
            outstanding.append(pool.submit(run_batch, pick_node(), batch, at))
        pool.shutdown(wait=True)
        # What still waits to be sent again goes out now, until accepted or the time is up.
        give_up = now() + 90
        while now() < give_up:
            with self.record.lock:
                batch = sorted(retry, key=lambda item: (item[2].address, item[0]["nonce"]))
                retry.clear()
            if not batch:
                break
            run_batch(pick_node(), batch, now())
            time.sleep(0.5)
        for tx, id_, _ in retry:
            self.record.problems.append(f"transfer {id_} (nonce {tx['nonce']}) could not be sent again in time")

    def follow(self) -> None:
        """First sight of each block and its transactions, from whichever node answers."""
        seen_height = self.any_node("/status")["height"]
        cycle = itertools.cycle(self.nodes)
        while not self.stop.is_set():
            node = next(cycle)
            try:
                blocks = self.node_json(node, "/v1/chain/blocks", **{"from": seen_height + 1, "limit": 200})["blocks"]
            except (requests.RequestException, ValueError, KeyError):
                time.sleep(0.2)
                continue
            moment = now()
            with self.record.lock:
                for block in blocks:
                    self.record.block_seen.setdefault(block["height"], moment)
                    for i in block["tx_ids"]:
                        self.record.seen.setdefault(i, (moment, block["height"]))
                    seen_height = max(seen_height, block["height"])
            time.sleep(0.2)

    # -- jobs -----------------------------------------------------------------------------------

    def jobs(self, deadline: float) -> None:
        client_job: dict[str, str] = {}  # client address -> its last escrow job, until its escrow is decided
        number = 0
        next_at = now()
        while now() < deadline and not self.stop.is_set():
            time.sleep(max(0.0, next_at - now()))
            next_at += self.args.job_every
            with self.record.lock:
                # Waiting for a provider, not for a payout batch: those come by the dozen at the end.
                active = sum(1 for j in self.record.jobs.values() if j["kind"] != "gateway" and j["state"] in UNSERVED)
                states = {i: j["state"] for i, j in self.record.jobs.items()}
            if active >= MAX_JOBS_IN_FLIGHT:
                self.record.job_refusals["held back (jobs in flight)"] += 1
                continue
            number += 1
            prompt = f"Soak request {next(self.counter):06d}: name a color."
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "max_price": 200_000}
            if number % 2:
                free = [
                    k
                    for k in self.job_clients
                    if client_job.get(k.address) is None or states.get(client_job[k.address]) != "submitted"
                ]
                if not free:
                    self.record.job_refusals["held back (clients busy)"] += 1
                    continue
                key = free[number % len(free)]
                # Its last escrow is decided (committed or refused), so the chain's nonce is the next one.
                nonce = self.any_node(f"/v1/chain/accounts/{key.address}")["nonce"]
                status = self.any_node("/status")
                body["payment"] = {
                    "escrow_tx": build_transaction(
                        key,
                        chain_id=self.chain_id,
                        type="escrow_lock",
                        nonce=nonce,
                        fee=FEE,
                        payload={
                            "job_id": f"soak-{number}",
                            "amount": body["max_price"],
                            "arbiter": self.coordinator["address"],
                            "timeout_height": status["height"] + self.coordinator["min_escrow_blocks"] + 30,
                        },
                    )
                }
                kind = "escrow"
                started = now()
                try:
                    answer = self.session().post(f"{self.url}/v1/jobs", json=body, timeout=60)
                except requests.RequestException as exc:
                    self.record.job_refusals[f"escrow: {type(exc).__name__}"] += 1
                    continue
            else:
                body["payment"] = {"deposit": self.deposit_id}
                kind = "deposit"
                started = now()
                try:
                    answer = self.admin_post("/v1/jobs", body)
                except requests.RequestException as exc:
                    self.record.job_refusals[f"deposit: {type(exc).__name__}"] += 1
                    continue
            if answer.status_code != 202:
                code = _error_code(answer)
                self.record.job_refusals[f"{kind}: {answer.status_code} {code}"] += 1
                if unexplained_5xx(answer.status_code, self.in_fault()):
                    self.record.problems.append(f"POST /v1/jobs ({kind}) answered {answer.status_code}: {code}")
                continue
            job = answer.json()
            with self.record.lock:
                self.record.jobs[job["id"]] = {
                    "kind": kind,
                    "token": job.get("token"),
                    "submitted": started,
                    "state": job["state"],
                    "done": None,
                }
            if kind == "escrow":
                client_job[key.address] = job["id"]

    def job_detail(self, job_id: str, info: dict) -> dict:
        """A job read as its client reads it: job token, the admin's session, or the API key."""
        if info["kind"] == "escrow":
            headers = {"X-AITBC-Job-Token": info["token"]}
            return self.get(f"{self.url}/v1/jobs/{job_id}", headers=headers).json()
        if info["kind"] in ("deposit", "other"):
            return self.admin.get(f"{self.url}/v1/jobs/{job_id}", timeout=15).json()
        return self.get(f"{self.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {self.api_key}"}).json()

    def watch_jobs(self) -> None:
        while not self.stop.is_set():
            with self.record.lock:
                active = [(i, dict(j)) for i, j in self.record.jobs.items() if j["state"] not in FINAL]
            for job_id, info in active:
                try:
                    detail = self.job_detail(job_id, info)
                except (requests.RequestException, ValueError):
                    continue
                with self.record.lock:
                    entry = self.record.jobs[job_id]
                    entry["state"] = detail.get("state", entry["state"])
                    entry["provider"] = detail.get("provider")
                    if entry["state"] in FINAL and entry["done"] is None:
                        entry["done"] = now()
            time.sleep(0.5)

    # -- gateway --------------------------------------------------------------------------------

    def gateway(self, deadline: float) -> None:
        kinds = [("ollama", False), ("openai", False), ("ollama", True), ("openai", True)]
        pool = ThreadPoolExecutor(MAX_GATEWAY_IN_FLIGHT, thread_name_prefix="gateway")
        futures: list = []
        next_at = now()
        for number in itertools.count():
            if now() >= deadline or self.stop.is_set():
                break
            time.sleep(max(0.0, next_at - now()))
            next_at += self.args.gateway_every
            futures = [f for f in futures if not f.done()]
            if len(futures) >= MAX_GATEWAY_IN_FLIGHT:
                with self.record.lock:
                    self.record.gateway.append({"held_back": True})
                continue
            api, stream = kinds[number % len(kinds)]
            futures.append(pool.submit(self.gateway_request, api, stream))
        pool.shutdown()

    def gateway_request(self, api: str, stream: bool) -> None:
        messages = [{"role": "user", "content": f"Soak chat {next(self.counter):06d}: say hello."}]
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if api == "ollama":
            url = f"{self.url}/api/chat"
            body = {"model": MODEL, "messages": messages, "stream": stream, "options": {"num_predict": 8}}
        else:
            url = f"{self.url}/v1/chat/completions"
            body = {"model": MODEL, "messages": messages, "max_tokens": 8, "stream": stream}
        entry: dict[str, Any] = {"api": api, "stream": stream, "at": time.time(), "ok": False, "error": None}
        started = now()
        try:
            with self.session().post(url, json=body, headers=headers, stream=stream, timeout=180) as answer:
                entry["status"] = answer.status_code
                entry["job"] = answer.headers.get("X-AITBC-Job")
                if answer.status_code != 200:
                    entry["error"] = f"{answer.status_code} {_error_code(answer)}"
                elif not stream:
                    reply = answer.json()
                    text = reply["message"]["content"] if api == "ollama" else reply["choices"][0]["message"]["content"]
                    entry["ok"] = bool(text is not None)
                else:
                    entry["ok"], entry["error"] = _read_stream(answer, api)
        except (requests.RequestException, ValueError, KeyError) as exc:
            entry["error"] = type(exc).__name__
        entry["latency"] = now() - started
        if unexplained_5xx(entry.get("status", 0), self.in_fault(entry["at"]) or self.in_fault()):
            with self.record.lock:
                self.record.problems.append(f"{api} gateway request answered {entry['error']}")
        with self.record.lock:
            self.record.gateway.append(entry)
            if entry.get("job") and entry["job"] not in self.record.jobs:
                self.record.jobs[entry["job"]] = {
                    "kind": "gateway",
                    "token": None,
                    "submitted": started,
                    "state": "submitted",
                    "done": None,
                }

    # -- faults ---------------------------------------------------------------------------------

    def fault_validator(self, index: int) -> None:
        node = self.nodes[index]
        others = [n for i, n in enumerate(self.nodes) if i != index]
        fault: dict[str, Any] = {"fault": f"SIGKILL validator {node.name}, restart after {self.args.down_s:.0f} s"}
        self.open_window("validator")
        killed_height = max(self._height(n) for n in others)
        killed = now()
        node.kill()
        time.sleep(self.args.down_s)
        during = max(self._height(n) for n in others) - killed_height
        node.restart(self.env)
        restarted = now()
        wait_until(lambda: self._health(node), 180, 0.2, f"{node.name} healthy again")
        healthy = now()
        wait_until(lambda: self._height(node) >= max(self._height(n) for n in others) - 1, 300, 0.2, "catch-up")
        caught_up = now()
        self.close_window("validator")
        fault.update(
            {
                "blocks finalized by the other 3 while it was down": during,
                "restart -> /health": f"{healthy - restarted:.1f} s",
                "restart -> caught up with the others": f"{caught_up - restarted:.1f} s",
                "kill -> caught up": f"{caught_up - killed:.1f} s",
            }
        )
        self.record.faults.append(fault)

    def fault_provider(self) -> None:
        """Kill the provider running a long job (and whatever else it holds); restart it later."""
        job_id, token = self.submit_long_job()
        running = {}

        def started() -> bool:
            detail = self.get(f"{self.url}/v1/jobs/{job_id}", headers={"X-AITBC-Job-Token": token}).json()
            running.update(detail)
            return detail["state"] == "running" or detail["state"] in FINAL

        wait_until(started, 120, 0.1, "the long job running")
        active = self.admin.get(f"{self.url}/v1/jobs", params={"limit": 500}, timeout=15).json()
        victim = next((p for p in self.providers if p.address == running.get("provider")), self.providers[0])
        held = [j["id"] for j in active if j["provider"] == victim.address and j["state"] in ("assigned", "running")]
        fault: dict[str, Any] = {"fault": f"SIGKILL provider {victim.name} holding {len(held)} job(s) in flight"}
        self.open_window("provider")
        killed = now()
        victim.kill()

        def held_resolved() -> bool:
            answer = self.admin.get(f"{self.url}/v1/jobs", params={"limit": 500}, timeout=15).json()
            return not any(j["id"] in held and j["provider"] == victim.address for j in answer)

        wait_until(held_resolved, 300, 0.2, "the killed provider's jobs to move on")
        moved = now()
        time.sleep(max(0.0, self.args.down_s - (moved - killed)))
        registered = self.registration(victim)
        victim.restart(self.env)
        restarted = now()

        def online() -> bool:
            # Still "online" from before the kill until the coordinator's offline timeout: a new registration counts.
            entry = self.registration(victim)
            return entry is not None and entry["online"] and entry["registered_at"] != registered["registered_at"]

        wait_until(lambda: self._health(victim), 180, 0.2, f"{victim.name} healthy again")
        wait_until(online, 180, 0.2, f"{victim.name} online again")
        self.close_window("provider")
        fault.update(
            {
                "its jobs": ", ".join(held) or "none",
                "kill -> its jobs reassigned or ended": f"{moved - killed:.1f} s",
                "restart -> healthy and online": f"{now() - restarted:.1f} s",
            }
        )
        self.record.faults.append(fault)

    def open_window(self, fault: str) -> None:
        with self.record.lock:
            self.record.fault_windows[fault] = [time.time(), float("inf")]

    def close_window(self, fault: str) -> None:
        with self.record.lock:
            self.record.fault_windows[fault][1] = time.time() + WINDOW_MARGIN_S

    def in_fault(self, moment: float | None = None) -> bool:
        moment = time.time() if moment is None else moment
        with self.record.lock:
            return any(start - 1 <= moment <= end for start, end in self.record.fault_windows.values())

    def submit_long_job(self) -> tuple[str, str]:
        """An escrow-paid job long enough (counting, hundreds of tokens) to be running when its provider dies."""
        status = self.any_node("/status")
        nonce = self.any_node(f"/v1/chain/accounts/{self.fault_client.address}")["nonce"]
        lock = build_transaction(
            self.fault_client,
            chain_id=self.chain_id,
            type="escrow_lock",
            nonce=nonce,
            fee=FEE,
            payload={
                "job_id": f"soak-long-{nonce}",
                "amount": 1_000_000,
                "arbiter": self.coordinator["address"],
                "timeout_height": status["height"] + self.coordinator["min_escrow_blocks"] + 30,
            },
        )
        body = {
            "model": MODEL,
            "prompt": "Count from 1 to 1000, one number per line:",
            "max_tokens": 300,
            "max_price": 1_000_000,
            "payment": {"escrow_tx": lock},
        }
        answer = self.session().post(f"{self.url}/v1/jobs", json=body, timeout=60)
        if answer.status_code != 202:
            raise RuntimeError(f"the long job was refused: {answer.status_code} {answer.text[:300]}")
        job = answer.json()
        with self.record.lock:
            self.record.jobs[job["id"]] = {
                "kind": "escrow",
                "token": job["token"],
                "submitted": now(),
                "state": job["state"],
                "done": None,
            }
        return job["id"], job["token"]

    def registration(self, provider: Part) -> dict | None:
        return next((p for p in self.get(f"{self.url}/v1/providers").json() if p["address"] == provider.address), None)

    def _height(self, node: Part) -> int:
        try:
            return self.node_json(node, "/status")["height"]
        except (requests.RequestException, ValueError):
            return -1

    def _health(self, part: Part) -> bool:
        try:
            return self.get(f"{part.url}/health", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> dict:
        window = self.args.minutes * 60
        t0 = now()
        deadline = t0 + window
        threads = [
            threading.Thread(target=self.follow, name="follow", daemon=True),
            threading.Thread(target=self.watch_jobs, name="watch-jobs", daemon=True),
        ]
        load = [
            threading.Thread(target=self.transfers, args=(deadline,), name="transfers", daemon=True),
            threading.Thread(target=self.jobs, args=(deadline,), name="jobs", daemon=True),
            threading.Thread(target=self.gateway, args=(deadline,), name="gateway", daemon=True),
        ]
        for thread in threads + load:
            thread.start()
        fault_errors: list[str] = []

        def inject() -> None:
            try:
                if not self.args.no_faults:
                    time.sleep(max(0.0, t0 + 0.2 * window - now()))
                    print(f"  [{now() - t0:5.0f} s] killing validator node{self.args.fault_node}", flush=True)
                    self.fault_validator(self.args.fault_node)
                    time.sleep(max(0.0, t0 + 0.55 * window - now()))
                    print(f"  [{now() - t0:5.0f} s] killing a provider", flush=True)
                    self.fault_provider()
            except Exception as exc:  # a fault that could not be injected or recovered from fails the soak
                fault_errors.append(f"fault injection: {type(exc).__name__}: {exc}")

        injector = threading.Thread(target=inject, name="faults", daemon=True)
        injector.start()
        while any(t.is_alive() for t in load):
            time.sleep(5)
            with self.record.lock:
                committed = sum(1 for i in self.record.accepted if i in self.record.seen)
                jobs_done = sum(1 for j in self.record.jobs.values() if j["state"] in FINAL)
                print(
                    f"  [{now() - t0:5.0f} s] transfers offered {self.record.offered}, accepted "
                    f"{len(self.record.accepted)}, in blocks {committed}; jobs {len(self.record.jobs)} "
                    f"({jobs_done} final); gateway {len(self.record.gateway)}",
                    flush=True,
                )
        t_end = now()
        injector.join(600)
        self.record.problems.extend(fault_errors)
        print(f"  [{now() - t0:5.0f} s] load stopped; draining (at most {self.args.drain_s:.0f} s) ...", flush=True)
        drained = self.drain(now() + self.args.drain_s)
        self.stop.set()
        for thread in threads:
            thread.join(30)
        return {"window": t_end - t0, "drain": drained}

    def drain(self, deadline: float) -> float:
        start = now()

        def quiet() -> bool:
            with self.record.lock:
                unseen = [i for i in self.record.accepted if i not in self.record.seen]
                active = [i for i, j in self.record.jobs.items() if j["state"] not in FINAL]
            if unseen or active:
                return False
            listed = self.admin.get(f"{self.url}/v1/jobs", params={"limit": 500}, timeout=15).json()
            if listed:
                return False
            return all(d["reserved"] == 0 and d["owed"] == 0 for d in self.deposits())

        while now() < deadline:
            try:
                if quiet():
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        # A last settlement may still be on its way to the chain; let one more block pass.
        time.sleep(3 * self.args.block_time_ms / 1000)
        return now() - start

    def deposits(self) -> list[dict]:
        mine = self.admin.get(f"{self.url}/v1/deposits", timeout=15).json()
        demo = self.get(f"{self.url}/v1/deposits", headers={"Authorization": f"Bearer {self.api_key}"}).json()
        return [*mine, *demo]

    # -- checks ---------------------------------------------------------------------------------

    def check(self) -> tuple[list[str], dict]:
        problems = list(self.record.problems)
        figures: dict[str, Any] = {}
        top = max(self._height(n) for n in self.nodes)
        try:
            wait_until(lambda: all(self._height(n) >= top for n in self.nodes), 120, 0.5, "every node at one height")
        except TimeoutError:
            problems.append(f"not every node reached height {top}: {[self._height(n) for n in self.nodes]}")
        chains = {n.name: self.fetch_blocks(n, top) for n in self.nodes}
        problems += self.check_blocks(chains, top)
        problems += self.check_transactions(chains[self.nodes[0].name])
        problems += self.check_restarted_node()
        full = self.fetch_full_blocks(self.nodes[0], top)
        supply_problems, supply_figures = self.check_supply(full, chains[self.nodes[0].name])
        problems += supply_problems
        figures.update(supply_figures)
        problems += self.check_jobs()
        problems += self.check_deposits()
        figures["height"] = top
        return problems, figures

    def fetch_blocks(self, node: Part, top: int) -> dict[int, dict]:
        out: dict[int, dict] = {}
        start = 1
        while start <= top:
            blocks = self.node_json(node, "/v1/chain/blocks", **{"from": start, "limit": 1000})["blocks"]
            if not blocks:
                break
            for block in blocks:
                if block["height"] <= top:
                    out[block["height"]] = block
            start = blocks[-1]["height"] + 1
        return out

    def fetch_full_blocks(self, node: Part, top: int) -> dict[int, dict]:
        out: dict[int, dict] = {}
        start = 1
        while start <= top:
            blocks = self.node_json(node, "/v1/chain/blocks", **{"from": start, "limit": 200, "full": 1})["blocks"]
            if not blocks:
                break
            for block in blocks:
                height = block["block"]["header"]["height"]
                if height <= top:
                    out[height] = block
            start = blocks[-1]["block"]["header"]["height"] + 1
        return out

    def check_blocks(self, chains: dict[str, dict[int, dict]], top: int) -> list[str]:
        problems = []
        reference_name = self.nodes[0].name
        reference = chains[reference_name]
        missing = [h for h in range(1, top + 1) if h not in reference]
        if missing:
            problems.append(f"{reference_name} lacks heights {missing[:10]}")
        for name, chain in chains.items():
            differing = [h for h in range(1, top + 1) if chain.get(h, {}).get("id") != reference.get(h, {}).get("id")]
            if differing:
                problems.append(f"{name} differs from {reference_name} at heights {differing[:10]}")
        return problems

    def check_transactions(self, chain: dict[int, dict]) -> list[str]:
        problems = []
        where: dict[str, list[int]] = defaultdict(list)
        rejected: dict[str, str] = {}
        for height, block in chain.items():
            for i in block["tx_ids"]:
                where[i].append(height)
            rejected.update(block.get("results") or {})
        duplicated = {i: h for i, h in where.items() if len(h) > 1}
        if duplicated:
            problems.append(
                f"{len(duplicated)} transaction ids in more than one block, e.g. {list(duplicated.items())[:3]}"
            )
        lost = [i for i in self.record.accepted if i not in where]
        if lost:
            problems.append(f"{len(lost)} accepted transfers in no block, e.g. {lost[:3]}")
        bad = {i: rejected[i] for i in self.record.accepted if i in rejected}
        if bad:
            problems.append(f"{len(bad)} accepted transfers rejected in their block: {Counter(bad.values())}")
        return problems

    def check_restarted_node(self) -> list[str]:
        """The restarted node's own records of every accepted transfer say committed."""
        if self.args.no_faults:
            return []
        node = self.nodes[self.args.fault_node]
        ids = list(self.record.accepted)

        def status(i: str) -> str:
            try:
                return self.node_json(node, f"/v1/chain/transactions/{i}").get("status", "not_found")
            except (requests.RequestException, ValueError):
                return "unreachable"

        with ThreadPoolExecutor(4) as pool:
            statuses = Counter(pool.map(status, ids))
        if set(statuses) - {"committed"}:
            return [f"{node.name} (restarted) reports the accepted transfers as {dict(statuses)}"]
        return []

    def check_supply(self, full: dict[int, dict], chain: dict[int, dict]) -> tuple[list[str], dict]:
        genesis = json.loads((self.workdir / "data" / "devnet" / "genesis.json").read_text())
        supply = sum(a["amount"] for a in genesis["allocations"])
        addresses = {a["address"] for a in genesis["allocations"]} | {v["address"] for v in genesis["validators"]}
        escrows: list[str] = []
        fees = 0
        for height, item in full.items():
            rejected = chain[height].get("results") or {}
            addresses.add(item["block"]["header"]["proposer"])
            for tx in item["block"]["txs"]:
                fees += tx["fee"]
                addresses.add(tx["from"])
                if "to" in tx["payload"]:
                    addresses.add(tx["payload"]["to"])
                if tx["type"] == "escrow_lock" and tx_id(tx) not in rejected:
                    escrows.append(tx_id(tx))
        problems = []
        balances_by_node = {}
        listed = sorted(addresses)
        for node in self.nodes:
            for _ in range(5):
                # One state: no block with transactions between the first read and the last.
                before = self._height(node)
                with ThreadPoolExecutor(4) as pool:
                    values = pool.map(lambda a, n=node: self.node_json(n, f"/v1/chain/accounts/{a}")["balance"], listed)
                    balances = dict(zip(listed, values, strict=True))
                    remaining = sum(
                        pool.map(lambda e, n=node: self.node_json(n, f"/v1/chain/escrows/{e}")["remaining"], escrows)
                    )
                after = self._height(node)
                between = self.node_json(node, "/v1/chain/blocks", **{"from": before + 1, "limit": 1000})["blocks"]
                if not any(b["tx_ids"] for b in between if b["height"] <= after):
                    break
            total = sum(balances.values()) + remaining
            stated = self.node_json(node, "/status").get("total_supply")
            balances_by_node[node.name] = balances
            if total != supply:
                problems.append(
                    f"{node.name}: balances {sum(balances.values())} + open escrows {remaining} = {total}, "
                    f"genesis supply {supply} (off by {total - supply})"
                )
            if stated is not None and stated != supply:
                problems.append(f"{node.name}: /status total_supply {stated} != genesis supply {supply}")
        reference = balances_by_node[self.nodes[0].name]
        for name, balances in balances_by_node.items():
            differing = [a for a in addresses if balances[a] != reference[a]]
            if differing:
                problems.append(f"{name}: {len(differing)} balances differ from {self.nodes[0].name}")
        figures = {"supply": supply, "addresses": len(addresses), "escrows": len(escrows), "fees": fees}
        return problems, figures

    def check_jobs(self) -> list[str]:
        problems = []
        # Every job the coordinator knows (staff see all), not only those the soak learned the id of.
        everything = []
        for offset in itertools.count(0, 500):
            page = self.admin.get(
                f"{self.url}/v1/jobs",
                params={"state": ",".join(JOB_STATES), "limit": 500, "offset": offset},
                timeout=30,
            ).json()
            everything += page
            if len(page) < 500:
                break
        for job in everything:
            self.record.jobs.setdefault(
                job["id"], {"kind": "other", "token": None, "submitted": None, "state": job["state"], "done": None}
            )
        for job_id, info in self.record.jobs.items():
            try:
                detail = self.job_detail(job_id, info)
            except (requests.RequestException, ValueError) as exc:
                problems.append(f"job {job_id}: unreadable ({exc})")
                continue
            if "state" not in detail:
                problems.append(f"job {job_id} ({info['kind']}): unreadable: {detail}")
                continue
            info["state"] = detail["state"]
            info["charge"] = detail.get("charge") or 0
            info["deposit"] = detail.get("deposit")
            info["attempts"] = detail.get("attempts")
            if info["state"] not in FINAL:
                problems.append(f"job {job_id} ({info['kind']}) stuck in {info['state']}: {detail.get('reason')}")
                continue
            if detail.get("payment") == "escrow" and info["state"] != "unfunded":
                for node in self.nodes:
                    escrow = self.node_json(node, f"/v1/chain/escrows/{detail['escrow_id']}")
                    if escrow.get("status") != "closed" or escrow.get("paid") != info["charge"]:
                        problems.append(
                            f"job {job_id} {info['state']} charge {info['charge']}: escrow on {node.name} is {escrow}"
                        )
        listed = self.admin.get(f"{self.url}/v1/jobs", params={"limit": 500}, timeout=15).json()
        if listed:
            problems.append(f"the coordinator still lists {len(listed)} active jobs: {listed[:3]}")
        return problems

    def check_deposits(self) -> list[str]:
        problems = []
        charged: Counter = Counter()
        for info in self.record.jobs.values():
            if info.get("state") == "settled" and info.get("deposit"):
                charged[info["deposit"]] += info["charge"]
        for deposit in self.deposits():
            if deposit["reserved"] or deposit["owed"]:
                problems.append(f"deposit {deposit['id']}: reserved {deposit['reserved']}, owed {deposit['owed']}")
            if deposit["charged"] != charged[deposit["id"]]:
                problems.append(
                    f"deposit {deposit['id']}: charged {deposit['charged']}, its settled jobs {charged[deposit['id']]}"
                )
            for node in self.nodes:
                escrow = self.node_json(node, f"/v1/chain/escrows/{deposit['escrow_id']}")
                if (escrow.get("amount"), escrow.get("paid")) != (deposit["amount"], deposit["paid"]):
                    problems.append(f"deposit {deposit['id']} books {deposit} != escrow on {node.name} {escrow}")
        return problems

    def check_logs(self) -> tuple[list[str], Counter]:
        """ERROR, CRITICAL and tracebacks in every log, less those an injected fault explains."""
        data = self.workdir / "data" / "devnet"
        paths = [self.workdir / "devnet.log", data / "web.log"]
        paths += [p.log_path for p in self.nodes + self.providers]
        problems = []
        allowed: Counter = Counter()
        for path in paths:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            entry = ""  # the last line that starts an entry: a traceback belongs to it
            entry_reason: str | None = None
            for line in lines:
                stamped = LOG_TIME.match(line)
                if stamped:
                    entry, entry_reason = line, None
                if not LOG_PROBLEM.search(line):
                    continue
                if stamped:
                    entry_reason = reason = self.allowed(line, _log_time(stamped.group(1)))
                else:
                    reason = entry_reason
                if reason:
                    allowed[f"{path.name}: {reason}"] += 1
                else:
                    problems.append(f"{path.relative_to(self.workdir)}: {line[:240]} (in: {entry[:160]})")
        return problems, allowed

    def allowed(self, line: str, moment: float) -> str | None:
        for fault, pattern, why in ALLOWED:
            start, end = self.record.fault_windows.get(fault, (float("inf"), 0.0))
            if start - 1 <= moment <= end and pattern.search(line):
                return why
        return None


def _log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def unexplained_5xx(status: int, during_fault: bool) -> bool:
    """A 500 is always a bug; a 502 or 503 (provider lost, node unreachable) only outside a fault.

    504 (a job that did not finish in time) is slowness on a shared machine, not a failure.
    """
    return status == 500 or (status in (502, 503) and not during_fault)


def _tx_answer(answer: requests.Response) -> dict:
    """One transaction's answer in the batch shape: ``{"id"}`` or ``{"error": {"code"}}``."""
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("id" in body or isinstance(body.get("error"), dict)):
        return body
    return {"error": {"code": "rate_limited" if answer.status_code == 429 else "unavailable"}}


def _error_code(answer: requests.Response) -> str:
    try:
        error = answer.json().get("error")
    except ValueError:
        return answer.text[:80]
    if isinstance(error, dict):
        return str(error.get("code") or error.get("type") or error.get("message"))
    return str(error)


def _read_stream(answer: requests.Response, api: str) -> tuple[bool, str | None]:
    """(finished properly, error) of an Ollama NDJSON or OpenAI SSE stream."""
    for raw in answer.iter_lines():
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        if api == "openai":
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return True, None
            chunk = json.loads(data)
            if "error" in chunk:
                return False, str(chunk["error"].get("code") or chunk["error"].get("message"))
        else:
            chunk = json.loads(line)
            if "error" in chunk:
                return False, str(chunk["error"])
            if chunk.get("done"):
                return True, None
    return False, "stream ended early"


# -- report -------------------------------------------------------------------------------------


def report(soak: Soak, timing: dict, problems: list[str], figures: dict) -> None:
    r = soak.record
    window = timing["window"]
    committed = [i for i in r.accepted if i in r.seen]
    latencies = [r.seen[i][0] - r.accepted[i] for i in committed if i not in r.accepted_late]
    job_latency = [j["done"] - j["submitted"] for j in r.jobs.values() if j.get("done") and j["kind"] != "gateway"]
    gateway = [g for g in r.gateway if not g.get("held_back")]
    gateway_ok = [g for g in gateway if g["ok"]]
    print()
    print(
        f"AITBC soak: {len(soak.nodes)} validators, {len(soak.providers)} providers, {window:.0f} s of load, "
        f"drained in {timing['drain']:.0f} s, final height {figures.get('height')}"
    )
    print(
        f"  transfers      offered {r.offered} ({r.offered / window:.1f}/s), accepted {len(r.accepted)} "
        f"({len(r.accepted_late)} known from a resend), committed {len(committed)} "
        f"({len(committed) / window:.1f}/s over the window)"
    )
    print(
        f"                 sent again {dict(r.retried) or 0}; refused {dict(r.refused) or 0}; held back {r.held_back}"
    )
    print(
        f"                 submission -> in a block   p50 {percentile(latencies, 50):.2f} s, "
        f"p95 {percentile(latencies, 95):.2f} s"
    )
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for job in r.jobs.values():
        by_kind[job["kind"]][job["state"]] += 1
    for kind, states in sorted(by_kind.items()):
        print(f"  jobs ({kind:<7}) {sum(states.values())}: {dict(states)}")
    failovers = sum(1 for j in r.jobs.values() if (j.get("attempts") or 0) > 1)
    print(f"                 {failovers} ran on a second provider; not submitted: {dict(r.job_refusals) or 0}")
    print(
        f"                 submission -> settled/refunded (escrow and deposit jobs)   "
        f"p50 {percentile(job_latency, 50):.2f} s, p95 {percentile(job_latency, 95):.2f} s"
    )
    errors = Counter(g["error"] for g in gateway if not g["ok"])
    print(
        f"  gateway        {len(gateway)} requests, {len(gateway_ok)} answered in full; failed {dict(errors) or 0}; "
        f"held back {len(r.gateway) - len(gateway)}"
    )
    lat = [g["latency"] for g in gateway_ok]
    print(f"                 request latency   p50 {percentile(lat, 50):.2f} s, p95 {percentile(lat, 95):.2f} s")
    print(
        f"  supply         {figures.get('supply')} uait over {figures.get('addresses')} addresses and "
        f"{figures.get('escrows')} escrows; fees paid to proposers {figures.get('fees')} uait"
    )
    for fault in r.faults:
        print(f"  fault          {fault['fault']}")
        for name, value in fault.items():
            if name != "fault":
                print(f"                   {name}: {value}")
    allowed = figures.get("allowed log lines") or {}
    print(f"  log lines allowed as caused by the injected faults: {'' if allowed else 'none'}")
    for name, count in allowed.items():
        print(f"                 {count:4d} x {name}")
    print()
    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        for problem in problems[:60]:
            print(f"  - {problem}")
    else:
        print(
            "PASSED: nothing lost or duplicated, one chain on every node, every job settled or refunded, "
            "supply conserved, deposit books equal their escrows, no unexplained error in any log"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the load runs")
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--providers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=25.0, help="new transfers offered per second")
    parser.add_argument("--senders", type=int, default=40)
    parser.add_argument("--per-sender-in-flight", type=int, default=24, help="accepted but not yet in a block")
    parser.add_argument("--job-every", type=float, default=1.5, help="seconds between marketplace jobs")
    parser.add_argument("--gateway-every", type=float, default=2.0, help="seconds between gateway requests")
    parser.add_argument("--block-time-ms", type=int, default=1000)
    parser.add_argument("--fault-node", type=int, default=1, help="the validator to kill and restart")
    parser.add_argument("--down-s", type=float, default=15.0, help="how long a killed part stays down")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument("--drain-s", type=float, default=240.0, help="at most this long for everything to settle")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, databases)")
    args = parser.parse_args()
    if not 0 <= args.fault_node < args.validators:
        parser.error("--fault-node must name one of the validators")

    workdir = Path(tempfile.mkdtemp(prefix="aitbc-soak-"))
    print(f"starting a {args.validators}-validator devnet with {args.providers} providers in {workdir} ...", flush=True)
    devnet, network, env = launch_devnet(workdir, args)
    soak = None
    problems: list[str] = []
    try:
        soak = Soak(network, env, workdir, args)
        print("funding wallets, opening a deposit ...", flush=True)
        soak.setup()
        print(f"load for {args.minutes:g} min ...", flush=True)
        timing = soak.run()
        print("checking ...", flush=True)
        problems, figures = soak.check()
    except BaseException:
        print(f"logs and databases kept in {workdir}", flush=True)
        raise
    finally:
        if soak is not None:
            soak.stop.set()
            for part in soak.nodes + soak.providers:
                part.stop()
        stop_devnet(devnet)
    # The logs are read once every process has stopped: shutting down must be clean too.
    log_problems, figures["allowed log lines"] = soak.check_logs()
    problems += log_problems
    report(soak, timing, problems, figures)
    if problems or args.keep:
        print(f"logs and databases kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
