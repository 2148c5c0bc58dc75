"""Celery worker and beat as threads of the web process (embedded mode).

Without ``REDIS_URL`` the channel layer is in-memory and reaches only its own
process, so the worker that runs tasks (which send channel-layer events) must
live in the same process as the Daphne server. This uses Celery's own parts:
a ``WorkController`` in a thread, as ``celery.contrib.testing.worker`` does
(the ``WorkController`` installs no signal handlers; the server owns them),
and ``celery.beat.EmbeddedService(thread=True)``, the machinery behind
``celery worker -B``. The broker is kombu's in-memory transport, with consumers that
wait for a message rather than poll for one (``MemoryTransport``).
"""

from __future__ import annotations

import logging
import threading
import time
from queue import Empty

from celery import Celery
from celery.beat import EmbeddedService
from celery.worker import WorkController
from kombu.transport import memory

logger = logging.getLogger(__name__)

DJANGO_CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"


class _Arrivals:
    """How many messages were put on the in-memory broker, and a way to wait for the next."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.count = 0

    def note(self) -> None:
        with self._condition:
            self.count += 1
            self._condition.notify_all()

    def wait_past(self, seen: int, timeout: float) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self.count != seen, timeout)


# Process-wide like the in-memory broker itself: a producer and a consumer hold different
# connections (and transports) on the same queues.
_arrivals = _Arrivals()


class MemoryChannel(memory.Channel):
    def _put(self, queue, message, **kwargs) -> None:
        super()._put(queue, message, **kwargs)
        _arrivals.note()

    def _put_fanout(self, exchange, message, routing_key=None, **kwargs) -> None:
        super()._put_fanout(exchange, message, routing_key, **kwargs)
        _arrivals.note()


class MemoryTransport(memory.Transport):
    """kombu's in-memory transport whose consumers sleep until a message is put.

    kombu's own polls its queues every ``polling_interval``: every 10 ms (so a
    ``.delay()`` starts at once) cost an idle process a worker thread waking a hundred
    times a second, about 15 ms of CPU a second, for a worker whose node gets one task
    a second from beat. Here every put wakes the waiting consumers, and
    ``polling_interval`` only bounds how long one waits before looking again anyway.
    """

    Channel = MemoryChannel

    def drain_events(self, connection, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        get = self.cycle.get
        while True:
            # Read the count before looking, so a put between the look and the wait
            # ends the wait at once instead of being slept through.
            seen = _arrivals.count
            try:
                get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            wait = self.polling_interval or 1.0
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError()
                wait = min(wait, left)
            _arrivals.wait_past(seen, wait)


class EmbeddedCelery:
    """One worker (thread pool) and, optionally, beat, inside this process."""

    def __init__(
        self, app: Celery, *, concurrency: int = 4, beat: bool = True, hostname: str = "embedded@aitbc"
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.with_beat = beat
        self.hostname = hostname
        self.worker: WorkController | None = None
        self.worker_thread: threading.Thread | None = None
        self.beat: EmbeddedService | None = None
        self._ready = threading.Event()

    def start(self, timeout: float = 30.0) -> None:
        ready = self._ready

        class _Worker(WorkController):
            def on_consumer_ready(self, consumer) -> None:
                super().on_consumer_ready(consumer)
                ready.set()

        self.worker = _Worker(
            app=self.app,
            hostname=self.hostname,
            pool="threads",
            concurrency=self.concurrency,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=logging.getLevelName(logging.getLogger().level),
        )
        self.worker_thread = threading.Thread(target=self.worker.start, name="celery-worker", daemon=True)
        self.worker_thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("embedded Celery worker did not start")
        if self.with_beat:
            # EmbeddedService defaults to the file-backed PersistentScheduler (a
            # celerybeat-schedule file in the working directory); name the app's
            # configured scheduler so beat reads the schedule operators edit in the admin,
            # django-celery-beat's as ``aitbc_site.beat`` refines it.
            scheduler = self.app.conf.beat_scheduler
            if scheduler == DJANGO_CELERY_BEAT_SCHEDULER:
                scheduler = "aitbc_site.beat:DatabaseScheduler"
            self.beat = EmbeddedService(self.app, thread=True, scheduler_cls=scheduler)
            self.beat.start()
        parts = "worker and beat" if self.beat else "worker"
        logger.info("embedded celery started: %s, %d threads", parts, self.concurrency)

    def is_alive(self) -> bool:
        worker_ok = self.worker_thread is not None and self.worker_thread.is_alive()
        beat_ok = self.beat is None or self.beat.is_alive()
        return worker_ok and beat_ok

    def stop(self, timeout: float = 10.0) -> None:
        if self.beat is not None:
            self.beat.stop()
        if self.worker is not None:
            self.worker.stop(in_sighandler=False)
        if self.worker_thread is not None:
            self.worker_thread.join(timeout)
        logger.info("embedded celery stopped")


_current: EmbeddedCelery | None = None


def set_current(embedded: EmbeddedCelery | None) -> None:
    global _current
    _current = embedded


def current() -> EmbeddedCelery | None:
    return _current
