"""Run the web process: Daphne serving the ASGI application.

In embedded mode (no ``REDIS_URL``) the same process also runs a Celery worker
and beat as threads, since the in-memory channel layer and broker reach only
this process. With ``REDIS_URL`` the worker and beat are separate processes
(``celery -A aitbc_site worker`` / ``celery -A aitbc_site beat``).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

logger = logging.getLogger("aitbc.serve")


def access_logger(protocol: str, action: str, details: dict) -> None:
    from aitbc_site.logredact import redact_path

    if protocol == "http" and action == "complete":
        logger.info(
            "%s %s %s %s",
            details.get("client"),
            details.get("method"),
            redact_path(details.get("path", "")),
            details.get("status"),
        )
    elif protocol == "websocket" and action in ("connected", "disconnected", "rejected"):
        logger.info("%s ws %s %s", details.get("client"), action, redact_path(details.get("path", "")))


class Command(BaseCommand):
    help = "Serve HTTP and websockets with Daphne (plus an in-process Celery worker and beat in embedded mode)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.HOST)
        parser.add_argument("--port", type=int, default=settings.PORT)
        parser.add_argument("--migrate", action="store_true", help="apply database migrations first")
        parser.add_argument("--no-worker", action="store_true", help="do not run the embedded Celery worker and beat")
        parser.add_argument("--worker-threads", type=int, default=4)

    def handle(self, *args, **options) -> None:
        # Importing daphne.server installs Twisted's asyncio reactor; it must
        # happen before anything else imports the reactor.
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server, twisted_loop

        from aitbc_site import embedded
        from aitbc_site.beat import sync_beat_schedule
        from aitbc_site.celery import app as celery_app
        from aitbc_site.events import register_server_loop

        if options["migrate"]:
            call_command("migrate", interactive=False, verbosity=0)
        sync_beat_schedule()

        worker = None
        if settings.EMBEDDED and not options["no_worker"]:
            worker = embedded.EmbeddedCelery(celery_app, concurrency=options["worker_threads"])
            worker.start()
            embedded.set_current(worker)

        from aitbc_site.asgi import application

        host, port = options["host"], options["port"]

        def ready() -> None:
            register_server_loop(twisted_loop)
            logger.info("listening on http://%s:%d (%s mode)", host, port, "embedded" if settings.EMBEDDED else "redis")

        server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=True,
            action_logger=access_logger,
            ready_callable=ready,
            application_close_timeout=5,
        )
        try:
            server.run()
        finally:
            if worker is not None:
                worker.stop()
                embedded.set_current(None)
            logger.info("stopped")
