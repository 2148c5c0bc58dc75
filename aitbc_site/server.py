"""Running the ASGI application under Daphne, shared by ``serve`` and ``node``."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from asgiref.sync import ThreadSensitiveContext
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


# What a websocket client may have sent that its consumer has not read yet (see WebsocketInbox).
WEBSOCKET_INBOX_FRAMES = 2000
WEBSOCKET_INBOX_BYTES = 64 * 1024 * 1024
CLOSE_POLICY_VIOLATION = 1008


def _frame_size(message: dict[str, Any]) -> int:
    return len(message.get("text") or message.get("bytes") or "")


class WebsocketInbox(asyncio.Queue):
    """The frames of one websocket connection waiting for its consumer, within a bound.

    Daphne reads every frame off the socket as it arrives and queues it for the
    application without limit: a client sending faster than its consumer reads (a
    flooding peer) would grow this process by everything it sent, out of reach of any
    rate limit the consumer applies. Past ``max_frames`` frames or ``max_bytes``
    unread, the connection is closed (1008) and every further frame it sends is dropped;
    the disconnect still reaches the consumer.
    """

    def __init__(self, protocol, *, path: str, max_frames: int, max_bytes: int) -> None:
        super().__init__()
        self.protocol, self.path = protocol, path
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.queued_bytes = 0
        self.overflowed = False

    def _put(self, item: dict[str, Any]) -> None:
        self.queued_bytes += _frame_size(item)
        super()._put(item)

    def _get(self) -> dict[str, Any]:
        item = super()._get()
        self.queued_bytes -= _frame_size(item)
        return item

    def put_nowait(self, item: dict[str, Any]) -> None:
        if item.get("type") == "websocket.receive":
            if self.overflowed:
                return
            if self.qsize() >= self.max_frames or self.queued_bytes + _frame_size(item) > self.max_bytes:
                self.overflowed = True
                logger.warning(
                    "%s ws %s: %d frames (%d bytes) sent and not yet read; closing the connection",
                    getattr(self.protocol, "client_addr", None),
                    self.path,
                    self.qsize(),
                    self.queued_bytes,
                )
                self.protocol.serverClose(code=CLOSE_POLICY_VIOLATION)
                return
        super().put_nowait(item)


def _bounded_server(server_class: type) -> type:
    """Daphne's ``Server`` with each websocket's unread frames bounded (``WebsocketInbox``)."""

    class BoundedServer(server_class):
        def create_application(self, protocol, scope):
            if scope.get("type") != "websocket":
                return super().create_application(protocol, scope)
            # Daphne's own create_application with a bounded queue in place of asyncio.Queue().
            assert "application_instance" not in self.connections[protocol]
            input_queue = WebsocketInbox(
                protocol,
                path=scope.get("path", ""),
                max_frames=WEBSOCKET_INBOX_FRAMES,
                max_bytes=WEBSOCKET_INBOX_BYTES,
            )
            scope.setdefault("asgi", {"version": "3.0"})
            application_instance = self.application(
                scope=scope, receive=input_queue.get, send=partial(self.handle_reply, protocol)
            )
            if protocol not in self.connections:
                return None
            self.connections[protocol]["application_instance"] = asyncio.ensure_future(
                application_instance, loop=asyncio.get_event_loop()
            )
            return input_queue

    return BoundedServer


class RequestThread(ThreadPoolExecutor):
    """One thread for one request's sync code at a time, kept for later requests; knows when it is idle."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self._pending = 0
        self._pending_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with self._pending_lock:
            self._pending += 1
        future = super().submit(fn, *args, **kwargs)
        # Added before asyncio's own callback, so it has run by the time the awaiting request resumes.
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future) -> None:
        with self._pending_lock:
            self._pending -= 1

    @property
    def idle(self) -> bool:
        return self._pending == 0


class ReusedRequestThreads:
    """ASGI middleware: each HTTP request's thread-sensitive sync code runs on a thread kept from
    an earlier request instead of a new one.

    Django runs a request's sync parts (middleware hooks, a sync view, closing the response)
    on one thread of its own: by default a new thread for each request, joined by another
    new thread afterwards, with a new database connection that reads the schema again. A
    chain node answers a few small requests a second even when idle, and that set-up was
    much of what each cost. Here the request gets a ``RequestThread`` from those idle
    (one request at a time each, as before); a read served in one call
    (``aitbc_site.direct.OneThreadASGIHandler``) leaves its connection open for the next
    request on that thread. A thread still busy when its request ends (a sync call the
    request stopped waiting for) is not kept: it exits when that call returns.
    """

    def __init__(self, application, *, keep: int = 8) -> None:
        self.application = application
        self.keep = keep
        # Only touched from the event loop's thread.
        self._idle: list[RequestThread] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.application(scope, receive, send)
        executor = self._idle.pop() if self._idle else RequestThread()
        try:
            async with ThreadSensitiveContext(executor=executor):
                return await self.application(scope, receive, send)
        finally:
            if executor.idle and len(self._idle) < self.keep:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    def close(self) -> None:
        """Close the database connections the kept threads hold, and let the threads end."""
        from django.db import connections

        idle, self._idle = self._idle, []
        for executor in idle:
            executor.submit(connections.close_all).result()
            executor.shutdown(wait=True)


def run_server(
    *,
    host: str,
    port: int,
    embedded_worker: bool,
    worker_threads: int = 4,
    on_ready: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    beat_apps: set[str] | None = None,
    beat_disabled: set[str] | None = None,
    websocket_max_bytes: int = 1024 * 1024,
) -> None:
    """Serve until SIGINT or SIGTERM; in embedded mode also run Celery's worker and beat as threads.

    ``websocket_max_bytes`` bounds a message a websocket client may send (Daphne's default,
    1 MiB, is below a chain node's blocks and proposals). ``beat_apps`` names the apps whose
    periodic tasks this process's database schedules; ``beat_disabled``, entries among them
    this process disables.
    """
    # Importing daphne.server installs Twisted's asyncio reactor; it must
    # happen before anything else imports the reactor.
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server, twisted_loop

    from aitbc_site import embedded
    from aitbc_site.beat import disable_beat_entries, sync_beat_schedule
    from aitbc_site.celery import app as celery_app
    from aitbc_site.events import register_server_loop

    sync_beat_schedule(beat_apps)
    if beat_disabled:
        disable_beat_entries(beat_disabled)
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

    server = _bounded_server(Server)(
        application=ReusedRequestThreads(application),
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
