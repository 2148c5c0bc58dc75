"""The devnet's demo gateway key: a user, a deposit funded from the faucet, a key in ``api_key`` (0600).

Called by ``python manage.py devnet`` once its node and coordinator answer. A second
run with the same data directory keeps the key while it still works (active, its
deposit open with money left); otherwise it opens a new deposit and makes a new key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model

from aitbc_site.devnet import write_secret_file
from chain.client import HttpChainClient
from marketplace import chain
from marketplace.gateway import keys, services
from marketplace.models import Deposit

logger = logging.getLogger("aitbc.devnet")

DEMO_USER = "demo"
DEMO_DEPOSIT = 100 * 1_000_000  # 100 AIT: many thousands of small requests
KEEP_ABOVE = DEMO_DEPOSIT // 10
DEPOSIT_LIFETIME_S = 30 * 24 * 3600


@dataclass(frozen=True)
class DemoKey:
    secret: str
    path: Path
    deposit_id: str


def _reusable(path: Path) -> DemoKey | None:
    if not path.exists():
        return None
    secret = path.read_text(encoding="utf-8").strip()
    try:
        key = keys.key_for_secret(secret)
    except Exception:
        return None
    deposit = key.deposit
    if deposit.state != Deposit.OPEN or deposit.available < KEEP_ABOVE:
        return None
    return DemoKey(secret, path, deposit.pk)


def ensure_demo_key(*, devnet_dir: Path, node_url: str, faucet_keystore: Path, faucet_password: Path) -> DemoKey:
    """The demo key (made, or kept from the last run) and its file ``<devnet dir>/api_key``."""
    from wallet.keystore import decrypt_keystore

    path = devnet_dir / "api_key"
    kept = _reusable(path)
    if kept is not None:
        return kept
    owner, _ = get_user_model().objects.get_or_create(username=DEMO_USER, defaults={"email": "demo@localhost"})
    faucet = decrypt_keystore(
        faucet_keystore.read_text(encoding="utf-8"), faucet_password.read_text(encoding="utf-8").strip()
    )
    client = HttpChainClient(node_url)
    view = chain.chain_view(client, max_age=0)
    deposit = services.deposit_open_signed(
        owner=owner,
        payer=faucet,
        amount=DEMO_DEPOSIT,
        client=client,
        extra_blocks=chain.blocks_for(DEPOSIT_LIFETIME_S, view),
    )
    deposit = services.wait_deposit_open(deposit_id=deposit.pk, timeout=120)
    if deposit.state != Deposit.OPEN:
        raise RuntimeError(f"the demo deposit {deposit.pk} did not open: {deposit.state} {deposit.reason}")
    created = keys.apikey_create(owner=owner, deposit_id=deposit.pk, name="devnet demo")
    write_secret_file(path, created.secret + "\n")
    logger.info("demo API key %s on deposit %s", created.key.prefix, deposit.pk)
    return DemoKey(created.secret, path, deposit.pk)


def gateway_entry(*, web_url: str, key: DemoKey) -> dict[str, str]:
    """``network.json``'s ``gateway`` (interfaces.md)."""
    return {"ollama_url": web_url, "openai_base_url": f"{web_url}/v1", "api_key_file": str(key.path)}


def newcomer_lines(*, web_url: str, key: DemoKey) -> list[str]:
    return [
        f"export OLLAMA_HOST={web_url}/k/{key.secret}",
        f'OpenAI(base_url="{web_url}/v1", api_key=open("{key.path}").read().strip())',
    ]
