"""``python manage.py node --genesis FILE``: one chain node.

Its database lives in the data directory (``AITBC_DATA_DIR``), so each node
of a devnet runs with its own. The node serves its RPC (and, with the
consensus work, its P2P websocket) on one port.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from aitbc_site.server import run_server
from chain import node
from chain.protocol.errors import ProtocolError
from chain.services import GenesisMismatch, genesis_load


def read_password(path: str | None) -> str:
    if path:
        return Path(path).read_text(encoding="utf-8").rstrip("\n")
    value = os.environ.get("AITBC_WALLET_PASSWORD")
    if value is None and os.environ.get("AITBC_WALLET_PASSWORD_FILE"):
        value = Path(os.environ["AITBC_WALLET_PASSWORD_FILE"]).read_text(encoding="utf-8").rstrip("\n")
    if value is None:
        raise CommandError("the validator key's password: give --validator-password-file or AITBC_WALLET_PASSWORD")
    return value


class Command(BaseCommand):
    help = "Run one chain node: load its genesis, serve its RPC, produce blocks when it holds a validator key."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--genesis", required=True, help="genesis file (protocol.md)")
        parser.add_argument("--validator-key", help="keystore file of this node's validator key")
        parser.add_argument("--validator-password-file", help="file holding the keystore's password")
        parser.add_argument("--peers", default="", help="comma-separated P2P URLs of other nodes (ws://host:port/p2p/)")
        parser.add_argument("--public-url", help="this node's RPC URL as peers reach it (default http://HOST:PORT)")
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8006)))
        parser.add_argument(
            "--check-processes",
            type=int,
            default=None,
            help="processes checking large submitted batches (default: one per core; 0: check in the node)",
        )

    def handle(self, *args, **options) -> None:
        try:
            genesis = json.loads(Path(options["genesis"]).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read genesis {options['genesis']}: {exc}") from exc
        call_command("migrate", interactive=False, verbosity=0)
        try:
            state, applied = genesis_load(genesis=genesis)
        except (ProtocolError, GenesisMismatch) as exc:
            raise CommandError(f"genesis refused: {exc}") from exc
        self.stdout.write(
            f"chain {state.chain_id} at height {state.height} ({'genesis applied' if applied else 'resumed'})"
        )

        key = None
        if options["validator_key"]:
            from wallet.keystore import decrypt_keystore

            try:
                key = decrypt_keystore(
                    Path(options["validator_key"]).read_text(encoding="utf-8"),
                    read_password(options["validator_password_file"]),
                )
            except Exception as exc:
                raise CommandError(f"validator key {options['validator_key']}: {exc}") from exc
        node.set_validator_key(key)

        from chain.network import MAX_MESSAGE_BYTES, ConsensusDriver, set_driver
        from chain.validators import validator_set_at

        validators = validator_set_at(state.height + 1)
        single = len(validators) == 1
        if key is not None and key.address not in validators:
            self.stdout.write(f"note: {key.address} is not a validator at height {state.height + 1}; following")
        peers = [p.strip() for p in options["peers"].split(",") if p.strip()]
        public_url = (options["public_url"] or f"http://{options['host']}:{options['port']}").rstrip("/")
        driver = ConsensusDriver(
            chain_id=state.chain_id,
            genesis_id=state.genesis_id,
            key=key,
            peers=peers,
            block_time_ms=state.params["block_time_ms"],
            rpc_url=public_url,
            run_consensus=not single,
            double_sign=os.environ.get("AITBC_TEST_DOUBLE_SIGN") == "1" and settings.TEST_HOOKS,
        )
        set_driver(driver)

        from chain.services import start_check_processes, stop_check_processes

        start_check_processes(options["check_processes"])

        # A node allocates tens of thousands of small objects per block; with the default
        # thresholds the cyclic collector keeps rescanning them. Freeze what start-up
        # made and collect the young generation less often.
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)

        def on_ready() -> None:
            driver.start()
            # A one-validator chain needs no rounds: its validator's precommit is the commit.
            if single and key is not None and key.address in validators:
                node.start_producer(key, state.params["block_time_ms"])

        def on_stop() -> None:
            node.stop_producer()
            driver.stop()
            stop_check_processes()

        from chain.tasks import NODE_DISABLED

        # Peers dialing in send whole proposals and blocks: Daphne's 1 MiB default would drop them.
        run_server(
            host=options["host"],
            port=options["port"],
            embedded_worker=True,
            on_ready=on_ready,
            on_stop=on_stop,
            websocket_max_bytes=MAX_MESSAGE_BYTES,
            # A node's database serves the chain only: the coordinator's and the automation's
            # periodic tasks would contend with consensus for its write lock.
            beat_apps={"chain"},
            # Beat sends a task a second for each enabled entry: a node's beat sends only those it uses.
            beat_disabled=NODE_DISABLED,
        )
