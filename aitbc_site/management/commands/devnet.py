"""``python manage.py devnet``: the whole system on its embedded default.

It generates (once) a genesis, validator keys and a funded faucet wallet
under ``<data dir>/devnet/``, starts one node process per validator and the
web process (coordinator, dashboard, gateway), and writes ``network.json``.
A second run with the same data directory resumes the same chain.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from aitbc_site.devnet import Devnet, Part, read_or_create_secret, write_json_atomic, write_secret_file
from chain.protocol.block import PARAM_BOUNDS, PARAMS, check_genesis
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key
from marketplace.keys import coordinator_key

logger = logging.getLogger("aitbc.devnet")

CHAIN_ID = "aitbc-devnet-1"
FAUCET_FUNDS = 1_000_000 * 1_000_000  # 1,000,000 AIT
VALIDATOR_FUNDS = 1_000 * 1_000_000
COORDINATOR_FUNDS = 1_000 * 1_000_000  # fees of the coordinator's escrow pays and refunds


def ensure_admin(password: str) -> None:
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username="admin", defaults={"email": "admin@localhost"})
    user.is_staff = True
    user.is_superuser = True
    user.set_password(password)
    user.save()


def parse_params(items: list[str]) -> dict[str, int]:
    params = dict(PARAMS)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in PARAMS:
            raise CommandError(f"--param {item!r}: expected NAME=VALUE with NAME one of {', '.join(PARAMS)}")
        low, high = PARAM_BOUNDS[name]
        if not value.isdigit() or not low <= int(value) <= high:
            raise CommandError(f"--param {name} must be an integer in [{low}, {high}], got {value!r}")
        params[name] = int(value)
    return params


def write_keystore(key: Key, keystore_path: Path, password_path: Path) -> None:
    from wallet.keystore import encrypt_key, keystore_json

    password = read_or_create_secret(password_path, 24)
    write_secret_file(keystore_path, keystore_json(encrypt_key(key, password)))


class Command(BaseCommand):
    help = "Run the whole system locally: chain nodes, the web process (coordinator, dashboard), worker and beat."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="coordinator port P; node i at P+6+10i")
        parser.add_argument("--validators", type=int, default=1)
        parser.add_argument("--providers", type=int, default=1)
        parser.add_argument(
            "--param", action="append", default=[], metavar="NAME=VALUE", help="override a genesis parameter"
        )
        parser.add_argument("--reset", action="store_true", help="delete this devnet's chain and start a new one")
        parser.add_argument("--startup-timeout", type=float, default=180.0)

    def handle(self, *args, **options) -> None:
        port = options["port"]
        if not 1024 <= port <= 65535 - 100:
            raise CommandError(f"--port must be between 1024 and 65435, got {port}")
        if not 1 <= options["validators"] <= 9:
            raise CommandError(f"--validators must be between 1 and 9, got {options['validators']}")
        params = parse_params(options["param"])

        devnet = Devnet(port=port)
        devnet.install_signal_handlers()
        if options["reset"]:
            shutil.rmtree(devnet.dir / "nodes", ignore_errors=True)
            (devnet.dir / "genesis.json").unlink(missing_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        admin_password_file = devnet.dir / "admin.password"
        ensure_admin(read_or_create_secret(admin_password_file))

        genesis, faucet_address = self.prepare_chain(
            devnet, options["validators"], params, explicit=bool(options["param"])
        )

        web_url = devnet.url(port)
        nodes = []
        node_ports = [port + 6 + 10 * index for index in range(len(genesis["validators"]))]
        for index, validator in enumerate(genesis["validators"]):
            name = f"node{index}"
            node_dir = devnet.dir / "nodes" / name
            node_port = node_ports[index]
            env = {"AITBC_DATA_DIR": str(node_dir)}
            peers = ",".join(f"ws://127.0.0.1:{p}/p2p/" for p in node_ports if p != node_port)
            argv = devnet.manage(
                "node",
                "--genesis",
                str(devnet.dir / "genesis.json"),
                "--validator-key",
                str(node_dir / "validator.keystore.json"),
                "--validator-password-file",
                str(node_dir / "validator.password"),
                "--host",
                "127.0.0.1",
                "--port",
                str(node_port),
            )
            if peers:
                argv += ["--peers", peers]
            part = devnet.add(
                Part(
                    role="node",
                    name=name,
                    argv=argv,
                    env=env,
                    health_url=f"{devnet.url(node_port)}/health",
                    log_path=node_dir / "node.log",
                )
            )
            nodes.append(
                (
                    part,
                    {
                        "name": name,
                        "rpc_url": devnet.url(node_port),
                        "p2p_url": f"ws://127.0.0.1:{node_port}/p2p/",
                        "validator_address": validator["address"],
                        "argv": argv,
                        "env": env,
                    },
                )
            )
        node_url = nodes[0][1]["rpc_url"]
        web = devnet.add(
            Part(
                role="web",
                name="coordinator",
                argv=devnet.manage("serve", "--host", "127.0.0.1", "--port", str(port)),
                env={"AITBC_NODE_URL": node_url},
                health_url=f"{web_url}/health",
                log_path=devnet.dir / "web.log",
            )
        )
        devnet.network = {
            "chain_id": genesis["chain_id"],
            "dashboard_url": web_url,
            "admin": {"username": "admin", "password_file": str(admin_password_file)},
            "faucet": {
                "address": faucet_address,
                "keystore": str(devnet.dir / "faucet.keystore.json"),
                "password_file": str(devnet.dir / "faucet.password"),
            },
            "nodes": [],
            "coordinator": {"pid": None, "url": web_url, "address": coordinator_key().address},
            "providers": [],
            "gateway": None,
        }
        providers = []
        for index in range(options["providers"]):
            name = f"provider{index}"
            provider_dir = devnet.dir / "providers" / name
            provider_port = port + 8 + 10 * index
            keystore, password = provider_dir / "provider.keystore.json", provider_dir / "provider.password"
            if not keystore.exists():
                write_keystore(Key.generate(), keystore, password)
            address = json.loads(keystore.read_text(encoding="utf-8"))["address"]
            env = {"AITBC_DATA_DIR": str(provider_dir)}
            argv = devnet.manage(
                "provider",
                "serve",
                "--backend",
                "llamacpp",
                "--coordinator",
                web_url,
                "--host",
                "127.0.0.1",
                "--port",
                str(provider_port),
                "--name",
                name,
                "--key",
                str(keystore),
                "--password-file",
                str(password),
                "--node-url",
                node_url,
            )
            part = devnet.add(
                Part(
                    role="provider",
                    name=name,
                    argv=argv,
                    env=env,
                    health_url=f"{devnet.url(provider_port)}/health",
                    log_path=provider_dir / "provider.log",
                )
            )
            providers.append(
                (
                    part,
                    {
                        "name": name,
                        "url": devnet.url(provider_port),
                        "address": address,
                        "models": ["smollm2:135m"],
                        "argv": argv,
                        "env": env,
                    },
                )
            )

        def refresh() -> None:
            devnet.network["nodes"] = [dict(info, pid=part.pid if part.running() else None) for part, info in nodes]
            devnet.network["coordinator"]["pid"] = web.pid if web.running() else None
            devnet.network["providers"] = [
                dict(info, pid=part.pid if part.running() else None) for part, info in providers
            ]

        try:
            devnet.start_all(timeout=options["startup_timeout"])
            refresh()
            # -- gateway (marketplace.gateway.devnet): a demo API key on a deposit the faucet funds --
            from marketplace.gateway import devnet as gateway_devnet

            demo_key = gateway_devnet.ensure_demo_key(
                devnet_dir=devnet.dir,
                node_url=node_url,
                faucet_keystore=devnet.dir / "faucet.keystore.json",
                faucet_password=devnet.dir / "faucet.password",
            )
            devnet.network["gateway"] = gateway_devnet.gateway_entry(web_url=web_url, key=demo_key)
            # -- end gateway --
            devnet.write_network()
            self.print_summary(devnet, admin_password_file)
            self.stdout.write("Use it from Ollama or OpenAI clients (the demo API key draws on a funded deposit):")
            for line in gateway_devnet.newcomer_lines(web_url=web_url, key=demo_key):
                self.stdout.write(f"  {line}")
            devnet.supervise(on_change=refresh)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            self.stdout.write("stopping devnet ...")
            devnet.stop_all()
            self.stdout.write("devnet stopped")

    def prepare_chain(self, devnet: Devnet, validators: int, params: dict, *, explicit: bool) -> tuple[dict, str]:
        """The devnet's genesis, generated with its keys on first use and reused after."""
        genesis_path = devnet.dir / "genesis.json"
        faucet_keystore = devnet.dir / "faucet.keystore.json"
        if genesis_path.exists():
            genesis = json.loads(genesis_path.read_text(encoding="utf-8"))
            if len(genesis["validators"]) != validators or (explicit and genesis["params"] != params):
                raise CommandError(
                    f"{genesis_path} describes another chain ({len(genesis['validators'])} validators, params "
                    f"{genesis['params']}); run with --reset to start a new one, or use another AITBC_DATA_DIR"
                )
            faucet = json.loads(faucet_keystore.read_text(encoding="utf-8"))["address"]
            return genesis, faucet
        self.stdout.write("creating a new devnet chain (keys, faucet wallet, genesis) ...")
        faucet = Key.generate()
        write_keystore(faucet, faucet_keystore, devnet.dir / "faucet.password")
        validator_keys = []
        for index in range(validators):
            key = Key.generate()
            node_dir = devnet.dir / "nodes" / f"node{index}"
            write_keystore(key, node_dir / "validator.keystore.json", node_dir / "validator.password")
            validator_keys.append(key)
        genesis = {
            "chain_id": CHAIN_ID,
            "genesis_time": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "params": params,
            "validators": [{"address": k.address, "pubkey": k.pubkey_hex, "power": 1} for k in validator_keys],
            "allocations": [{"address": faucet.address, "amount": FAUCET_FUNDS}]
            + [{"address": coordinator_key().address, "amount": COORDINATOR_FUNDS}]
            + [{"address": k.address, "amount": VALIDATOR_FUNDS} for k in validator_keys],
        }
        try:
            check_genesis(genesis)
        except ProtocolError as exc:
            raise CommandError(f"generated genesis is invalid: {exc}") from exc
        write_json_atomic(genesis_path, genesis)
        return genesis, faucet.address

    def print_summary(self, devnet: Devnet, admin_password_file: Path) -> None:
        network = devnet.network
        password = admin_password_file.read_text().strip()
        write = self.stdout.write
        write(self.style.SUCCESS(f"AITBC devnet is up ({'embedded' if settings.EMBEDDED else 'redis'} mode)"))
        write(f"  dashboard and admin   {network['dashboard_url']}/admin/  (admin / {password})")
        write(f"  health                {network['dashboard_url']}/health")
        for node in network["nodes"]:
            write(f"  {node['name']:<20}  {node['rpc_url']}/status  (validator {node['validator_address']})")
        write(f"  coordinator           {network['coordinator']['url']}  (arbiter {network['coordinator']['address']})")
        for provider in network["providers"]:
            write(f"  {provider['name']:<20}  {provider['url']}/health  (models {', '.join(provider['models'])})")
        faucet = network["faucet"]
        write(f"  faucet wallet         {faucet['address']}")
        write(f"  network description   {devnet.dir / 'network.json'}")
        write("Send AIT from the faucet (in another terminal):")
        write(
            f"  python manage.py wallet import faucet --keystore {faucet['keystore']} "
            f"--password-file {faucet['password_file']}"
        )
        write(
            f"  python manage.py wallet send faucet --to <address> --amount 5000000 "
            f"--password-file {faucet['password_file']} --wait"
        )
        write("Press Ctrl-C to stop.")
