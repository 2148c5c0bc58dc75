"""``python manage.py restore FILE``: put a backup in place of the database (processes stopped)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from aitbc_site import backup


class Command(BaseCommand):
    help = (
        "Restore the database from a backup FILE written by `backup`. Stop every process that uses the "
        "database first. A database that already holds data is replaced only with --force."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--force", action="store_true", help="replace a database that already holds data")
        parser.add_argument("--database-url", help="another database than the configured one")
        parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")

    def handle(self, *args, **options) -> None:
        try:
            outcome = backup.restore(options["file"], database_url=options["database_url"], force=options["force"])
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from exc
        backup.printer(self.stdout, options["json"])(outcome)
