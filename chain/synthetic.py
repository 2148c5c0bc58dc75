"""A long chain of final blocks, built fast in one process, to measure and test block sync.

    python -m chain.synthetic OUT_DIR [--blocks 10000] [--validators 4] [--txs-per-block 2]

writes ``OUT_DIR/genesis.json`` (a chain of ``--validators`` validators of equal power and
a few funded senders) and builds that many blocks into the database the environment
selects (``AITBC_DATA_DIR`` or ``DATABASE_URL``, as for ``manage.py node``). Every block
goes through the node's own write path: transfers admitted to the mempool, the block
built by ``block_build`` for the proposer of its height, and applied by ``block_commit``
with a commit carrying every validator's precommit signature, checked like any other.
Block times are one millisecond apart, ending a minute before the build started, so a
node serving this chain is at once far ahead of a new one and nothing is in its future.

A node started on that database (``manage.py node --genesis OUT_DIR/genesis.json``)
serves the chain; a new node given it as a peer catches up by sync (``bench/sync.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from chain.protocol.keys import Key

CHAIN_ID = "aitbc-sync-1"
MIN_FEE = 1000
SENDERS = 8
ALLOCATION = 10**15


def key_for(role: str, number: int) -> Key:
    """The same key for the same role and number on every run."""
    return Key(hashlib.sha256(f"aitbc-synthetic/{role}/{number}".encode()).digest())


def make_genesis(*, validators: int, max_block_txs: int = 1000) -> dict[str, Any]:
    return {
        "chain_id": CHAIN_ID,
        "genesis_time": "2026-01-01T00:00:00Z",
        "params": {"block_time_ms": 1000, "min_fee": MIN_FEE, "max_block_txs": max_block_txs, "min_escrow_blocks": 10},
        "validators": [
            {"address": k.address, "pubkey": k.pubkey_hex, "power": 1}
            for k in (key_for("validator", i) for i in range(validators))
        ],
        "allocations": [{"address": key_for("sender", i).address, "amount": ALLOCATION} for i in range(SENDERS)],
    }


def build(*, genesis: dict[str, Any], blocks: int, txs_per_block: int, report=None) -> str:
    """Apply ``blocks`` blocks on top of ``genesis`` (loaded here); the id of the last one."""
    from chain.protocol.block import sign_vote, vote_body
    from chain.protocol.tx import build_transaction
    from chain.services import block_build, block_commit, chain_state, genesis_load, mempool_admit

    genesis_load(genesis=genesis)
    validators = [key_for("validator", i) for i in range(len(genesis["validators"]))]
    senders = [key_for("sender", i) for i in range(SENDERS)]
    sink = key_for("sink", 0).address
    state = chain_state()
    nonces = {k.address: 0 for k in senders}
    first_ms = int(time.time() * 1000) - 60_000 - blocks
    block_id = state.latest_block_id
    for offset in range(blocks):
        height = state.height + 1 + offset
        txs = []
        for i in range(txs_per_block):
            sender = senders[(height * txs_per_block + i) % SENDERS]
            txs.append(
                build_transaction(
                    sender,
                    chain_id=genesis["chain_id"],
                    type="transfer",
                    nonce=nonces[sender.address],
                    fee=MIN_FEE,
                    payload={"to": sink, "amount": 1 + height % 1000},
                )
            )
            nonces[sender.address] += 1
        if txs:
            results = mempool_admit(txs=txs, chain_id=genesis["chain_id"], min_fee=MIN_FEE)
            refused = [r.error for r in results if r.error]
            if refused:
                raise RuntimeError(f"height {height}: a transfer was refused: {refused[0]}")
        proposer = validators[height % len(validators)]
        block_id, body = block_build(proposer=proposer.address, round_=0, now_ms=first_ms + offset)
        precommit = vote_body(chain_id=genesis["chain_id"], height=height, round=0, step="precommit", block_id=block_id)
        commit = {
            "height": height,
            "round": 0,
            "block_id": block_id,
            "signatures": [{"validator": v.address, "signature": sign_vote(v, precommit)} for v in validators],
        }
        block_commit(body=body, commit=commit)
        if report is not None:
            report(offset + 1)
    return block_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--txs-per-block", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aitbc_site.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    genesis = make_genesis(validators=args.validators)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "genesis.json").write_text(json.dumps(genesis, indent=2), encoding="utf-8")
    started = time.monotonic()
    last = [started]

    def report(done: int) -> None:
        if done == args.blocks or time.monotonic() - last[0] > 5:
            last[0] = time.monotonic()
            print(f"built {done} of {args.blocks} blocks", file=sys.stderr, flush=True)

    last_id = build(genesis=genesis, blocks=args.blocks, txs_per_block=args.txs_per_block, report=report)
    print(json.dumps({"blocks": args.blocks, "last_block_id": last_id, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main()
