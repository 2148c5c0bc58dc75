"""``python manage.py backup FILE``: a consistent copy of the database while it is in use."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from aitbc_site import backup


class Command(BaseCommand):
    help = (
        "Write a consistent backup of the database to FILE, online: SQLite's backup API, or pg_dump's custom "
        "format for PostgreSQL. Keystores and password files are files: back up the data directory too."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--database-url", help="another database than the configured one")
        parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")

    def handle(self, *args, **options) -> None:
        try:
            outcome = backup.backup(options["file"], database_url=options["database_url"])
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from exc
        backup.printer(self.stdout, options["json"])(outcome)
