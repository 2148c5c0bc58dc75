"""Run the web process: Daphne serving the ASGI application.

In embedded mode (no ``REDIS_URL``) the same process also runs a Celery worker
and beat as threads, since the in-memory channel layer and broker reach only
this process. With ``REDIS_URL`` the worker and beat are separate processes
(``celery -A aitbc_site worker`` / ``celery -A aitbc_site beat``).
"""

from __future__ import annotations

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from aitbc_site.server import run_server


class Command(BaseCommand):
    help = "Serve HTTP and websockets with Daphne (plus an in-process Celery worker and beat in embedded mode)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--migrate", action="store_true", help="apply database migrations first")
        parser.add_argument("--no-worker", action="store_true", help="do not run the embedded Celery worker and beat")
        parser.add_argument("--worker-threads", type=int, default=4)

    def handle(self, *args, **options) -> None:
        if options["migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        run_server(
            host=options["host"],
            port=options["port"],
            embedded_worker=not options["no_worker"],
            worker_threads=options["worker_threads"],
        )
