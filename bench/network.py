"""Network benchmark: a 4-validator devnet on this machine under a stream of signed transfers.

    python bench/network.py [--seconds 30] [--rate 1000] [--block-time-ms 1000]

Starts ``manage.py devnet --validators 4`` in a scratch data directory, funds senders
from its faucet, then for ``--seconds`` offers ``--rate`` pre-signed transfers a second
(open loop: a batch every quarter second to the four nodes in turn, on schedule however
slowly the nodes answer), and lets what is in flight drain. Printed, all from this one run:

  - finalized tx/s over the submission window beside the offered rate, and beside
    CometBFT's published QA figure (raise --rate until finalized tx/s stops following it);
  - block interval (mean, p50), from the times node0 finalized consecutive heights;
  - submission to finality (p50, p95): from the batch's scheduled time to the moment the node it
    submitted to finalized the block holding the transaction, and p95 / block interval;
  - block propagation (p50, p95): for each height, how long after the block's proposer
    each of the other three finalized it;
  - CPU seconds per finalized transaction, summed over the four node processes and any
    processes they started (/proc utime + stime, from the first submission until the drain), and the same less
    what the idle network burns (measured for a few seconds before the load);
  - the raw single-core Ed25519 verify cost, measured before and after, and the ratio of
    CPU per transaction to its floor of four verifies (each node checks each signature once).

The default rate is a loaded network's: the ratio counts everything the nodes burn, and an
idle network still makes a block a second (about 0.05 CPU s/s for the four), which at 200
transfers a second alone is 250 us a transaction. Lower rates show that fixed cost; the
"less the idle network" line is the transactions' own share.

Finality times come from the nodes' own log lines ("height N final ..."), stamped to the
millisecond by each process on this one clock. The client shares the two cores with the
nodes; it signs everything before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests
from _common import (
    free_port_block,
    median,
    percentile,
    progress,
    start_devnet,
    stop_devnet,
    tree_cpu_seconds,
    wait_until,
)
from ledger import raw_verify_rate

from chain.protocol.keys import Key
from chain.protocol.tx import build_transaction, tx_id

FEE = 1000
TICK = 0.25  # seconds between batches
IDLE_SECONDS = 5
COMETBFT_QA = "CometBFT QA (published, v0.38 on its 200-node testnet): saturation near 400-430 tx/s"
FINAL_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO \d+ chain\.network: height (\d+) final",
)
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


class LogWatcher(threading.Thread):
    """Follows each node's log and records when it finalized each height."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(name="log-watcher", daemon=True)
        self.paths = paths
        self.final: list[dict[int, float]] = [{} for _ in paths]
        self.stop_event = threading.Event()
        self.offsets = [0 for _ in paths]

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.poll()
            self.stop_event.wait(0.02)

    def poll(self) -> None:
        for index, path in enumerate(self.paths):
            try:
                with open(path, "rb") as handle:
                    handle.seek(self.offsets[index])
                    chunk = handle.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1
            self.offsets[index] += end
            for line in chunk[:end].decode("utf-8", "replace").splitlines():
                match = FINAL_LINE.match(line)
                if match:
                    moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    self.final[index].setdefault(int(match.group(2)), moment)

    def height(self, index: int) -> int:
        return max(self.final[index], default=0)


def launch_devnet(workdir: Path, port: int, block_time_ms: int) -> tuple[subprocess.Popen, dict]:
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.update({"AITBC_DATA_DIR": str(workdir / "data"), "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"})
    args = ["--port", str(port), "--validators", "4", "--param", f"block_time_ms={block_time_ms}"]
    return start_devnet(workdir, args, env)


def fund(nodes: list[dict], faucet: Key, chain_id: str, senders: list[Key], amount: int) -> None:
    """Faucet -> hubs -> senders: two blocks, each within the 64-nonce window of its payer."""
    url = nodes[0]["rpc_url"]
    session = requests.Session()
    per_hub = 50
    hubs = [Key.generate() for _ in range(-(-len(senders) // per_hub))]

    def send(payer: Key, payees: list[Key], each: int, start_nonce: int) -> str:
        txs = [
            build_transaction(
                payer,
                chain_id=chain_id,
                type="transfer",
                nonce=start_nonce + i,
                fee=FEE,
                payload={"to": k.address, "amount": each},
            )
            for i, k in enumerate(payees)
        ]
        answer = session.post(f"{url}/v1/chain/transactions/batch", json=txs, timeout=60).json()
        if not all("id" in a for a in answer):
            raise RuntimeError(f"funding refused: {answer[:3]}")
        return answer[-1]["id"]

    def committed(ids: list[str]) -> bool:
        return all(
            session.get(f"{url}/v1/chain/transactions/{i}", timeout=10).json()["status"] == "committed" for i in ids
        )

    faucet_nonce = session.get(f"{url}/v1/chain/accounts/{faucet.address}", timeout=10).json()["nonce"]
    for start in range(0, len(hubs), 60):
        last = send(faucet, hubs[start : start + 60], per_hub * (amount + FEE) + FEE * per_hub, faucet_nonce + start)
        wait_until(lambda last=last: committed([last]), 120, 0.3, "hub funding")
    lasts = [send(hub, senders[i * per_hub : (i + 1) * per_hub], amount, 0) for i, hub in enumerate(hubs)]
    wait_until(lambda: committed(lasts), 120, 0.3, "sender funding")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long transfers are submitted")
    parser.add_argument("--block-time-ms", type=int, default=1000, help="the devnet's block_time_ms")
    parser.add_argument("--rate", type=int, default=1000, help="transfers offered per second")
    parser.add_argument("--senders", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, databases)")
    args = parser.parse_args()

    verify_before = raw_verify_rate()
    workdir = Path(tempfile.mkdtemp(prefix="aitbc-bench-network-"))
    port = free_port_block(51)
    print(f"starting a 4-validator devnet (block_time_ms={args.block_time_ms}) in {workdir} ...", flush=True)
    devnet, network = launch_devnet(workdir, port, args.block_time_ms)
    try:
        result = run(network, args)
    finally:
        stop_devnet(devnet, timeout=60)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    verify_after = raw_verify_rate()
    report(result, verify_before, verify_after, args)


def run(network: dict, args: argparse.Namespace) -> dict:
    from wallet.keystore import decrypt_keystore

    nodes = network["nodes"]
    chain_id = network["chain_id"]
    faucet = decrypt_keystore(
        Path(network["faucet"]["keystore"]).read_text(),
        Path(network["faucet"]["password_file"]).read_text().rstrip("\n"),
    )
    senders = [Key.generate() for _ in range(args.senders)]
    per_batch = max(1, round(args.rate * TICK))
    count = per_batch * int(args.seconds / TICK)
    per_sender = -(-count // len(senders))
    print(f"funding {len(senders)} senders ...", flush=True)
    fund(nodes, faucet, chain_id, senders, amount=per_sender * (FEE + 1) + FEE)

    print(f"signing {count} transfers ...", flush=True)
    sink = Key(b"\x42" * 32).address
    # Nonce-major order: a sender's next transfer comes len(senders) transfers later.
    pairs = [(n, key) for n in range(per_sender) for key in senders][:count]
    txs = [
        build_transaction(key, chain_id=chain_id, type="transfer", nonce=n, fee=FEE, payload={"to": sink, "amount": 1})
        for n, key in progress(pairs, len(pairs), "signing")
    ]
    batches = [
        ([tx_id(t) for t in txs[i : i + per_batch]], json.dumps(txs[i : i + per_batch]).encode())
        for i in range(0, len(txs), per_batch)
    ]
    del txs

    address_to_index = {n["validator_address"]: i for i, n in enumerate(nodes)}
    pids = [n["pid"] for n in nodes]
    watcher = LogWatcher([Path(n["env"]["AITBC_DATA_DIR"]) / "node.log" for n in nodes])
    watcher.poll()
    start_height = watcher.height(0)
    watcher.start()

    lock = threading.Lock()
    submitted: dict[str, tuple[float, int]] = {}  # id -> (submitted at, node index)
    finalized: dict[str, int] = {}  # id -> height
    blocks: dict[int, dict] = {}
    refused: list[dict] = []
    state: dict[str, float] = {}
    stop = threading.Event()
    sessions = threading.local()

    def in_flight() -> int:
        return len(submitted) - len(finalized)

    def submit(number: int, at: float) -> None:
        if not hasattr(sessions, "session"):
            sessions.session = requests.Session()
        index = number % len(nodes)
        ids, body = batches[number]
        try:
            answer = sessions.session.post(
                f"{nodes[index]['rpc_url']}/v1/chain/transactions/batch",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=120,
            ).json()
        except (requests.RequestException, ValueError) as exc:
            answer = [{"error": {"code": "unreachable", "message": str(exc)}}] * len(ids)
        with lock:
            for tx_id_, item in zip(ids, answer, strict=True):
                if "id" in item:
                    submitted.setdefault(tx_id_, (at, index))
                else:
                    refused.append(item["error"])

    def follow_blocks() -> None:
        """Read each block node0 finalized: its transactions and proposer."""
        session = requests.Session()
        url = nodes[0]["rpc_url"]
        seen = watcher.height(0)
        while not stop.is_set() or in_flight() > 0:
            top = watcher.height(0)
            if top > seen:
                answer = session.get(
                    f"{url}/v1/chain/blocks", params={"from": seen + 1, "limit": top - seen}, timeout=30
                )
                for block in answer.json()["blocks"]:
                    with lock:
                        blocks[block["height"]] = block
                        for i in block["tx_ids"]:
                            finalized[i] = block["height"]
                    seen = block["height"]
            if stop.is_set() and time.time() > state.get("drain_deadline", float("inf")):
                return
            time.sleep(0.02)

    follower = threading.Thread(target=follow_blocks, daemon=True)
    follower.start()
    # What the idle network costs (empty blocks, ticks), to tell the transactions' own share.
    idle_start, idle_cpu = time.time(), sum(tree_cpu_seconds(pid) for pid in pids)
    time.sleep(IDLE_SECONDS)
    cpu_before = sum(tree_cpu_seconds(pid) for pid in pids)
    idle_rate = (cpu_before - idle_cpu) / (time.time() - idle_start)
    t0 = time.time()
    with ThreadPoolExecutor(8) as pool:
        for number in range(len(batches)):
            at = t0 + number * TICK
            time.sleep(max(0.0, at - time.time()))
            pool.submit(submit, number, at)
        t1 = time.time()
    stop.set()
    state["drain_deadline"] = time.time() + 120
    follower.join(130)
    cpu_after = sum(tree_cpu_seconds(pid) for pid in pids)
    t_drained = time.time()
    time.sleep(0.5)
    watcher.poll()
    watcher.stop_event.set()

    final0 = watcher.final[0]
    in_window = [h for h in blocks if h > start_height and t0 <= final0.get(h, 0) <= t1]
    window_txs = sum(blocks[h]["header"]["tx_count"] for h in in_window)
    heights = sorted(h for h in final0 if h > start_height and final0[h] <= t1)
    intervals = [final0[b] - final0[a] for a, b in zip(heights, heights[1:], strict=False) if b == a + 1]
    latencies = []
    for tx, (at, index) in submitted.items():
        height = finalized.get(tx)
        if height is None:
            continue
        done = watcher.final[index].get(height) or min(f[height] for f in watcher.final if height in f)
        latencies.append(done - at)
    propagation = []
    for height, block in blocks.items():
        proposer = address_to_index.get(block["header"]["proposer"])
        if proposer is None or height not in watcher.final[proposer]:
            continue
        base = watcher.final[proposer][height]
        propagation += [f[height] - base for i, f in enumerate(watcher.final) if i != proposer and height in f]
    return {
        "window_s": t1 - t0,
        "window_txs": window_txs,
        "submitted": len(submitted),
        "finalized": len(finalized),
        "refused": refused,
        "unfinalized": len(set(submitted) - set(finalized)),
        "offered": len(batches) * per_batch / (t1 - t0),
        "intervals": intervals,
        "latencies": latencies,
        "propagation": propagation,
        "cpu_s": cpu_after - cpu_before,
        "idle_cpu_s": idle_rate * (t_drained - t0),
        "cpu_span_s": t_drained - t0,
        "blocks": len(in_window),
        "max_block": max((blocks[h]["header"]["tx_count"] for h in blocks), default=0),
    }


def report(r: dict, verify_before: float, verify_after: float, args: argparse.Namespace) -> None:
    verify_s = 2 / (verify_before + verify_after)
    tps = r["window_txs"] / r["window_s"]
    interval_mean = sum(r["intervals"]) / len(r["intervals"]) if r["intervals"] else float("nan")
    interval_p50 = median(r["intervals"])
    lat50, lat95 = percentile(r["latencies"], 50), percentile(r["latencies"], 95)
    prop50, prop95 = percentile(r["propagation"], 50), percentile(r["propagation"], 95)
    cpu_per_tx = r["cpu_s"] / r["finalized"] if r["finalized"] else float("nan")
    marginal = (r["cpu_s"] - r["idle_cpu_s"]) / r["finalized"] if r["finalized"] else float("nan")
    ms = 1000
    print()
    print(f"AITBC network benchmark: 4 validators on this machine, {r['window_s']:.0f} s of transfers (one run)")
    print(
        f"  transactions               {r['submitted']} admitted, {r['finalized']} finalized, "
        f"{len(r['refused'])} refused, {r['unfinalized']} not final after the drain"
    )
    print(
        f"  finalized tx/s             {tps:10.0f}   (offered {r['offered']:.0f}/s; {r['blocks']} blocks in the "
        f"window, largest {r['max_block']} txs)"
    )
    print(f"    beside                   {COMETBFT_QA}")
    print(f"  block interval             mean {interval_mean * ms:.0f} ms, p50 {interval_p50 * ms:.0f} ms")
    print(f"  submission to finality     p50 {lat50 * ms:.0f} ms, p95 {lat95 * ms:.0f} ms")
    print(f"    p95 / block interval     {lat95 / interval_mean:10.2f}   (target <= 3)")
    print(f"  propagation proposer->3    p50 {prop50 * ms:.1f} ms, p95 {prop95 * ms:.1f} ms   (target < 100 ms)")
    print(
        f"  CPU per finalized tx       {cpu_per_tx * 1e6:10.0f} us   (4 node processes, {r['cpu_s']:.1f} CPU s "
        f"over {r['cpu_span_s']:.0f} s)"
    )
    print(
        f"  raw Ed25519 verify         {verify_s * 1e6:10.1f} us   (single core: {verify_before:.0f}/s before, "
        f"{verify_after:.0f}/s after)"
    )
    print(f"  CPU per tx / (4 x verify)  {cpu_per_tx / (4 * verify_s):10.1f}   (target <= 2.5)")
    print(
        f"    less the idle network    {marginal / (4 * verify_s):10.1f}   ({marginal * 1e6:.0f} us per tx; idle "
        f"{r['idle_cpu_s'] / r['cpu_span_s']:.2f} CPU s/s, measured for {IDLE_SECONDS} s before)"
    )
    if r["refused"]:
        codes: dict[str, int] = {}
        for error in r["refused"]:
            codes[error["code"]] = codes.get(error["code"], 0) + 1
        print(f"  refused by code            {codes}")


if __name__ == "__main__":
    main()
