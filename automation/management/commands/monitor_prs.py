from __future__ import annotations

from django.core.management.base import BaseCommand

from automation import services
from automation.management.commands._job import print_run


class Command(BaseCommand):
    help = "One pass of monitor-prs (the same code the beat job runs): review requests, reviews, notices, cleanup."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="print what it would do, change nothing")

    def handle(self, *args, dry_run: bool, **options) -> None:
        run = services.monitor_prs_run(trigger="manual", dry_run=dry_run)
        print_run(self, run)
