"""A real node process (``manage.py node``): its RPC over HTTP, restarts, refused genesis, SIGKILL.

Each node runs with its own data directory (its own SQLite database) and a validator
keystore written with weak KDF parameters for speed.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from nacl.pwhash import argon2id

from chain.models import Account, Block, ChainState, Escrow, Transaction
from chain.protocol.keys import Key
from chain.protocol.tx import NONCE_WINDOW, tx_id
from chain.tests.harness import BATCH, SUBMIT, assert_error
from chain.tests.support import (
    ALLOCATION,
    MIN_ESCROW_BLOCKS,
    Keys,
    LedgerState,
    StoredBlock,
    escrow_lock,
    escrow_pay,
    escrow_refund,
    make_genesis,
    named_key,
    replay,
    state_of,
    transfer,
)
from conftest import Spawned, clean_env, find_free_port, manage_argv, wait_until
from wallet.keystore import KdfParams, encrypt_key, keystore_json

pytestmark = pytest.mark.process

START_TIMEOUT = 90.0  # a failure guard: the node migrates its database on first start
PASSWORD = "validator password for tests"


@dataclass
class NodeFiles:
    data_dir: Path
    genesis_path: Path
    keystore_path: Path
    password_path: Path
    genesis: dict[str, Any]

    @property
    def database(self) -> Path:
        return self.data_dir / "aitbc.sqlite3"


def write_node_files(directory: Path, keys: Keys, **params: int) -> NodeFiles:
    directory.mkdir(parents=True, exist_ok=True)
    genesis = make_genesis(keys, **params)
    files = NodeFiles(
        data_dir=directory / "data",
        genesis_path=directory / "genesis.json",
        keystore_path=directory / "validator.json",
        password_path=directory / "password",
        genesis=genesis,
    )
    files.data_dir.mkdir(exist_ok=True)
    files.genesis_path.write_text(json.dumps(genesis, indent=2), encoding="utf-8")
    weak = KdfParams(opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)
    keystore = encrypt_key(keys.validator, PASSWORD, params=weak, allow_weak_kdf=True)
    files.keystore_path.write_text(keystore_json(keystore), encoding="utf-8")
    files.password_path.write_text(PASSWORD + "\n", encoding="utf-8")
    return files


def node_argv(files: NodeFiles, port: int, genesis_path: Path | None = None) -> list[str]:
    return manage_argv(
        "node",
        "--genesis",
        str(genesis_path or files.genesis_path),
        "--validator-key",
        str(files.keystore_path),
        "--validator-password-file",
        str(files.password_path),
        "--port",
        str(port),
    )


@dataclass
class LiveNode:
    spawned: Spawned
    url: str
    session: requests.Session = field(default_factory=requests.Session)

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url + path, timeout=10)

    def post(self, path: str, body: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        return self.session.post(self.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=10)

    def status(self) -> dict[str, Any]:
        response = self.get("/status")
        assert response.status_code == 200, response.text
        return response.json()

    def tx_status(self, tx_id: str) -> str:
        response = self.get(f"{SUBMIT}/{tx_id}")
        assert response.status_code == 200, response.text
        return response.json()["status"]

    def wait_committed(self, tx_id: str) -> None:
        wait_until(
            lambda: self.spawned.assert_running() or self.tx_status(tx_id) == "committed",
            timeout=30,
            message=f"transaction {tx_id} to be committed",
        )

    def stop(self) -> None:
        self.spawned.process.send_signal(signal.SIGTERM)
        self.spawned.process.wait(30)


def start_node(spawn: Callable[..., Spawned], files: NodeFiles) -> LiveNode:
    port = find_free_port()
    spawned = spawn(node_argv(files, port), env=clean_env(AITBC_DATA_DIR=files.data_dir), name="node")
    node = LiveNode(spawned, f"http://127.0.0.1:{port}")

    def ready() -> bool:
        spawned.assert_running()
        return node.get("/status").status_code == 200

    wait_until(ready, timeout=START_TIMEOUT, interval=0.05, message="the node to serve /status")
    return node


def run_node_to_exit(files: NodeFiles, genesis_path: Path) -> subprocess.CompletedProcess:
    """The node command expected to stop at start-up (it never serves)."""
    return subprocess.run(
        node_argv(files, find_free_port(), genesis_path),
        env=clean_env(AITBC_DATA_DIR=files.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def node_files(tmp_path: Path, chain_keys: Keys) -> NodeFiles:
    return write_node_files(tmp_path / "node", chain_keys, block_time_ms=200)


# -- the RPC of a live node -------------------------------------------------------------------


def test_live_node_answers_rejection_codes_over_http(spawn, node_files: NodeFiles, chain_keys: Keys):
    node = start_node(spawn, node_files)
    alice, bob, arbiter = chain_keys.alice, chain_keys.bob, chain_keys.arbiter
    chain_id = node_files.genesis["chain_id"]
    assert node.status()["params"] == node_files.genesis["params"]

    assert_error(node.post(SUBMIT, b'{"nonce": 1, "nonce": 2}'), "malformed")
    assert_error(node.post(SUBMIT, b'{"amount": 1.0}'), "malformed")
    assert_error(node.post(SUBMIT, transfer(alice, 0, bob.address, 5) | {"nonce": True}), "malformed")
    assert_error(node.post(SUBMIT, transfer(alice, 0, bob.address, 5, chain_id="aitbc-othernet-1")), "wrong_chain")
    tx = transfer(alice, 0, bob.address, 5)
    assert_error(node.post(SUBMIT, tx | {"memo": "changed"}), "bad_signature")
    assert_error(node.get("/v1/chain/accounts/ait1e7vgxthexkwguvjrf7407ct96t75dtwp2rvunq"), "invalid_address")
    assert_error(node.post(SUBMIT, transfer(named_key("pauper"), 0, bob.address, 5)), "insufficient_funds")
    assert_error(node.post(SUBMIT, escrow_refund(arbiter, 0, escrow="ab" * 32)), "escrow_not_found")
    assert_error(node.get(f"{SUBMIT}/{'ab' * 32}"), "not_found")

    response = node.post(SUBMIT, tx)
    assert response.status_code == 202 and response.json() == {"id": response.json()["id"]}
    tx_id = response.json()["id"]
    assert_error(node.post(SUBMIT, tx), "duplicate")
    node.wait_committed(tx_id)
    assert_error(node.post(SUBMIT, transfer(alice, 0, bob.address, 6)), "bad_nonce")
    assert_error(node.post(SUBMIT, transfer(alice, 1 + 64, bob.address, 6)), "bad_nonce")
    assert node.get(f"/v1/chain/accounts/{bob.address}").json() == {
        "address": bob.address,
        "balance": ALLOCATION + 5,
        "nonce": 0,
    }
    lock = escrow_lock(alice, 1, amount=10, arbiter=arbiter.address, timeout_height=1, chain_id=chain_id)
    assert_error(node.post(SUBMIT, lock), "timeout_too_short")


def _children_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each child process of ``pid`` (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = {}
    for child in map(int, children):
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[child] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def test_live_node_checks_a_large_batch_in_its_check_processes(spawn, node_files: NodeFiles, chain_keys: Keys):
    node = start_node(spawn, node_files)
    alice, bob, carol = chain_keys.alice, chain_keys.bob, chain_keys.carol
    before = _children_cpu(node.spawned.process.pid)
    assert len(before) >= 2, f"the node runs no check processes: children {before}"
    txs = [transfer(key, n, bob.address, 1, memo="x" * 200) for key in (alice, carol) for n in range(NONCE_WINDOW + 1)]
    bad = transfer(bob, 0, alice.address, 1, memo="y" * 200)
    batch = [*txs, bad | {"memo": "changed"}, txs[0], {"nonce": 1}]
    body = json.dumps(batch).encode()
    assert len(body) >= 64 * 1024
    response = node.post(BATCH, body)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["id"] for r in results[: len(txs)]] == [tx_id(tx) for tx in txs]
    assert [r["error"]["code"] for r in results[len(txs) :]] == ["bad_signature", "duplicate", "malformed"]
    after = _children_cpu(node.spawned.process.pid)
    assert any(after.get(pid, 0.0) > cpu for pid, cpu in before.items()), (before, after)
    node.wait_committed(results[len(txs) - 1]["id"])
    node.wait_committed(results[NONCE_WINDOW]["id"])
    for key in (alice, carol):
        assert node.get(f"/v1/chain/accounts/{key.address}").json()["nonce"] == NONCE_WINDOW + 1

    # Killed outright, the node cannot stop its check processes: they notice and exit.
    node.spawned.process.send_signal(signal.SIGKILL)
    node.spawned.process.wait(10)
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in after),
        timeout=20,
        message="the killed node's check processes to exit",
    )


# -- genesis at start-up ----------------------------------------------------------------------


def test_restarted_node_resumes_without_reapplying_genesis(spawn, node_files: NodeFiles, chain_keys: Keys):
    alice, bob = chain_keys.alice, chain_keys.bob
    first = start_node(spawn, node_files)
    tx_id = first.post(SUBMIT, transfer(alice, 0, bob.address, 1234)).json()["id"]
    first.wait_committed(tx_id)
    height = first.status()["height"]
    first.stop()
    assert "(genesis applied)" in first.spawned.log()

    second = start_node(spawn, node_files)
    assert "(resumed)" in second.spawned.log()
    assert "genesis applied" not in second.spawned.log()
    assert second.status()["height"] >= height
    assert second.tx_status(tx_id) == "committed"
    assert second.get(f"/v1/chain/accounts/{bob.address}").json()["balance"] == ALLOCATION + 1234
    assert second.get(f"/v1/chain/accounts/{alice.address}").json()["nonce"] == 1
    second.stop()

    # Another genesis for this data directory: the node refuses to start.
    other = dict(node_files.genesis, chain_id="aitbc-othernet-1")
    other_path = node_files.genesis_path.with_name("other-genesis.json")
    other_path.write_text(json.dumps(other), encoding="utf-8")
    refused = run_node_to_exit(node_files, other_path)
    assert refused.returncode != 0
    assert "genesis refused" in refused.stderr and "another data directory" in refused.stderr, refused.stderr


def test_node_refuses_a_genesis_with_an_unknown_param(tmp_path: Path, chain_keys: Keys):
    files = write_node_files(tmp_path / "node", chain_keys, block_time_ms=200, max_block_bytes=1_000_000)
    refused = run_node_to_exit(files, files.genesis_path)
    assert refused.returncode != 0
    assert "genesis refused" in refused.stderr and "unknown genesis params: max_block_bytes" in refused.stderr


# -- SIGKILL while applying blocks ------------------------------------------------------------

CRASH_ROUNDS = 20


@dataclass
class Snapshot:
    """What a node's SQLite file holds, read in one transaction."""

    height: int
    blocks: list[StoredBlock]
    txs: dict[str, tuple[str, int | None, dict[str, Any]]]  # id -> (status, height, body)
    state: LedgerState


def read_node_database(path: Path) -> Snapshot:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN")  # one read snapshot, even while the node writes
        (height,) = connection.execute(f"SELECT height FROM {ChainState._meta.db_table}").fetchone()
        blocks = [
            StoredBlock(height=h, proposer=p, tx_ids=json.loads(ids), results=json.loads(results))
            for h, p, ids, results in connection.execute(
                f"SELECT height, proposer, tx_ids, results FROM {Block._meta.db_table} ORDER BY height"
            )
        ]
        txs = {
            i: (status, h, json.loads(body))
            for i, status, h, body in connection.execute(
                f"SELECT id, status, height, body FROM {Transaction._meta.db_table}"
            )
        }
        accounts = {
            a: (b, n) for a, b, n in connection.execute(f"SELECT address, balance, nonce FROM {Account._meta.db_table}")
        }
        columns = (
            "id, payer, arbiter, job_id, amount, paid, refunded, timeout_height, status, opened_height, closed_height"
        )
        escrows = {}
        for row in connection.execute(f"SELECT {columns} FROM {Escrow._meta.db_table}"):
            escrows[row[0]] = dict(zip(columns.split(", ")[1:], row[1:], strict=True))
        connection.execute("COMMIT")
    finally:
        connection.close()
    return Snapshot(height, blocks, txs, state_of(accounts, escrows))


def check_node_database(files: NodeFiles, reported_committed: dict[str, int], when: str) -> Snapshot:
    """The stored state is the replay of the stored blocks; nothing reported committed was lost."""
    snapshot = read_node_database(files.database)
    assert [b.height for b in snapshot.blocks] == list(range(1, snapshot.height + 1)), when
    bodies = {i: body for i, (_status, _h, body) in snapshot.txs.items()}
    assert snapshot.state == replay(files.genesis, snapshot.blocks, bodies), f"{when}: state is not the replay"
    assert snapshot.state.supply == sum(a["amount"] for a in files.genesis["allocations"]), when
    placed = {i: b.height for b in snapshot.blocks for i in b.tx_ids}
    assert len(placed) == sum(len(b.tx_ids) for b in snapshot.blocks), f"{when}: a transaction in two blocks"
    assert {i: h for i, (_s, h, _b) in snapshot.txs.items() if h is not None} == placed, when
    lost = {i: h for i, h in reported_committed.items() if snapshot.txs.get(i, ("", None))[:2] != ("committed", h)}
    assert not lost, f"{when}: {len(lost)} transactions reported committed are no longer committed"
    return snapshot


@dataclass
class Traffic:
    """Transactions from the funded accounts and the arbiter, built so that admission accepts them.

    A sender's nonces stay within the window of what the blocks seen so far included,
    escrows are paid and refunded only once their lock is committed, and never beyond
    what was locked.
    """

    keys: Keys
    rng: random.Random
    built: dict[str, dict[int, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    next_nonce: Counter = field(default_factory=Counter)
    included: Counter = field(default_factory=Counter)  # per sender, in the blocks seen: a floor of its nonce
    sender_of: dict[str, str] = field(default_factory=dict)
    seen_height: int = 0
    open_escrows: dict[str, int] = field(default_factory=dict)  # committed escrow -> what we may still pay
    pending_locks: dict[str, int] = field(default_factory=dict)  # lock id -> amount
    ids: list[str] = field(default_factory=list)

    def _room(self, key: Key) -> bool:
        return self.next_nonce[key.address] <= self.included[key.address] + NONCE_WINDOW

    def _take(self, key: Key) -> int:
        nonce = self.next_nonce[key.address]
        self.next_nonce[key.address] += 1
        return nonce

    def _keep(self, tx: dict[str, Any], txs: list[dict[str, Any]]) -> str:
        self.built[tx["from"]][tx["nonce"]] = tx
        this_id = tx_id(tx)
        self.sender_of[this_id] = tx["from"]
        self.ids.append(this_id)
        txs.append(tx)
        return this_id

    def batch(self, size: int, height: int) -> list[dict[str, Any]]:
        funded, arbiter = self.keys.funded, self.keys.arbiter
        txs: list[dict[str, Any]] = []
        for _ in range(size):
            roll = self.rng.random()
            if roll < 0.05 and self._room(funded[0]):
                amount = self.rng.randint(1_000, 100_000)
                timeout = height + 1 + MIN_ESCROW_BLOCKS + 100
                nonce = self._take(funded[0])
                lock = escrow_lock(funded[0], nonce, amount=amount, arbiter=arbiter.address, timeout_height=timeout)
                self.pending_locks[self._keep(lock, txs)] = amount
            elif roll < 0.15 and self.open_escrows and self._room(arbiter):
                escrow = self.rng.choice(sorted(self.open_escrows))
                if self.rng.random() < 0.2:
                    del self.open_escrows[escrow]
                    self._keep(escrow_refund(arbiter, self._take(arbiter), escrow=escrow), txs)
                elif self.open_escrows[escrow] > 0:
                    amount = self.rng.randint(1, self.open_escrows[escrow])
                    self.open_escrows[escrow] -= amount
                    to = self.rng.choice(funded).address
                    self._keep(escrow_pay(arbiter, self._take(arbiter), escrow=escrow, to=to, amount=amount), txs)
            else:
                sender, recipient = self.rng.sample(funded, 2)
                if self._room(sender):
                    amount = self.rng.randint(1, 10_000)
                    self._keep(transfer(sender, self._take(sender), recipient.address, amount), txs)
        return txs

    def saw_block(self, block: dict[str, Any]) -> None:
        assert block["height"] == self.seen_height + 1
        self.seen_height = block["height"]
        for included in block["tx_ids"]:
            self.included[self.sender_of[included]] += 1

    def unsettled(self, nonces: dict[str, int]) -> list[dict[str, Any]]:
        """What was built from each account's nonce on: lost in a kill unless it was admitted."""
        return [
            tx for address, by_nonce in self.built.items() for n, tx in sorted(by_nonce.items()) if n >= nonces[address]
        ]


def flow_until_killed(
    node: LiveNode, traffic: Traffic, reported_committed: dict[str, int], kill_after: float, rng: random.Random
) -> None:
    """Submit batches and watch blocks until the node dies (SIGKILL after ``kill_after`` seconds)."""
    pid = node.spawned.pid
    killer = threading.Timer(kill_after, lambda: os.killpg(pid, signal.SIGKILL))
    killer.start()
    deadline = time.monotonic() + kill_after + 30
    try:
        while time.monotonic() < deadline:
            try:
                height = node.status()["height"]
                response = node.post(BATCH, traffic.batch(rng.randint(20, 120), height))
                assert response.status_code == 200, response.text
                codes = {r["error"]["code"] for r in response.json() if "error" in r}
                assert not codes, f"refused at admission: {codes}"
                # What the RPC reports committed, from the blocks and from transactions' own status.
                blocks = node.get(f"/v1/chain/blocks?from={traffic.seen_height + 1}&limit=1000").json()["blocks"]
                for block in blocks:
                    traffic.saw_block(block)
                    for included in block["tx_ids"]:
                        if included not in block["results"]:
                            reported_committed[included] = block["height"]
                for lock_id in list(traffic.pending_locks):
                    detail = node.get(f"{SUBMIT}/{lock_id}").json()
                    if detail["status"] == "committed":
                        reported_committed[lock_id] = detail["height"]
                        traffic.open_escrows[lock_id] = traffic.pending_locks.pop(lock_id)
                for sampled in rng.sample(traffic.ids, min(3, len(traffic.ids))):
                    detail = node.get(f"{SUBMIT}/{sampled}").json()
                    if detail["status"] == "committed":
                        reported_committed[sampled] = detail["height"]
            except (requests.RequestException, ValueError):  # the kill may cut an answer short
                if node.spawned.running() and time.monotonic() < deadline:
                    continue
                break
        else:
            pytest.fail("the node was not killed in time")
    finally:
        killer.join()
    node.spawned.process.wait(30)
    assert node.spawned.process.returncode == -signal.SIGKILL


def test_node_killed_while_applying_blocks_recovers_its_state(spawn, tmp_path: Path, chain_keys: Keys):
    files = write_node_files(tmp_path / "node", chain_keys, block_time_ms=200)
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    traffic = Traffic(chain_keys, rng)
    reported_committed: dict[str, int] = {}
    heights = []
    for round_ in range(CRASH_ROUNDS):
        when = f"round {round_} (seed {seed})"
        node = start_node(spawn, files)
        log = node.spawned.log()
        if round_ == 0:
            assert "(genesis applied)" in log, log
        else:
            assert "(resumed)" in log and "genesis applied" not in log, f"{when}: genesis applied again\n{log}"
            snapshot = check_node_database(files, reported_committed, f"{when}, after restart")
            assert snapshot.height >= heights[-1], f"{when}: the chain went back"
            for sampled in rng.sample(sorted(reported_committed), min(20, len(reported_committed))):
                assert node.tx_status(sampled) == "committed", when
        # Whatever a kill may have lost before admission goes in again; the rest is a duplicate.
        nonces = {k.address: node.get(f"/v1/chain/accounts/{k.address}").json()["nonce"] for k in chain_keys.funded}
        nonces[chain_keys.arbiter.address] = node.get(f"/v1/chain/accounts/{chain_keys.arbiter.address}").json()[
            "nonce"
        ]
        again = traffic.unsettled(nonces)
        if again:
            results = node.post(BATCH, again).json()
            assert {r["error"]["code"] for r in results if "error" in r} <= {"duplicate"}, when

        flow_until_killed(node, traffic, reported_committed, kill_after=rng.uniform(0.3, 1.5), rng=rng)
        snapshot = check_node_database(files, reported_committed, f"{when}, after SIGKILL")
        heights.append(snapshot.height)

    print(
        f"\ncrash test (seed {seed}): {CRASH_ROUNDS} kills, heights {heights}, "
        f"{len(traffic.ids)} transactions submitted, {len(reported_committed)} reported committed and kept"
    )
    assert heights[-1] > heights[0]
    assert len(reported_committed) > 100
