"""Block sync between real node processes: a new node catches up with a long chain it never saw.

The chain (``chain.synthetic``) has four validators and every block carries a commit of
their precommit signatures; the serving node follows it without a validator key, so the
chain does not grow while the new node catches up.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from chain.synthetic import make_genesis
from conftest import PROJECT_ROOT, clean_env, find_free_port, manage_argv, wait_until

pytestmark = pytest.mark.process

BLOCKS = 400
START_TIMEOUT = 90.0  # failure guards only
SYNC_TIMEOUT = 300.0


def status(url: str) -> dict | None:
    try:
        return requests.get(f"{url}/status", timeout=5).json()
    except (requests.RequestException, ValueError):
        return None


def block_ids(url: str) -> list[str]:
    ids: list[str] = []
    while True:
        page = requests.get(f"{url}/v1/chain/blocks", params={"from": len(ids) + 1, "limit": 200}, timeout=30).json()
        if not page["blocks"]:
            return ids
        ids.extend(b["id"] for b in page["blocks"])


def test_new_node_syncs_a_long_chain_with_progress_and_checked_commits(tmp_path, spawn):
    source_dir, fresh_dir = tmp_path / "source", tmp_path / "fresh"
    source_dir.mkdir()
    fresh_dir.mkdir()
    built = subprocess.run(
        [sys.executable, "-m", "chain.synthetic", str(tmp_path), "--blocks", str(BLOCKS), "--txs-per-block", "2"],
        cwd=PROJECT_ROOT,
        env=clean_env(AITBC_DATA_DIR=source_dir),
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    last_id = json.loads(built.stdout.strip().splitlines()[-1])["last_block_id"]
    genesis = tmp_path / "genesis.json"
    assert json.loads(genesis.read_text()) == make_genesis(validators=4)

    source_port, fresh_port = find_free_port(), find_free_port()
    source_url, fresh_url = f"http://127.0.0.1:{source_port}", f"http://127.0.0.1:{fresh_port}"
    source = spawn(
        manage_argv("node", "--genesis", str(genesis), "--port", str(source_port)),
        env=clean_env(AITBC_DATA_DIR=source_dir, LOG_LEVEL="INFO"),
        name="source",
    )
    wait_until(lambda: (status(source_url) or {}).get("height") == BLOCKS, timeout=START_TIMEOUT, message="source up")

    fresh = spawn(
        manage_argv(
            "node",
            "--genesis",
            str(genesis),
            "--port",
            str(fresh_port),
            "--peers",
            f"ws://127.0.0.1:{source_port}/p2p/",
        ),
        env=clean_env(AITBC_DATA_DIR=fresh_dir, LOG_LEVEL="INFO"),
        name="fresh",
    )
    wait_until(
        lambda: (status(fresh_url) or {}).get("height", -1) >= BLOCKS or not fresh.running(),
        timeout=SYNC_TIMEOUT,
        message="the new node caught up",
    )
    fresh.assert_running()
    source.assert_running()

    ids = block_ids(fresh_url)
    assert len(ids) == BLOCKS and ids[-1] == last_id
    assert ids == block_ids(source_url)
    assert status(fresh_url)["latest_block_id"] == last_id
    # Every block arrived with its commit, and the new node serves those commits in turn.
    last = {"from": BLOCKS, "limit": 1, "full": 1}
    page = requests.get(f"{fresh_url}/v1/chain/blocks", params=last, timeout=30).json()
    assert len(page["blocks"][0]["commit"]["signatures"]) == 4

    log = fresh.log()
    progress = re.findall(r"sync: height (\d+) of (\d+)", log)
    assert progress, log[-3000:]
    assert all(int(of) == BLOCKS for _h, of in progress)
    assert [int(h) for h, _of in progress] == sorted(int(h) for h, _of in progress)
    assert f"synced {BLOCKS} blocks" in log or re.search(r"synced \d+ blocks", log), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
