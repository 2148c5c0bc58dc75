"""``python manage.py job submit|show``: run a prompt on the marketplace from the command line.

``submit`` pays with a CLI wallet (``manage.py wallet``): it signs an escrow lock naming the
coordinator as arbiter, sends the job, follows it until it settles, and prints the answer,
the charge and the refund. Nothing is custodial: the coordinator never sees the key.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chain.client import ChainUnavailable, default_node_url
from chain.protocol.errors import ProtocolError
from chain.protocol.tx import build_transaction
from wallet.chain import get_chain_client
from wallet.files import find_wallet
from wallet.keystore import decrypt_keystore
from wallet.management.commands.wallet import read_password

FINAL = {"settled", "refunded", "failed", "expired", "unfunded", "cancelled"}
DEFAULT_MODEL = "smollm2:135m"


def default_coordinator() -> str | None:
    import os

    url = os.environ.get("AITBC_COORDINATOR_URL")
    if url:
        return url.rstrip("/")
    try:
        network = json.loads((settings.DATA_DIR / "devnet" / "network.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (network.get("coordinator") or {}).get("url")


class Command(BaseCommand):
    help = "Submit a prompt to the marketplace, paid from a CLI wallet, and follow it until it settles."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        submit = actions.add_parser("submit", help="pay with a wallet's escrow and run a prompt", allow_abbrev=False)
        submit.add_argument("wallet", metavar="NAME_OR_ADDRESS")
        submit.add_argument("--prompt", required=True)
        submit.add_argument("--model", default=DEFAULT_MODEL)
        submit.add_argument("--max-tokens", type=int, default=64)
        submit.add_argument("--max-price", type=int, default=100_000, metavar="UAIT", help="the most the job may cost")
        submit.add_argument("--password-file", metavar="FILE")
        submit.add_argument("--coordinator", metavar="URL", help="default AITBC_COORDINATOR_URL, else the devnet's")
        submit.add_argument("--node", metavar="URL", help="default AITBC_NODE_URL, else the devnet's")
        submit.add_argument("--no-wait", action="store_true", help="print the job id and token and return")
        submit.add_argument("--timeout", type=float, default=300.0)
        submit.add_argument("--json", action="store_true")
        show = actions.add_parser("show", help="a job's state, answer and settlement", allow_abbrev=False)
        show.add_argument("job_id")
        show.add_argument("--token", required=True, help="the job token printed by submit")
        show.add_argument("--coordinator", metavar="URL")
        show.add_argument("--json", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        self.options = options
        self.coordinator = (options.get("coordinator") or default_coordinator() or "").rstrip("/")
        if not self.coordinator:
            raise CommandError("no coordinator: give --coordinator URL or set AITBC_COORDINATOR_URL")
        self.session = requests.Session()
        try:
            if options["action"] == "submit":
                self.submit()
            else:
                self.print_job(self.get_job(options["job_id"], options["token"]))
        except requests.RequestException as exc:
            raise CommandError(f"coordinator at {self.coordinator} unreachable: {exc}") from None
        except ProtocolError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        except ChainUnavailable as exc:
            raise CommandError(str(exc)) from None

    def api(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        answer = self.session.request(method, f"{self.coordinator}{path}", timeout=30, **kwargs)
        try:
            body = answer.json()
        except ValueError:
            raise CommandError(f"{method} {path} answered {answer.status_code} without JSON") from None
        if answer.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            raise CommandError(f"{error.get('code', answer.status_code)}: {error.get('message', body)}")
        return body

    def get_job(self, job_id: str, token: str) -> dict[str, Any]:
        return self.api("GET", f"/v1/jobs/{job_id}", headers={"X-AITBC-Job-Token": token})

    def submit(self) -> None:
        opts = self.options
        if opts["max_tokens"] < 1 or opts["max_price"] < 1:
            raise CommandError("--max-tokens and --max-price must be positive")
        wallet = find_wallet(settings.DATA_DIR / "wallets", opts["wallet"])
        coordinator = self.api("GET", "/v1/coordinator")
        node = get_chain_client(opts["node"] or coordinator.get("node_url") or default_node_url(settings.DATA_DIR))
        key = decrypt_keystore(wallet.keystore, read_password(opts["password_file"]))
        status = node.status()
        lock = build_transaction(
            key,
            chain_id=status["chain_id"],
            type="escrow_lock",
            nonce=node.account(key.address)["nonce"],
            fee=status["params"]["min_fee"],
            payload={
                "job_id": f"cli-{time.time_ns()}",
                "amount": opts["max_price"],
                "arbiter": coordinator["address"],
                # A few blocks of slack past the coordinator's minimum (docs/api.md).
                "timeout_height": status["height"] + coordinator["min_escrow_blocks"] + 10,
            },
        )
        job = self.api(
            "POST",
            "/v1/jobs",
            json={
                "model": opts["model"],
                "prompt": opts["prompt"],
                "max_tokens": opts["max_tokens"],
                "max_price": opts["max_price"],
                "payment": {"escrow_tx": lock},
            },
        )
        token = job["token"]
        if opts["no_wait"]:
            self.emit(
                {"id": job["id"], "token": token, "state": job["state"]},
                [f"job {job['id']} {job['state']} (token {token})"],
            )
            return
        self.stderr.write(f"job {job['id']} submitted; following it (token {token})")
        deadline = time.monotonic() + opts["timeout"]
        seen = job["state"]
        while job["state"] not in FINAL:
            if time.monotonic() > deadline:
                raise CommandError(f"job {job['id']} still {job['state']} after {opts['timeout']:.0f} s")
            time.sleep(0.3)
            job = self.get_job(job["id"], token)
            if job["state"] != seen:
                seen = job["state"]
                self.stderr.write(f"  {seen}{': ' + job['reason'] if job.get('reason') else ''}")
        self.print_job(job, token=token)

    def print_job(self, job: dict[str, Any], token: str | None = None) -> None:
        data = dict(job, token=token) if token else job
        lines = [f"job {job['id']}: {job['state']}" + (f" ({job['reason']})" if job.get("reason") else "")]
        if job.get("output"):
            lines += ["", job["output"].strip(), ""]
        if job.get("charge") is not None:
            lines.append(
                f"charged {job['charge']} uait for {job.get('input_tokens')} input and {job.get('output_tokens')} "
                f"output tokens by {job.get('provider')}; refunded {job.get('refund')} uait"
            )
        self.emit(data, lines)

    def emit(self, data: Any, lines: list[str]) -> None:
        if self.options.get("json"):
            self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            for line in lines:
                self.stdout.write(line)
