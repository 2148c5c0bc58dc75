"""Fixtures of the wallet's tests.

Key derivations use libsodium's minimum parameters unless a test asks for
``real_kdf``; ``live_node`` starts one real chain node process (``manage.py node``)
for the whole session, with its own data directory and SQLite database.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from django.core.management import call_command

from chain.client import HttpChainClient
from chain.protocol.keys import Key
from wallet import keystore
from wallet.mnemonic import key_from_mnemonic
from wallet.tests.support import DEFAULT_WRITE_PARAMS, FAST_KDF, vector_key, vectors

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_CHILD_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


@pytest.fixture(autouse=True)
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keystore, "WRITE_PARAMS", FAST_KDF)


@pytest.fixture
def real_kdf(fast_kdf: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are written with the production parameters (about a second per derivation)."""
    monkeypatch.setattr(keystore, "WRITE_PARAMS", DEFAULT_WRITE_PARAMS)


@pytest.fixture
def data_dir(tmp_path: Path, settings, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory, and no node, password or devnet from the environment."""
    directory = tmp_path / "data"
    directory.mkdir()
    settings.DATA_DIR = directory
    for name in ("AITBC_NODE_URL", "AITBC_WALLET_PASSWORD", "AITBC_WALLET_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    return directory


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text("test password 1\n", encoding="utf-8")
    return path


@dataclass
class CliResult:
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def wallet_cli(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """``wallet_cli("create", "alice", ..., stdin="...")`` runs ``manage.py wallet`` in this process."""

    def run(*args: str, stdin: str | None = None) -> CliResult:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
        out, err = io.StringIO(), io.StringIO()
        call_command("wallet", *args, stdout=out, stderr=err)
        return CliResult(out.getvalue(), err.getvalue())

    return run


# -- a real chain node ------------------------------------------------------------------------


@dataclass
class LiveNode:
    url: str
    chain_id: str
    min_fee: int
    funded: Key  # the keystore vector's key
    funded_by_mnemonic: Key  # the first mnemonic vector's key
    client: HttpChainClient
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    """One chain node process for the session: one validator, two funded vector keys, 100 ms blocks."""
    home = tmp_path_factory.mktemp("node")
    validator = Key(bytes(range(32)))
    funded = vector_key()
    mnemonic_vector = vectors()["mnemonics"][0]
    funded_by_mnemonic = key_from_mnemonic(mnemonic_vector["mnemonic"], mnemonic_vector["passphrase"])
    chain_id, min_fee = "aitbc-wallet-test-1", 1000
    genesis = {
        "chain_id": chain_id,
        "genesis_time": "2026-11-27T00:00:00Z",
        "params": {"block_time_ms": 100, "min_fee": min_fee, "max_block_txs": 5000, "min_escrow_blocks": 10},
        "validators": [{"address": validator.address, "pubkey": validator.pubkey_hex, "power": 1}],
        "allocations": [
            {"address": funded.address, "amount": 10**12},
            {"address": funded_by_mnemonic.address, "amount": 10**12},
        ],
    }
    (home / "genesis.json").write_text(json.dumps(genesis), encoding="utf-8")
    validator_keystore = keystore.encrypt_key(validator, "validator password", params=FAST_KDF, allow_weak_kdf=True)
    (home / "validator.keystore.json").write_text(json.dumps(validator_keystore), encoding="utf-8")
    (home / "validator.password").write_text("validator password", encoding="utf-8")
    port = _free_port()
    # The node gets its own data directory and SQLite database, never this run's DATABASE_URL.
    env = {name: os.environ[name] for name in _CHILD_ENV if name in os.environ}
    env |= {"AITBC_DATA_DIR": str(home / "data"), "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    log_path = home / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
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
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    node = LiveNode(url, chain_id, min_fee, funded, funded_by_mnemonic, HttpChainClient(url), process, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"the node exited with code {process.returncode}:\n{node.log()}")
            try:
                if requests.get(f"{url}/status", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the node did not answer /status within 90 s:\n{node.log()}")
            time.sleep(0.2)
        yield node
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def node_url(data_dir: Path, live_node: LiveNode, monkeypatch: pytest.MonkeyPatch) -> str:
    """``AITBC_NODE_URL`` pointing at the live node, in an empty data directory."""
    monkeypatch.setenv("AITBC_NODE_URL", live_node.url)
    return live_node.url


@pytest.fixture
def free_tcp_port() -> int:
    """A port on 127.0.0.1 nothing listens on (a node that is down)."""
    return _free_port()
