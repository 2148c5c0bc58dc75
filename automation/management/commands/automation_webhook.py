from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from aitbc_site.errors import ApiError
from automation import services
from automation.gitea import GiteaError


class Command(BaseCommand):
    help = "Create the repository webhook in Gitea pointing at URL (e.g. https://host/v1/automation/webhook)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--url", required=True, help="the public URL of /v1/automation/webhook")

    def handle(self, *args, url: str, **options) -> None:
        try:
            hook = services.webhook_install(url=url)
        except (ApiError, GiteaError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"webhook {hook['id']} -> {url} for events: {', '.join(hook.get('events') or [])}")
