"""Fault tests: four validator processes on loopback, faults injected while transfers flow.

One devnet (``manage.py devnet --validators 4``, test hooks on) serves the whole module,
with a background thread submitting signed transfers from several funded keys to varying
nodes and another asking the nodes which of them are committed. Each scenario leaves the
network whole again (every node running, no partition) and ends by checking that every
node holds the same block at every height and every transaction reported committed sits
in exactly one block. The double-signing scenario runs last: jailing its validator leaves
three, which the other scenarios cannot lose one of.

Timeouts are failure guards only; nothing here asserts a speed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from chain.client import ChainUnavailable, HttpChainClient
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key
from chain.protocol.tx import build_transaction
from conftest import PROJECT_ROOT, clean_env, devnet_running, find_free_port_range, pid_alive, wait_until

pytestmark = pytest.mark.process

BLOCK_TIME_MS = 500
STARTUP_TIMEOUT = 180
SENDERS = 6
SEND_INTERVAL = 0.4  # seconds between rounds over the senders: about 15 transfers a second
MIN_FEE = 1000
HALVES = ((0, 1), (2, 3))


@dataclass
class Node:
    index: int
    name: str
    rpc_url: str
    address: str
    argv: list[str]
    env: dict[str, str]
    pid: int
    log_path: Path
    process: subprocess.Popen | None = None  # set when this test (re)started it, not the devnet
    client: HttpChainClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = HttpChainClient(self.rpc_url, timeout=3)

    def status(self) -> dict[str, Any]:
        return self.client.status()

    def height(self) -> int:
        return self.status()["height"]

    def blocks(self, start: int = 1) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            batch = requests.get(
                f"{self.rpc_url}/v1/chain/blocks", params={"from": start, "limit": 1000}, timeout=10
            ).json()["blocks"]
            out.extend(batch)
            if len(batch) < 1000:
                return out
            start = batch[-1]["height"] + 1

    def partition(self, blocked: list[str]) -> None:
        answer = requests.post(f"{self.rpc_url}/v1/test/partition", json={"block": blocked}, timeout=5)
        assert answer.status_code == 200, answer.text


class Devnet:
    """The devnet's nodes and what the tests do to them."""

    def __init__(self, data_dir: Path, env: dict[str, str], network: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.network = network
        self.nodes = [
            Node(
                index=i,
                name=entry["name"],
                rpc_url=entry["rpc_url"],
                address=entry["validator_address"],
                argv=entry["argv"],
                env=entry["env"],
                pid=entry["pid"],
                log_path=Path(entry["env"]["AITBC_DATA_DIR"]) / "node.log",
            )
            for i, entry in enumerate(network["nodes"])
        ]
        self.down: set[int] = set()  # killed or stopped: traffic and checks leave them alone
        # Equal powers: the proposer of (height, round) is the validator at (height + round) % n in address order.
        self.rotation = sorted(node.address for node in self.nodes)

    def proposer(self, height: int, round_: int = 0) -> Node:
        address = self.rotation[(height + round_) % len(self.rotation)]
        return next(node for node in self.nodes if node.address == address)

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.index not in self.down]

    def heights(self, nodes: list[Node] | None = None) -> dict[int, int]:
        return {node.index: node.height() for node in (nodes or self.live())}

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        self.down.add(node.index)
        os.kill(node.pid, sig)
        if node.process is not None:
            # Our own child: reap it, or its zombie keeps the pid alive.
            node.process.wait(30)
        else:
            wait_until(lambda: not pid_alive(node.pid), timeout=30, message=f"{node.name} (pid {node.pid}) to exit")

    def restart(self, node: Node, **extra_env: str) -> None:
        """Start ``node`` again as the devnet did (its argv and env, from the project root)."""
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                node.argv,
                cwd=PROJECT_ROOT,
                env={**self.env, **node.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node.pid = node.process.pid

        def healthy() -> bool:
            if node.process.poll() is not None:
                pytest.fail(f"{node.name} exited with {node.process.returncode}:\n{tail(node.log_path)}")
            return requests.get(f"{node.rpc_url}/health", timeout=2).status_code == 200

        wait_until(healthy, timeout=STARTUP_TIMEOUT, interval=0.3, message=f"{node.name} to answer /health")
        self.down.discard(node.index)

    def wait_for_progress(self, blocks: int, nodes: list[Node] | None = None, timeout: float = 60) -> dict[int, int]:
        """Wait until each of ``nodes`` (default: the live ones) is ``blocks`` above its height now."""
        nodes = nodes or self.live()
        start = self.heights(nodes)
        return wait_until(
            lambda: (now := self.heights(nodes)) and all(now[i] >= start[i] + blocks for i in now) and now,
            timeout=timeout,
            interval=0.2,
            message=f"{blocks} more blocks on nodes {sorted(start)} (from {start})",
        )

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(15)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class Traffic:
    """Signed transfers from funded keys to varying nodes, and which of them nodes report committed."""

    def __init__(self, devnet: Devnet, senders: list[Key], chain_id: str) -> None:
        self.devnet = devnet
        self.senders = senders
        self.chain_id = chain_id
        self.sink = Key(b"\x5a" * 32).address
        self.nonces = {key.address: 0 for key in senders}
        self.unsent: dict[str, dict] = {}
        self.submitted: dict[str, float] = {}  # id -> when it was admitted
        self.committed: dict[str, int] = {}  # id -> height a node reported
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [
            threading.Thread(target=self._submit_loop, name="fault-traffic", daemon=True),
            threading.Thread(target=self._poll_loop, name="fault-poller", daemon=True),
        ]
        self.errors: list[str] = []

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)

    def _submit(self, tx: dict, first: int) -> bool:
        nodes = self.devnet.nodes
        for offset in range(len(nodes)):
            node = nodes[(first + offset) % len(nodes)]
            if node.index in self.devnet.down:
                continue
            try:
                tx_id = node.client.submit(tx)
            except ChainUnavailable:
                continue
            except ProtocolError as exc:
                if exc.code == "duplicate" or (exc.code == "bad_nonce" and "below" in exc.message):
                    return True  # this very transaction is already known, or already in a block
                if exc.code in ("bad_nonce", "mempool_full"):
                    return False  # the chain is not taking more now (a partition): retry later
                self.errors.append(f"{node.name}: {exc.code}: {exc.message}")
                return False
            with self.lock:
                self.submitted.setdefault(tx_id, time.monotonic())
            return True
        return False

    def _submit_loop(self) -> None:
        epoch = 0
        while not self.stop_event.is_set():
            epoch += 1
            for index, key in enumerate(self.senders):
                tx = self.unsent.get(key.address) or build_transaction(
                    key,
                    chain_id=self.chain_id,
                    type="transfer",
                    nonce=self.nonces[key.address],
                    fee=MIN_FEE,
                    payload={"to": self.sink, "amount": 1},
                )
                # Each sender moves to another node every few rounds, so every node admits and gossips.
                if self._submit(tx, first=index + epoch // 10):
                    self.unsent.pop(key.address, None)
                    self.nonces[key.address] += 1
                else:
                    self.unsent[key.address] = tx
            self.stop_event.wait(SEND_INTERVAL)

    def _poll_loop(self) -> None:
        turn = 0
        while not self.stop_event.is_set():
            with self.lock:
                waiting = [i for i, at in self.submitted.items() if i not in self.committed]
            for tx_id in waiting[:200]:
                if self.stop_event.is_set():
                    return
                live = self.devnet.live()
                if not live:
                    break
                turn += 1
                try:
                    answer = live[turn % len(live)].client.transaction(tx_id)
                except (ChainUnavailable, ProtocolError):
                    continue
                if answer["status"] == "committed":
                    with self.lock:
                        self.committed[tx_id] = answer["height"]
            self.stop_event.wait(0.3)

    def committed_snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.committed)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    data_dir = tmp_path_factory.mktemp("faults") / "data"
    port = find_free_port_range(51)
    env = clean_env(AITBC_DATA_DIR=data_dir, AITBC_TEST_HOOKS="1")
    args = ("--port", str(port), "--validators", "4", "--param", f"block_time_ms={BLOCK_TIME_MS}")
    with devnet_running(data_dir, *args, env=env, startup_timeout=STARTUP_TIMEOUT) as (_process, network):
        net = Devnet(data_dir, env, network)
        try:
            net.wait_for_progress(2, timeout=60)
            yield net
        finally:
            # A node a test left stopped must hear the SIGTERM that ends the devnet.
            for node in net.nodes:
                if pid_alive(node.pid):
                    os.kill(node.pid, signal.SIGCONT)
            # Nodes a test restarted are in sessions of their own, out of the devnet's reach.
            net.stop_all()


@pytest.fixture(scope="module")
def traffic(devnet: Devnet) -> Iterator[Traffic]:
    """Fund a few keys from the faucet, then keep transfers flowing for the whole module."""
    from wallet.keystore import decrypt_keystore

    faucet_info = devnet.network["faucet"]
    faucet = decrypt_keystore(
        Path(faucet_info["keystore"]).read_text(encoding="utf-8"),
        Path(faucet_info["password_file"]).read_text(encoding="utf-8").rstrip("\n"),
    )
    chain_id = devnet.network["chain_id"]
    senders = [Key.generate() for _ in range(SENDERS)]
    first = devnet.nodes[0].client
    nonce = first.account(faucet.address)["nonce"]
    funding = [
        build_transaction(
            faucet,
            chain_id=chain_id,
            type="transfer",
            nonce=nonce + i,
            fee=MIN_FEE,
            payload={"to": key.address, "amount": 10_000 * 1_000_000},
        )
        for i, key in enumerate(senders)
    ]
    results = first.submit_batch(funding)
    assert all("id" in r for r in results), results
    wait_until(
        lambda: all(first.account(key.address)["balance"] > 0 for key in senders),
        timeout=60,
        message="the senders' funding to be committed",
    )
    flow = Traffic(devnet, senders, chain_id)
    flow.start()
    yield flow
    flow.stop()


def assert_consistent(devnet: Devnet, traffic: Traffic, committed_before: int) -> None:
    """Every live node holds the same chain, and each transaction reported committed is in it once.

    ``committed_before`` is how many were reported committed when the scenario began: some more
    must have been since, or the transfers did not flow through it.
    """
    wait_until(
        lambda: len(traffic.committed_snapshot()) > committed_before,
        timeout=60,
        message="transfers submitted during the scenario to be committed",
    )
    committed = traffic.committed_snapshot()
    target = max([*committed.values(), max(devnet.heights().values())])
    wait_until(
        lambda: min(devnet.heights().values()) >= target,
        timeout=60,
        message=f"every live node to reach height {target}",
    )
    chains = {node.name: node.blocks() for node in devnet.live()}
    common = min(len(blocks) for blocks in chains.values())
    reference_name, reference = next(iter(chains.items()))
    for name, blocks in chains.items():
        assert [b["height"] for b in blocks] == list(range(1, len(blocks) + 1)), f"{name} has gaps"
        for previous, block in zip(blocks, blocks[1:], strict=False):
            assert block["header"]["prev_id"] == previous["id"], f"{name}: block {block['height']} does not link"
        for height in range(common):
            assert blocks[height]["id"] == reference[height]["id"], (
                f"{name} and {reference_name} differ at height {height + 1}"
            )
    where: dict[str, list[int]] = {}
    for block in reference[:common]:
        for tx_id in block["tx_ids"]:
            where.setdefault(tx_id, []).append(block["height"])
    assert committed, "no transfer was reported committed"
    for tx_id, height in committed.items():
        assert where.get(tx_id) == [height], (
            f"transaction {tx_id} reported committed at {height}, found at {where.get(tx_id)}"
        )
    assert not traffic.errors, traffic.errors[:5]


def decided_rounds(node: Node, start: int) -> dict[int, int]:
    """``{height: round of its commit}`` for the blocks from ``start``."""
    return {b["height"]: b["commit"]["round"] for b in node.blocks(start)}


# -- the scenarios ----------------------------------------------------------------------------


def test_a_killed_node_is_not_missed_and_catches_up_and_signs_after_restart(devnet: Devnet, traffic: Traffic) -> None:
    before = len(traffic.committed_snapshot())
    victim = devnet.nodes[1]
    devnet.kill(victim)
    devnet.wait_for_progress(3)

    devnet.restart(victim)
    others = [n for n in devnet.nodes if n is not victim]
    restarted_at = max(devnet.heights(others).values())
    wait_until(
        lambda: victim.height() >= restarted_at,
        timeout=60,
        message=f"{victim.name} to catch up to height {restarted_at}",
    )

    def signs_again() -> bool:
        blocks = others[0].blocks(restarted_at + 1)
        return any(s["validator"] == victim.address for b in blocks for s in b["commit"]["signatures"])

    wait_until(signs_again, timeout=60, interval=0.5, message=f"a commit signed by {victim.name} after its restart")
    assert_consistent(devnet, traffic, before)


def test_a_stopped_proposer_is_skipped_by_a_round_change_and_follows_after(devnet: Devnet, traffic: Traffic) -> None:
    before = len(traffic.committed_snapshot())
    start = max(devnet.heights().values())
    victim = devnet.proposer(start + 1)
    others = [n for n in devnet.nodes if n is not victim]
    devnet.down.add(victim.index)
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        # Each height it should have proposed in round 0 is decided in a later round without it.
        wait_until(
            lambda: any(r >= 1 for r in decided_rounds(others[0], start + 1).values()),
            timeout=60,
            interval=0.3,
            message=f"a height decided in round >= 1 while {victim.name} is stopped",
        )
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    devnet.down.discard(victim.index)
    reached = max(devnet.heights(others).values())
    wait_until(lambda: victim.height() >= reached, timeout=60, message=f"{victim.name} to follow to height {reached}")
    devnet.wait_for_progress(2)
    assert_consistent(devnet, traffic, before)


def test_a_two_two_partition_finalizes_nothing_and_resumes_once_healed(devnet: Devnet, traffic: Traffic) -> None:
    before = len(traffic.committed_snapshot())
    halves = [[devnet.nodes[i] for i in half] for half in HALVES]
    for mine, theirs in (halves, halves[::-1]):
        for node in mine:
            node.partition([other.address for other in theirs])
    try:
        cut = max(devnet.heights().values())
        # Several rounds' worth of time: neither half holds the 2/3 it takes to finalize.
        deadline = time.monotonic() + 6
        highest = cut
        while time.monotonic() < deadline:
            highest = max(highest, *devnet.heights().values())
            assert highest <= cut + 1, f"a block was finalized during the partition (height {highest} > {cut} + 1)"
            time.sleep(0.25)
    finally:
        for node in devnet.nodes:
            node.partition([])
    devnet.wait_for_progress(3, timeout=60)
    assert_consistent(devnet, traffic, before)


def test_a_double_signing_validator_is_caught_and_jailed(devnet: Devnet, traffic: Traffic) -> None:
    before = len(traffic.committed_snapshot())
    cheat = devnet.nodes[3]
    devnet.kill(cheat, signal.SIGTERM)
    devnet.restart(cheat, AITBC_TEST_DOUBLE_SIGN="1")
    honest = [n for n in devnet.nodes if n is not cheat]

    def jailed() -> bool:
        entry = next(v for v in honest[0].status()["validators"] if v["address"] == cheat.address)
        return entry["status"] == "jailed"

    wait_until(jailed, timeout=90, interval=0.5, message=f"{cheat.name} ({cheat.address}) to be jailed")
    with_evidence = [b for b in honest[0].blocks() if b["evidence"]]
    assert with_evidence, "no block carries the evidence"
    accused = {v["validator"] for b in with_evidence for e in b["evidence"] for v in e["votes"]}
    assert accused == {cheat.address}
    for node in honest:
        entry = next(v for v in node.status()["validators"] if v["address"] == cheat.address)
        assert entry["status"] == "jailed", (node.name, entry)
    # The three left go on without it.
    devnet.wait_for_progress(3, nodes=honest)
    assert_consistent(devnet, traffic, before)
