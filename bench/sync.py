"""Block sync benchmark: a new node catches up with a chain of 10,000 final blocks.

    python bench/sync.py [--blocks 10000] [--txs-per-block 2] [--database sqlite|postgres]

One run: builds a 4-validator chain of ``--blocks`` blocks (``chain.synthetic``: every
block with its commit of four precommit signatures) into a serving node's database,
starts that node, then starts a new node with an empty database and the serving node as
its only peer. The new node hears the peer's height over gossip, fetches blocks with
their commits (``/v1/chain/blocks?full=1``, 200 at a time), checks every commit's
signatures against the validator set and every block against its state, and applies
them. Printed: the build time, the sync time and rate (blocks/s, transactions/s), the
new node's own progress lines (what an operator sees in its log), and whether both
nodes hold the same block id at every height. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from _common import ROOT, free_port_block, manage, process_cpu_seconds, wait_until
from ledger import Database


def block_ids(url: str, height: int) -> list[str]:
    ids: list[str] = []
    session = requests.Session()
    while len(ids) < height:
        page = session.get(f"{url}/v1/chain/blocks", params={"from": len(ids) + 1, "limit": 1000}, timeout=60).json()
        if not page["blocks"]:
            break
        ids.extend(b["id"] for b in page["blocks"])
    return ids


def height_of(url: str) -> int:
    try:
        return requests.get(f"{url}/status", timeout=5).json()["height"]
    except (requests.RequestException, ValueError, KeyError):
        return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--txs-per-block", type=int, default=2)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aitbc-bench-sync-"))
    databases: dict[str, Database] = {}
    processes: list[subprocess.Popen] = []
    try:
        for role in ("source", "fresh"):
            databases[role] = Database(args.database, work, f"aitbc_bench_sync_{role}_{os.getpid()}")
        # INFO: the new node's progress lines are what this benchmark shows.
        source_env = databases["source"].env(work / "source") | {"LOG_LEVEL": "INFO"}
        fresh_env = databases["fresh"].env(work / "fresh") | {"LOG_LEVEL": "INFO"}
        print(f"building {args.blocks} blocks of a 4-validator chain ({args.database}, in {work}) ...", flush=True)
        started = time.monotonic()
        built = subprocess.run(
            [sys.executable, "-m", "chain.synthetic", str(work), "--blocks", str(args.blocks)]
            + ["--txs-per-block", str(args.txs_per_block)],
            cwd=ROOT,
            env={**os.environ, **source_env},
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise SystemExit(built.stderr[-3000:])
        build_s = time.monotonic() - started
        last_id = json.loads(built.stdout.strip().splitlines()[-1])["last_block_id"]

        port = free_port_block(4)
        source_url, fresh_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
        genesis = str(work / "genesis.json")
        processes.append(
            manage("node", "--genesis", genesis, "--port", str(port), env=source_env, log=work / "source.log")
        )
        wait_until(lambda: height_of(source_url) == args.blocks, 180, what="the serving node")
        print(f"serving node up at height {args.blocks}; starting a new node with it as its peer ...", flush=True)

        started = time.monotonic()
        fresh = manage(
            "node",
            "--genesis",
            genesis,
            "--port",
            str(port + 1),
            "--peers",
            f"ws://127.0.0.1:{port}/p2p/",
            env=fresh_env,
            log=work / "fresh.log",
        )
        processes.append(fresh)
        wait_until(lambda: height_of(fresh_url) >= 0, 180, what="the new node's RPC")
        up_s = time.monotonic() - started
        cpu_before = process_cpu_seconds(fresh.pid)
        synced_from = time.monotonic()
        wait_until(lambda: height_of(fresh_url) >= args.blocks, 3600, interval=0.5, what="the sync")
        sync_s = time.monotonic() - synced_from
        cpu_s = process_cpu_seconds(fresh.pid) - cpu_before
        total_s = time.monotonic() - started

        same = block_ids(source_url, args.blocks) == block_ids(fresh_url, args.blocks)
        lines = [
            line
            for line in (work / "fresh.log").read_text(errors="replace").splitlines()
            if re.search(r"sync: height|synced \d+ blocks", line)
        ]
        print(f"\nBlock sync: {args.blocks} blocks, {args.txs_per_block} transfers each, 4 validators, {args.database}")
        print(f"  build (chain.synthetic, one process)    {build_s:8.1f} s")
        print(f"  new node start to RPC up                {up_s:8.1f} s")
        print(
            f"  sync, RPC up to height {args.blocks:<6}         {sync_s:8.1f} s   "
            f"{args.blocks / sync_s:8.0f} blocks/s   {args.blocks * args.txs_per_block / sync_s:8.0f} tx/s"
        )
        per_block = 1000 * cpu_s / args.blocks
        print(f"  new node CPU during sync                {cpu_s:8.1f} s   {per_block:8.2f} ms per block")
        print(f"  start to caught up                      {total_s:8.1f} s")
        print(f"  same block id at every height           {same} (last {last_id[:16]}...)")
        print(f"  the new node's progress lines ({len(lines)}):")
        for line in lines[:3] + (["    ..."] if len(lines) > 6 else []) + lines[max(3, len(lines) - 3) :]:
            print("    " + line.split(": ", 1)[-1] if not line.startswith("    ") else line)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for database in databases.values():
            database.drop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
