"""``python manage.py coordinator_key``: print the coordinator's address, creating its key if missing.

The devnet runs it before writing genesis so the coordinator (the arbiter of job escrows)
can be funded for the fees of its pays and refunds.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from marketplace.keys import coordinator_key, keystore_path, password_path


class Command(BaseCommand):
    help = "Print the coordinator's chain address (creates its keystore and password in the data directory if missing)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--json", action="store_true", help="print {address, pubkey, keystore, password_file}")

    def handle(self, *args, **options) -> None:
        key = coordinator_key()
        if options["json"]:
            info = {
                "address": key.address,
                "pubkey": key.pubkey_hex,
                "keystore": str(keystore_path()),
                "password_file": str(password_path()),
            }
            self.stdout.write(json.dumps(info))
        else:
            self.stdout.write(key.address)
