from __future__ import annotations

from django.core.management.base import BaseCommand

from automation import services
from automation.management.commands._job import print_run


class Command(BaseCommand):
    help = "One pass of claim-task (the same code the beat job runs): claim an eligible, unclaimed issue."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="print what it would do, change nothing")
        parser.add_argument("--max", type=int, default=None, help="claim up to this many issues (default: config)")

    def handle(self, *args, dry_run: bool, max: int | None, **options) -> None:
        run = services.claim_task_run(trigger="manual", dry_run=dry_run, max_claims=max)
        print_run(self, run)
