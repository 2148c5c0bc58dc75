"""What the two job commands share: run a pass, print what it did, fail on error."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from automation.models import Run


def print_run(command: BaseCommand, run: Run) -> None:
    prefix = "would " if run.dry_run else ""
    for entry in run.actions:
        verb = entry["action"] if entry["action"] == "skip" else f"{prefix}{entry['action']}"
        command.stdout.write(f"{verb} {entry['target']}: {entry['why']}")
    if not run.actions:
        command.stdout.write("nothing to do")
    summary = f"{run.job} {run.status} (run {run.pk}{', dry run' if run.dry_run else ''})"
    if run.status == Run.ERROR:
        raise CommandError(f"{summary}: {run.error}")
    command.stdout.write(summary)
