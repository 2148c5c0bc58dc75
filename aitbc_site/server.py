"""Running the ASGI application under Daphne, shared by ``serve`` and ``node``."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings

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


def run_server(
    *,
    host: str,
    port: int,
    embedded_worker: bool,
    worker_threads: int = 4,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    beat_apps: set[str] | None = None,
    websocket_max_bytes: int = 1024 * 1024,
) -> None:
    """Serve until SIGINT or SIGTERM; in embedded mode also run Celery's worker and beat as threads.

    ``websocket_max_bytes`` bounds a message a websocket client may send (Daphne's default,
    1 MiB, is below a chain node's blocks and proposals).
    """
    # Importing daphne.server installs Twisted's asyncio reactor; it must
    # happen before anything else imports the reactor.
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server, twisted_loop

    from aitbc_site import embedded
    from aitbc_site.beat import sync_beat_schedule
    from aitbc_site.celery import app as celery_app
    from aitbc_site.events import register_server_loop

    sync_beat_schedule(beat_apps)
    worker = None
    if settings.EMBEDDED and embedded_worker:
        worker = embedded.EmbeddedCelery(celery_app, concurrency=worker_threads)
        worker.start()
        embedded.set_current(worker)

    from aitbc_site.asgi import application

    def ready() -> None:
        register_server_loop(twisted_loop)
        if on_ready is not None:
            on_ready()
        logger.info("listening on http://%s:%d (%s mode)", host, port, "embedded" if settings.EMBEDDED else "redis")

    server = Server(
        application=application,
        endpoints=build_endpoint_description_strings(host=host, port=port),
        signal_handlers=True,
        action_logger=access_logger,
        ready_callable=ready,
        application_close_timeout=5,
        websocket_max_message_size=websocket_max_bytes,
        websocket_max_frame_size=websocket_max_bytes,
    )
    try:
        server.run()
    finally:
        if on_stop is not None:
            on_stop()
        if worker is not None:
            worker.stop()
            embedded.set_current(None)
        logger.info("stopped")
