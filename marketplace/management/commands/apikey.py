"""``python manage.py apikey create/list/revoke``: gateway API keys (docs/gateway.md).

``create --user NAME`` binds the key to ``--deposit ID`` or the user's newest open
deposit; with ``--amount N --payer-keystore FILE --password-file FILE`` it first opens
a new deposit of N uait paid by that wallet (and waits until it is open). The key is
printed once (``--json``: the key and its record); only its hash is stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from aitbc_site.errors import ApiError
from marketplace.gateway import keys, services
from marketplace.gateway.models import ApiKey
from marketplace.models import Deposit


def key_record(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.pk,
        "name": key.name,
        "prefix": key.prefix,
        "user": key.owner.get_username(),
        "deposit": key.deposit_id,
        "spending_cap": key.spending_cap,
        "spent": services.key_spending(key),
        "models": key.allowed_models,
        "rate_limit": key.rate_limit,
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


class Command(BaseCommand):
    help = "Create, list and revoke gateway API keys."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a key bound to a deposit; the key is shown once")
        create.add_argument("--user", required=True, help="username of the key's owner (created if missing)")
        create.add_argument("--deposit", help="deposit id (default: the user's newest open deposit)")
        create.add_argument("--amount", type=int, help="open a new deposit of this many uait first")
        create.add_argument("--payer-keystore", help="keystore of the wallet that pays the new deposit")
        create.add_argument("--password-file", help="its password")
        create.add_argument("--name", default="")
        create.add_argument("--spending-cap", type=int, help="uait this key may spend in all")
        create.add_argument("--model", action="append", default=[], help="a model the key may use (repeat)")
        create.add_argument("--rate-limit", type=int, help="requests per minute")
        create.add_argument("--json", action="store_true")
        listing = sub.add_parser("list", help="keys (never the keys themselves)")
        listing.add_argument("--user", help="only this user's keys")
        listing.add_argument("--json", action="store_true")
        revoke = sub.add_parser("revoke", help="revoke a key at once")
        revoke.add_argument("id", type=int)
        revoke.add_argument("--json", action="store_true")

    def handle(self, *args, **options) -> None:
        try:
            getattr(self, f"handle_{options['action']}")(options)
        except ApiError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from exc

    def handle_create(self, options: dict[str, Any]) -> None:
        owner, _ = get_user_model().objects.get_or_create(username=options["user"])
        deposit_id = options["deposit"]
        if options["amount"] is not None:
            if deposit_id:
                raise CommandError("give --deposit or --amount, not both")
            if not options["payer_keystore"] or not options["password_file"]:
                raise CommandError("--amount needs --payer-keystore and --password-file")
            deposit_id = self.open_deposit(owner, options).pk
        created = keys.apikey_create(
            owner=owner,
            deposit_id=deposit_id,
            name=options["name"],
            spending_cap=options["spending_cap"],
            allowed_models=options["model"],
            rate_limit=options["rate_limit"],
        )
        if options["json"]:
            self.stdout.write(json.dumps(key_record(created.key) | {"key": created.secret}))
            return
        self.stdout.write(created.secret)
        self.stderr.write(
            f"API key {created.key.pk} for {owner.get_username()} on deposit {created.key.deposit_id}: "
            "shown this once, keep it"
        )

    def open_deposit(self, owner, options: dict[str, Any]) -> Deposit:
        from wallet.keystore import decrypt_keystore

        password = Path(options["password_file"]).read_text(encoding="utf-8").strip()
        payer = decrypt_keystore(Path(options["payer_keystore"]).read_text(encoding="utf-8"), password)
        deposit = services.deposit_open_signed(owner=owner, payer=payer, amount=options["amount"])
        deposit = services.wait_deposit_open(deposit_id=deposit.pk)
        if deposit.state != Deposit.OPEN:
            reason = deposit.reason or "its lock did not commit"
            raise CommandError(f"deposit {deposit.pk} is {deposit.state}: {reason}")
        return deposit

    def handle_list(self, options: dict[str, Any]) -> None:
        owner = None
        if options["user"]:
            owner = get_user_model().objects.filter(username=options["user"]).first()
            if owner is None:
                raise CommandError(f"no user {options['user']!r}")
        records = [key_record(key) for key in keys.apikey_list(owner=owner)]
        if options["json"]:
            self.stdout.write(json.dumps(records))
            return
        for r in records:
            state = "revoked" if r["revoked_at"] else "active"
            cap = "no cap" if r["spending_cap"] is None else f"cap {r['spending_cap']}"
            self.stdout.write(
                f"{r['id']:>5}  {r['prefix']}…  {state:<7}  {r['user']:<16} {r['deposit']}  "
                f"spent {r['spent']} ({cap})  {r['name']}"
            )

    def handle_revoke(self, options: dict[str, Any]) -> None:
        key = keys.apikey_revoke(key_id=options["id"], owner=None)
        if options["json"]:
            self.stdout.write(json.dumps(key_record(key)))
        else:
            self.stdout.write(f"API key {key.pk} ({key.prefix}…) revoked")
