"""Ledger benchmark: how close does a one-validator node come to the Ed25519 verify floor?

    python bench/ledger.py [--seconds 20] [--database sqlite|postgres|both] [--clients 4]

Measured in one run, on this machine:
  1. raw single-core PyNaCl Ed25519 verify rate (the physical floor of admission);
  2. mempool admission rate (services.mempool_admit, in-process, batches of 5,000);
  3. block application rate (services.block_produce over a full mempool);
  4. end-to-end committed transactions per second of a whole node process
     (`manage.py node`, genesis with max_block_txs=20000 and 1 s blocks) fed
     through HTTP batch submission, ``--clients`` batches in flight at once; all
     its work runs on this machine;
and the ratio of (4) to (1). It also prints the node's CPU time per committed
transaction and, from (2) and (3), the CPU time per transaction of each stage,
which say where the time goes when the ratio falls short. The machine's load
average is printed beside each arm: other work on the machine lowers (4) more
than (1), which runs on one core. PostgreSQL runs use a scratch database created
and dropped by the benchmark (PostgreSQL at 127.0.0.1:5432, as in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nacl.bindings
import nacl.signing
import requests
from _common import ROOT, free_port_block, manage, process_cpu_seconds, progress, tree_cpu_seconds, wait_until

from chain.protocol.keys import Key
from chain.protocol.tx import build_transaction

CHAIN_ID = "aitbc-bench-1"
PG_ADMIN_URL = os.environ.get("AITBC_BENCH_PG_ADMIN", "postgres://postgres@127.0.0.1:5432/postgres")


def raw_verify_rate(count: int = 20000) -> float:
    key = nacl.signing.SigningKey.generate()
    pub = bytes(key.verify_key)
    messages = [os.urandom(330) for _ in range(count)]
    signed = [key.sign(m).signature + m for m in messages]
    for item in signed[:500]:
        nacl.bindings.crypto_sign_open(item, pub)
    start = time.perf_counter()
    for item in signed:
        nacl.bindings.crypto_sign_open(item, pub)
    return count / (time.perf_counter() - start)


def make_workload(senders: int, per_sender: int) -> tuple[list[Key], list[dict]]:
    keys = [Key(i.to_bytes(4, "big") * 8) for i in range(1, senders + 1)]
    sink = Key(b"\xee" * 32).address
    txs = []
    # Interleave senders so every batch holds many senders at consecutive nonces.
    pairs = ((nonce, key) for nonce in range(per_sender) for key in keys)
    for nonce, key in progress(pairs, senders * per_sender, "signing"):
        txs.append(
            build_transaction(
                key, chain_id=CHAIN_ID, type="transfer", nonce=nonce, fee=1000, payload={"to": sink, "amount": 1}
            )
        )
    return keys, txs


def genesis_for(keys: list[Key], validator: Key, max_block_txs: int, block_time_ms: int) -> dict:
    return {
        "chain_id": CHAIN_ID,
        "genesis_time": "2026-11-27T00:00:00Z",
        "params": {
            "block_time_ms": block_time_ms,
            "min_fee": 1000,
            "max_block_txs": max_block_txs,
            "min_escrow_blocks": 10,
        },
        "validators": [{"address": validator.address, "pubkey": validator.pubkey_hex, "power": 1}],
        "allocations": [{"address": k.address, "amount": 10**12} for k in keys],
    }


class Database:
    """A scratch database for one arm: a SQLite file or a PostgreSQL database."""

    def __init__(self, kind: str, workdir: Path, name: str) -> None:
        self.kind = kind
        self.name = name
        self.workdir = workdir
        if kind == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                conn.execute(f'CREATE DATABASE "{name}"')
            base = PG_ADMIN_URL.rsplit("/", 1)[0]
            self.url: str | None = f"{base}/{name}"
        else:
            self.url = None

    def env(self, data_dir: Path) -> dict[str, str]:
        env = {"AITBC_DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"}
        env.pop("REDIS_URL", None)
        if self.url:
            env["DATABASE_URL"] = self.url
        return env

    def server_cpu_seconds(self) -> float | None:
        """CPU seconds of the PostgreSQL server so far: its live backends and what its exited ones used.

        Exited processes are counted in the postmaster's children times, so this includes
        every database on the server (other work on it too), and needs /proc access to it.
        """
        if self.kind != "postgres":
            return None
        import psycopg

        try:
            with psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True) as conn:
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                others = conn.execute("SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
                pids = [row[0] for row in others]
            postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
            fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
            total = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
            for pid in pids:
                try:
                    total += process_cpu_seconds(pid)
                except OSError:
                    pass
            return total
        except (OSError, psycopg.Error):
            return None

    def drop(self) -> None:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


IN_PROCESS = r"""
import gc, json, os, sys, time
sys.path.insert(0, os.getcwd())
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aitbc_site.settings")
django.setup()
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
from chain import services
from chain.protocol.encoding import parse_strict
from chain.protocol.keys import Key
spec = json.load(open(sys.argv[1]))
services.genesis_load(genesis=spec["genesis"])
txs = spec["txs"]
validator = Key(bytes.fromhex(spec["validator_seed"]))
services.MEMPOOL_MAX = len(txs) + 10
# As the node command does (chain/management/commands/node.py).
gc.freeze()
gc.set_threshold(100_000, 50, 100)

# CPU seconds per stage: this thread's for the stages that run in it, the whole
# process's for the signature checks (they run on the verify threads).
cpu = {}
def timed(name, fn, clock=time.thread_time):
    def wrapper(*args, **kwargs):
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            cpu[name] = cpu.get(name, 0.0) + clock() - start
    return wrapper
services.check_transaction = timed("checks", services.check_transaction)
services.verify_signatures = timed("verify", services.verify_signatures, time.process_time)
services._admit_checked = timed("admit_db", services._admit_checked)
services._draft_block = timed("block_build", services._draft_block)
services._store_block = timed("block_store", services._store_block)

bodies = [json.dumps(txs[i:i + 5000]).encode() for i in range(0, len(txs), 5000)]
t0, c0 = time.perf_counter(), time.thread_time()
admitted = 0
for body in bodies:
    start = time.thread_time()
    batch = parse_strict(body)
    cpu["parse"] = cpu.get("parse", 0.0) + time.thread_time() - start
    results = services.mempool_admit(txs=batch, chain_id=spec["genesis"]["chain_id"], min_fee=1000)
    admitted += sum(1 for r in results if r.error is None)
admit_s = time.perf_counter() - t0
cpu["admit_rest"] = time.thread_time() - c0 - sum(cpu[k] for k in ("parse", "checks", "admit_db"))
t0, c0 = time.perf_counter(), time.thread_time()
applied = 0
now = int(time.time() * 1000)
while True:
    now += 10**4
    block = services.block_produce(key=validator, now_ms=now)
    applied += block.tx_count
    if block.tx_count == 0:
        break
apply_s = time.perf_counter() - t0
cpu["block_rest"] = time.thread_time() - c0 - cpu["block_build"] - cpu["block_store"]
print(json.dumps({"admitted": admitted, "admit_s": admit_s, "applied": applied, "apply_s": apply_s, "cpu": cpu}))
"""

STAGES = [
    ("parse", "strict JSON parse of the batch bodies"),
    ("checks", "stateless checks (fields, addresses, canonical bytes, id)"),
    ("verify", "Ed25519 verify (CPU of all verify threads)"),
    ("admit_db", "admission under the mempool lock (account reads, rules, mempool insert)"),
    ("admit_rest", "rest of mempool_admit (known-id lookup, results)"),
    ("block_build", "block build (candidates, accounts, state transition, header)"),
    ("block_store", "block store (block row, accounts, transaction rows)"),
    ("block_rest", "rest of block production (state lock, commit)"),
]


def in_process_rates(db: Database, keys: list[Key], txs: list[dict], validator: Key, workdir: Path) -> dict:
    import subprocess

    spec = workdir / "spec.json"
    genesis = genesis_for(keys, validator, max_block_txs=20000, block_time_ms=1000)
    spec.write_text(json.dumps({"genesis": genesis, "txs": txs, "validator_seed": validator.seed.hex()}))
    script = workdir / "inprocess.py"
    script.write_text(IN_PROCESS)
    data_dir = workdir / "inproc-data"
    out = subprocess.run(
        [sys.executable, str(script), str(spec)],
        cwd=ROOT,
        env={**os.environ, **db.env(data_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def end_to_end(
    db: Database, keys: list[Key], txs: list[dict], validator: Key, workdir: Path, seconds: float, clients: int
) -> dict:
    from wallet.keystore import KdfParams, encrypt_key

    data_dir = workdir / "node-data"
    data_dir.mkdir()
    genesis = genesis_for(keys, validator, max_block_txs=20000, block_time_ms=1000)
    (workdir / "genesis.json").write_text(json.dumps(genesis))
    (workdir / "pw").write_text("bench")
    ks = encrypt_key(validator, "bench", params=KdfParams(opslimit=2, memlimit=8 * 1024 * 1024), allow_weak_kdf=True)
    (workdir / "validator.json").write_text(json.dumps(ks))
    port = free_port_block(2)
    node = manage(
        "node",
        "--genesis",
        str(workdir / "genesis.json"),
        "--validator-key",
        str(workdir / "validator.json"),
        "--validator-password-file",
        str(workdir / "pw"),
        "--port",
        str(port),
        env={**db.env(data_dir), "AITBC_MEMPOOL_MAX": str(len(txs) + 10)},
        log=workdir / "node.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ok(url + "/health"), 120, what="node health")
        cpu_start = tree_cpu_seconds(node.pid)
        main_start = process_cpu_seconds(node.pid)
        client_start = time.process_time()
        server_start = db.server_cpu_seconds()
        bodies = [json.dumps(txs[i : i + 5000]).encode() for i in range(0, len(txs), 5000)]
        session = requests.Session()
        start_height = session.get(url + "/status").json()["height"]
        stop = threading.Event()
        submitted = [0]
        refused = [0]

        def submit(body: bytes) -> None:
            if stop.is_set():
                return
            s = requests.Session()
            answer = s.post(
                url + "/v1/chain/transactions/batch",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=120,
            ).json()
            submitted[0] += sum(1 for a in answer if "id" in a)
            refused[0] += sum(1 for a in answer if "error" in a)

        t0 = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(submit, body) for body in bodies]
            # No polling of /status meanwhile: its mempool count walks the whole mempool,
            # a cost of the watching and not of the load.
            time.sleep(seconds)
            stop.set()
            for f in futures:
                f.result()
        elapsed = time.monotonic() - t0
        node_cpu = tree_cpu_seconds(node.pid) - cpu_start
        main_cpu = process_cpu_seconds(node.pid) - main_start
        client_cpu = time.process_time() - client_start
        server_end = db.server_cpu_seconds()
        server_cpu = None if server_start is None or server_end is None else server_end - server_start
        committed = 0
        blocks = session.get(url + "/v1/chain/blocks", params={"from": start_height + 1, "limit": 1000}).json()[
            "blocks"
        ]
        times = []
        for b in blocks:
            if b["header"]["time_ms"] / 1000 <= 0:
                continue
            committed += b["header"]["tx_count"]
            times.append(b["header"]["time_ms"])
        # Committed rate over the span of blocks that carried transactions.
        loaded = [b for b in blocks if b["header"]["tx_count"]]
        if len(loaded) >= 2:
            span = (loaded[-1]["header"]["time_ms"] - loaded[0]["header"]["time_ms"]) / 1000
            rate = sum(b["header"]["tx_count"] for b in loaded[1:]) / span if span > 0 else float("nan")
        else:
            rate = float("nan")
        return {
            "submitted": submitted[0],
            "refused": refused[0],
            "committed": committed,
            "rate": rate,
            "elapsed": elapsed,
            "blocks": len(blocks),
            "max_block": max((b["header"]["tx_count"] for b in blocks), default=0),
            "node_cpu": node_cpu,
            "main_cpu": main_cpu,
            "server_cpu": server_cpu,
            "client_cpu": client_cpu,
        }
    finally:
        node.terminate()
        try:
            node.wait(20)
        except Exception:
            node.kill()


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="end-to-end measuring time per database")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--senders", type=int, default=2000)
    parser.add_argument("--per-sender", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4, help="batches in flight at once, end-to-end")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aitbc_site.settings")

    print(f"signing {args.senders * args.per_sender} transfers ...", flush=True)
    keys, txs = make_workload(args.senders, args.per_sender)
    validator = Key(b"\x77" * 32)
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    rows = []
    for kind in kinds:
        load_before = os.getloadavg()[0]
        verify_before = raw_verify_rate()
        workdir = Path(tempfile.mkdtemp(prefix=f"aitbc-bench-{kind}-"))
        db = Database(kind, workdir, f"aitbc_bench_{os.getpid()}")
        try:
            small = txs[: min(len(txs), 40000)]
            inproc = in_process_rates(db, keys, small, validator, workdir)
            db.drop()
            db = Database(kind, workdir, f"aitbc_bench_{os.getpid()}_e2e")
            e2e = end_to_end(db, keys, txs, validator, workdir, args.seconds, args.clients)
        finally:
            db.drop()
            shutil.rmtree(workdir, ignore_errors=True)
        verify_after = raw_verify_rate()
        verify = (verify_before + verify_after) / 2
        rows.append((kind, verify, verify_before, verify_after, inproc, e2e, (load_before, os.getloadavg()[0])))

    print()
    print("AITBC ledger benchmark (one run; baseline: raw single-core PyNaCl Ed25519 verify, measured before and")
    print("after each arm)")
    for kind, verify, before, after, inproc, e2e, load in rows:
        print(f"\n[{kind}]   (load average {load[0]:.1f} before, {load[1]:.1f} after, {os.cpu_count()} cores)")
        print(f"  raw verify rate (floor)          {verify:10.0f} /s   (before {before:.0f}, after {after:.0f})")
        print(
            f"  mempool admission                {inproc['admitted'] / inproc['admit_s']:10.0f} tx/s  "
            f"({inproc['admitted']} in {inproc['admit_s']:.2f} s, in-process)"
        )
        print(
            f"  block application                {inproc['applied'] / inproc['apply_s']:10.0f} tx/s  "
            f"({inproc['applied']} in {inproc['apply_s']:.2f} s, in-process)"
        )
        print(
            f"  end-to-end committed (HTTP)      {e2e['rate']:10.0f} tx/s  ({e2e['committed']} committed in "
            f"{e2e['blocks']} blocks, largest {e2e['max_block']}; {e2e['refused']} refused)"
        )
        print(f"  ratio committed / raw verify     {e2e['rate'] / verify:10.2f}      (target >= 0.6)")
        committed = max(1, e2e["committed"])
        per_tx = e2e["node_cpu"] / committed * 1e6
        print(
            f"  node CPU per committed tx        {per_tx:10.1f} us    "
            f"(the node process and its check processes; a raw verify costs {1e6 / verify:.1f} us)"
        )
        main = e2e["main_cpu"] / committed * 1e6
        print(
            f"    of which the node process      {main:10.1f} us    (ledger work, blocks, HTTP; "
            f"the check processes {per_tx - main:.1f} us)"
        )
        if e2e["server_cpu"] is not None:
            server = e2e["server_cpu"] / committed * 1e6
            print(f"  PostgreSQL CPU per committed tx  {server:10.1f} us    (the whole server, other databases too)")
            per_tx += server
        client = e2e["client_cpu"] / committed * 1e6
        print(f"  benchmark client CPU per tx      {client:10.1f} us    (submitting the batches, reading the answers)")
        cores = os.cpu_count() or 1
        print(
            f"  with all {cores} cores to itself      {cores / per_tx * 1e6:10.0f} tx/s  "
            f"(ratio {cores / per_tx * 1e6 / verify:.2f}: the cores over the CPU per committed tx above)"
        )
        print("  in-process CPU per transaction, by stage:")
        for name, what in STAGES:
            print(f"    {inproc['cpu'].get(name, 0.0) / inproc['admitted'] * 1e6:8.1f} us  {what}")


if __name__ == "__main__":
    main()
