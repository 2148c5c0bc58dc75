"""The provider daemon: registration, dispatch over a websocket or long polling, jobs, receipts.

One asyncio loop owns all state (running jobs, the outbox, counters). Generations run
in worker threads (``provider.backends``) and hand their chunks back to the loop; the
health server's thread only reads counters. Every message for the coordinator goes
through one ordered outbox drained by whichever transport is up, so a job's chunks,
result and the accepted/rejected answers keep their order across reconnections and a
switch from the websocket to long polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from chain.client import ChainUnavailable, HttpChainClient
from chain.protocol.errors import ProtocolError
from chain.protocol.keys import Key
from chain.protocol.market import build_provider_auth, build_receipt
from provider.backends.base import Backend, Completion, GenerationRequest
from provider.coordinator import CoordinatorClient, CoordinatorError, websocket_url
from provider.health import HealthServer

logger = logging.getLogger("aitbc.provider")

T = TypeVar("T")

CLOSE_AUTH_REFUSED = 4401
CLOSE_NOT_REGISTERED = 4403
_END = object()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Offer:
    """One model at a price (uait per 1,000 tokens), as registered with the coordinator."""

    model: str
    input_price: int
    output_price: int
    context_length: int
    concurrency: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_price": self.input_price,
            "output_price": self.output_price,
            "context_length": self.context_length,
            "concurrency": self.concurrency,
        }


@dataclass
class DaemonConfig:
    name: str
    coordinator_url: str
    offers: list[Offer]
    concurrency: int
    host: str = "127.0.0.1"
    port: int = 8008  # 0 picks a free port (tests)
    public_url: str | None = None  # what the coordinator is told; default http://host:port
    transport: str = "auto"  # "auto" (websocket, long polling after ws_attempts failures), "ws", "poll"
    ws_attempts: int = 3
    ws_retry_s: float = 300.0  # in auto mode, how long to poll before trying the websocket again
    heartbeat_s: float = 10.0
    node_url: str | None = None  # default: the coordinator's node_url
    balance_poll_s: float = 2.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    shutdown_grace_s: float = 10.0


class Backoff:
    """Exponential delays with jitter, so providers cut off together do not return together."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum, self.attempt = initial, maximum, 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * 2**self.attempt)
        self.attempt += 1
        return delay * random.uniform(0.75, 1.0)

    def reset(self) -> None:
        self.attempt = 0


class _NotEstablished(Exception):
    """The websocket did not get as far as the coordinator's welcome."""


class _NotRegistered(Exception):
    """The coordinator does not know this provider (close code 4403, or 401 on a Bearer call)."""


@dataclass
class RunningJob:
    job: dict[str, Any]
    request: GenerationRequest
    started_ms: int
    # Why the generation was stopped early: "cancelled" (the coordinator asked: a receipt
    # for what was produced), "deadline" or "shutdown" (a failure: the job goes elsewhere).
    stop_reason: str | None = None
    abandoned: bool = False
    task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.job["id"]

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.request.cancel.set()


class ProviderDaemon:
    def __init__(self, config: DaemonConfig, backend: Backend, key: Key) -> None:
        self.config = config
        self.backend = backend
        self.key = key
        self.coordinator = CoordinatorClient(config.coordinator_url)
        self.coordinator_address: str | None = None
        self.node_url = config.node_url
        self.models = [offer.model for offer in config.offers]
        self.jobs: dict[str, RunningJob] = {}
        self.jobs_done = 0
        self.earned_uait = 0
        self.connected = False
        self.transport_in_use: str | None = None
        self.health_server = HealthServer(config.host, config.port, self.health)
        self._outbox: deque[dict[str, Any]] = deque()
        self._executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="provider-generate")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registrations = 0  # counts successful registrations, so refusals seen before one do not repeat it
        self._state = "starting"

    # -- state seen from outside ---------------------------------------------------------

    @property
    def url(self) -> str:
        return self.config.public_url or f"http://{self.config.host}:{self.health_server.port}"

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers (read from the health server's thread: plain values only)."""
        return {
            "status": self._state if self._state != "running" else ("ok" if self.connected else "connecting"),
            "provider": self.key.address,
            "name": self.config.name,
            "coordinator_connected": self.connected,
            "transport": self.transport_in_use,
            "backend": self.backend.name,
            "models": list(self.models),
            "active_jobs": len(self.jobs),
            "jobs_done": self.jobs_done,
            "earned_uait": self.earned_uait,
        }

    def request_stop(self) -> None:
        """Begin a clean shutdown; callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    # -- main ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM (or ``request_stop``), then finish or fail jobs and close."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._closing = asyncio.Event()
        self._outbox_changed = asyncio.Event()
        self._capacity_changed = asyncio.Event()
        self._register_lock = asyncio.Lock()
        for signum in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread may install handlers; a daemon run in a thread (tests) is stopped with request_stop.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        self.health_server.start()
        logger.info(
            "provider %s (%s) on %s: backend %s, models %s, concurrency %d, coordinator %s",
            self.config.name,
            self.key.address,
            self.url,
            self.backend.name,
            ", ".join(self.models),
            self.config.concurrency,
            self.config.coordinator_url,
        )
        background: list[asyncio.Task] = []
        try:
            self._state = "registering"
            if await self._register_until_done():
                self._state = "running"
                background.append(asyncio.create_task(self._watch_payments(), name="payments"))
                transport = asyncio.create_task(self._transport_loop(), name="transport")
                background.append(transport)
                await self._stopping.wait()
                self._state = "stopping"
                await self._drain_jobs()
                self._closing.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(transport), timeout=10)
        finally:
            self._state = "stopping"
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.health_server.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.coordinator.close()
            logger.info("provider stopped: %d jobs done, %d uait earned", self.jobs_done, self.earned_uait)

    def _on_signal(self, signum: int) -> None:
        if self._stopping.is_set():
            return
        logger.info("%s: finishing running jobs, then closing", signal.Signals(signum).name)
        self._stopping.set()

    async def _sleep_unless(self, event: asyncio.Event, seconds: float) -> bool:
        """Sleep ``seconds``; True (at once) if ``event`` is or becomes set meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=seconds)
        return event.is_set()

    async def _blocking(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in a daemon thread.

        Not the loop's default executor: its threads are joined at exit, and a long poll
        still waiting there would hold the shutdown for up to 25 seconds.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(setter: Callable[[Any], None], value: Any) -> None:
            if not future.done():
                setter(value)

        def target() -> None:
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
                    loop.call_soon_threadsafe(settle, future.set_exception, exc)
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(settle, future.set_result, result)

        threading.Thread(target=target, name=f"provider-{getattr(func, '__name__', 'call')}", daemon=True).start()
        return await future

    # -- registration ------------------------------------------------------------------------

    async def _register(self) -> None:
        info = await self._blocking(self.coordinator.info)
        address = info["address"]
        if self.coordinator_address not in (None, address):
            logger.warning("the coordinator's address changed from %s to %s", self.coordinator_address, address)
        self.coordinator_address = address
        if not self.node_url and info.get("node_url"):
            self.node_url = info["node_url"]
        auth = build_provider_auth(self.key, coordinator=address, purpose="register")
        provider = await self._blocking(
            self.coordinator.register,
            auth,
            name=self.config.name,
            url=self.url,
            offers=[offer.to_wire() for offer in self.config.offers],
        )
        if provider != self.key.address:
            raise CoordinatorError(f"the coordinator registered {provider}, not {self.key.address}")
        self._registrations += 1
        logger.info(
            "registered with coordinator %s as %s: %s",
            address,
            provider,
            "; ".join(f"{o.model} at {o.input_price}/{o.output_price} uait per 1k tokens" for o in self.config.offers),
        )

    async def _register_until_done(self) -> bool:
        """Register, retrying with backoff; False when a stop came first."""
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._stopping.is_set():
            try:
                await self._register()
                return True
            except (CoordinatorError, KeyError, TypeError, ValueError) as exc:
                delay = backoff.next()
                logger.warning("registration failed (%s); retrying in %.1fs", exc, delay)
                if await self._sleep_unless(self._stopping, delay):
                    break
        return False

    async def _reregister(self, seen: int) -> bool:
        """Register again after the coordinator forgot us (4403, or 401 on a Bearer call).

        ``seen`` is the registration count when the refused call started: if another task
        registered since, its registration is the answer and this one is not repeated.
        Returns whether the provider is registered afresh.
        """
        async with self._register_lock:
            if self._registrations != seen:
                return True
            logger.info("the coordinator does not know this provider any more: registering again")
            try:
                await self._register()
                return True
            except (CoordinatorError, KeyError, TypeError, ValueError) as exc:
                logger.warning("registration failed: %s", exc)
                return False

    # -- the outbox -----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        self._outbox.append(message)
        self._outbox_changed.set()

    async def _wait_outbox_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._outbox and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def _next_message(self) -> dict[str, Any]:
        """The oldest unsent message (left in the outbox until the transport confirms it)."""
        while not self._outbox:
            # No await between the emptiness check and clear(): nothing can slip in between.
            self._outbox_changed.clear()
            await self._outbox_changed.wait()
        return self._outbox[0]

    # -- transports -----------------------------------------------------------------------------

    async def _transport_loop(self) -> None:
        mode = self.config.transport
        failures, registered_after_4403 = 0, False
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._closing.is_set():
            if mode == "poll" or (mode == "auto" and failures >= self.config.ws_attempts):
                if mode == "auto":
                    logger.warning(
                        "the websocket could not be established %d times: falling back to long polling", failures
                    )
                await self._poll_session(until=None if mode == "poll" else time.monotonic() + self.config.ws_retry_s)
                # Back from polling (auto mode): try the websocket once; one more failure returns to polling.
                failures = self.config.ws_attempts - 1
                continue
            seen = self._registrations
            try:
                await self._ws_session(on_welcome=backoff.reset)
                failures, registered_after_4403 = 0, False
            except _NotRegistered:
                # Register again and reconnect at once, once: a coordinator that still says 4403
                # after a fresh registration counts failed attempts and waits like any other.
                if not registered_after_4403 and await self._reregister(seen):
                    registered_after_4403 = True
                    continue
                failures += 1
            except _NotEstablished as exc:
                failures += 1
                logger.warning("websocket not established (%s), attempt %d", exc, failures)
            except (OSError, ConnectionClosed) as exc:
                logger.warning("websocket lost: %s", exc)
            except Exception:
                # Whatever went wrong with this connection, the provider must keep trying to serve.
                logger.exception("websocket session failed")
            if self._closing.is_set():
                break
            delay = backoff.next()
            logger.info("reconnecting to the coordinator in %.1fs", delay)
            await self._sleep_unless(self._closing, delay)

    def _set_connected(self, connected: bool, transport: str) -> None:
        if connected != self.connected:
            logger.info("coordinator %s (%s)", "connected" if connected else "disconnected", transport)
        self.connected = connected
        self.transport_in_use = transport if connected else self.transport_in_use

    async def _ws_session(self, on_welcome: Callable[[], None]) -> None:
        """One websocket connection: hello, welcome, then messages until it closes or we stop."""
        url = websocket_url(self.config.coordinator_url)
        try:
            ws = await connect(url, proxy=None, open_timeout=10, close_timeout=5, max_size=16 * 2**20)
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise _NotEstablished(f"{url}: {exc}") from exc
        async with ws:
            hello = {
                "type": "hello",
                **build_provider_auth(self.key, coordinator=self.coordinator_address, purpose="connect"),
                "active": len(self.jobs),
            }
            try:
                await ws.send(json.dumps(hello))
                first = json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                if code == CLOSE_NOT_REGISTERED:
                    raise _NotRegistered() from exc
                if code == CLOSE_AUTH_REFUSED:
                    raise _NotEstablished("the coordinator refused the authentication (4401): check the clock") from exc
                raise _NotEstablished(f"closed before the welcome ({code})") from exc
            except (TimeoutError, ValueError) as exc:
                raise _NotEstablished(f"no welcome: {exc!r}") from exc
            if not isinstance(first, dict) or first.get("type") != "welcome":
                raise _NotEstablished(f"expected a welcome, got {str(first)[:200]}")
            on_welcome()
            self._set_connected(True, "websocket")
            tasks = {
                asyncio.create_task(self._ws_reader(ws), name="ws-reader"),
                asyncio.create_task(self._ws_writer(ws), name="ws-writer"),
                asyncio.create_task(self._closing.wait(), name="closing"),
            }
            heartbeats = asyncio.create_task(self._ws_heartbeats(), name="ws-heartbeats")
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if self._closing.is_set():
                    await self._wait_outbox_empty(timeout=5)
                    await ws.close(1001, "provider shutting down")
                else:
                    logger.warning("the coordinator closed the websocket (%s)", ws.close_code)
            finally:
                self._set_connected(False, "websocket")
                for task in (*tasks, heartbeats):
                    task.cancel()
                await asyncio.gather(*tasks, heartbeats, return_exceptions=True)

    async def _ws_reader(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    logger.warning("ignoring a frame that is not JSON: %.200r", raw)
                    continue
                if isinstance(message, dict):
                    self._on_coordinator_message(message)

    async def _ws_writer(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await self._next_message()
                await ws.send(json.dumps(message, ensure_ascii=False))
                # Removed only once sent: a message the dropped socket did not take goes on the next one.
                self._outbox.popleft()

    async def _ws_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            self._send({"type": "heartbeat", "active": len(self.jobs)})

    def _on_coordinator_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "job":
            self._admit(message.get("job"))
        elif kind == "cancel":
            self._cancel(message.get("job_id"))
        elif kind != "welcome":
            logger.debug("ignoring coordinator message %r", kind)

    async def _poll_session(self, until: float | None) -> None:
        """Long polling: jobs from ``/v1/providers/poll``, messages as events, heartbeats over HTTP."""
        self.transport_in_use = "poll"
        tasks = {
            asyncio.create_task(self._poller(), name="poller"),
            asyncio.create_task(self._poll_writer(), name="poll-writer"),
            asyncio.create_task(self._poll_heartbeats(), name="poll-heartbeats"),
        }
        try:
            timeout = None if until is None else max(0.0, until - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=timeout)
            await self._wait_outbox_empty(timeout=5)
        finally:
            self._set_connected(False, "poll")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poller(self) -> None:
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._stopping.is_set():
            if len(self.jobs) >= self.config.concurrency:
                # Ask for work only with room for it: a job we would reject is a round trip wasted.
                self._capacity_changed.clear()
                await self._capacity_changed.wait()
                continue
            seen = self._registrations
            try:
                job = await self._blocking(self.coordinator.poll)
            except CoordinatorError as exc:
                if exc.status == 401 and await self._reregister(seen):
                    continue
                self._set_connected(False, "poll")
                delay = backoff.next()
                logger.warning("poll failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            except (ValueError, requests.RequestException) as exc:
                logger.warning("poll answer unreadable: %s", exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._set_connected(True, "poll")
            if job is not None:
                self._admit(job)

    async def _poll_writer(self) -> None:
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            message = await self._next_message()
            if message["type"] == "heartbeat":
                self._outbox.popleft()  # queued on a websocket that is gone; poll mode has its own
                continue
            seen = self._registrations
            try:
                await self._blocking(self.coordinator.job_event, message["job_id"], message)
            except CoordinatorError as exc:
                if exc.status == 401 and await self._reregister(seen):
                    continue
                if exc.status is None or exc.status >= 500 or exc.status in (401, 429):
                    self._set_connected(False, "poll")
                    await asyncio.sleep(backoff.next())
                    continue  # the same message again
                # Any other refusal is final for this message: the job is no longer ours.
                logger.warning("the coordinator refused %s for job %s: %s", message["type"], message["job_id"], exc)
                if exc.status in (404, 409, 410):
                    self._cancel(message["job_id"])
            backoff.reset()
            self._outbox.popleft()

    async def _poll_heartbeats(self) -> None:
        while True:
            seen = self._registrations
            try:
                await self._blocking(self.coordinator.heartbeat, len(self.jobs))
                self._set_connected(True, "poll")
            except CoordinatorError as exc:
                if exc.status == 401:
                    await self._reregister(seen)
                else:
                    logger.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_s)

    # -- jobs -------------------------------------------------------------------------------------

    def _admit(self, job: Any) -> None:
        """Accept a job and start it, or reject it with a reason. Runs on the loop, never waits."""
        if not isinstance(job, dict) or not isinstance(job.get("id"), str):
            logger.warning("ignoring a job without an id: %.200r", job)
            return
        job_id = job["id"]
        if job_id in self.jobs:
            logger.info("job %s is already running here (dispatched twice)", job_id)
            return
        request = None
        deadline = job.get("deadline_ms")
        if self._stopping.is_set():
            reason = "provider shutting down"
        elif job.get("model") not in self.models:
            reason = f"model {job.get('model')!r} is not offered here (offers: {', '.join(self.models)})"
        elif len(self.jobs) >= self.config.concurrency:
            reason = f"busy: {len(self.jobs)} jobs running, concurrency {self.config.concurrency}"
        elif isinstance(deadline, int) and deadline <= now_ms():
            reason = "the job's deadline has passed"
        else:
            try:
                request = GenerationRequest.from_job(job)
                reason = None
            except (ValueError, KeyError, TypeError) as exc:
                reason = f"malformed job: {exc}"
        if request is None:
            logger.info("rejected job %s: %s", job_id, reason)
            self._send({"type": "rejected", "job_id": job_id, "reason": reason})
            return
        self._send({"type": "accepted", "job_id": job_id})
        running = RunningJob(job=job, request=request, started_ms=now_ms())
        self.jobs[job_id] = running
        running.task = asyncio.create_task(self._run_job(running), name=f"job-{job_id}")
        logger.info("accepted job %s (%s, max %d tokens)", job_id, request.model, request.max_tokens)

    def _cancel(self, job_id: Any) -> None:
        running = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if running is not None:
            logger.info("cancelling job %s", job_id)
            running.stop("cancelled")

    async def _run_job(self, running: RunningJob) -> None:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under an abandoned generation
                loop.call_soon_threadsafe(items.put_nowait, item)

        def produce() -> None:
            try:
                for item in self.backend.generate(running.request):
                    put(item)
            except BaseException as exc:
                put(exc)
            finally:
                put(_END)

        deadline = running.job.get("deadline_ms")
        deadline_timer = None
        if isinstance(deadline, int):
            deadline_timer = loop.call_later(max(0.0, (deadline - now_ms()) / 1000), running.stop, "deadline")
        chunks: list[str] = []
        completion: Completion | None = None
        failure: BaseException | None = None
        try:
            loop.run_in_executor(self._executor, produce)
            while (item := await items.get()) is not _END:
                if isinstance(item, BaseException):
                    failure = item
                elif isinstance(item, Completion):
                    completion = item
                elif item:
                    if running.request.stream:
                        self._send({"type": "chunk", "job_id": running.id, "index": len(chunks), "text": item})
                    chunks.append(item)
        except asyncio.CancelledError:
            running.request.cancel.set()
            if not running.abandoned:
                raise
            return  # shutdown gave up on it and already reported the failure
        finally:
            if deadline_timer is not None:
                deadline_timer.cancel()
            self.jobs.pop(running.id, None)
            self._capacity_changed.set()
        self._finish(running, "".join(chunks), completion, failure)

    def _finish(
        self, running: RunningJob, output: str, completion: Completion | None, failure: BaseException | None
    ) -> None:
        job = running.job
        if running.stop_reason in ("deadline", "shutdown"):
            reason = "the job's deadline passed" if running.stop_reason == "deadline" else "provider shutting down"
        elif failure is not None:
            reason = str(failure) or type(failure).__name__
            logger.warning("job %s failed: %s", running.id, reason)
        elif completion is None:
            reason = "the backend ended without token counts"
        else:
            reason = None
        if reason is not None:
            self._send({"type": "failed", "job_id": running.id, "reason": reason[:500]})
            return
        finished_ms = max(now_ms(), running.started_ms)
        signed = build_receipt(
            self.key,
            job_id=running.id,
            coordinator=self.coordinator_address,
            model=job["model"],
            job_input={"model": job["model"], "input": job["input"], "options": job["options"]},
            output=output,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            started_ms=running.started_ms,
            finished_ms=finished_ms,
            finish_reason=completion.finish_reason,
        )
        self._send({"type": "result", "job_id": running.id, "output": output, **signed})
        self.jobs_done += 1
        logger.info(
            "job %s done: %d input + %d output tokens, %s, %d ms",
            running.id,
            completion.input_tokens,
            completion.output_tokens,
            completion.finish_reason,
            finished_ms - running.started_ms,
        )

    async def _drain_jobs(self) -> None:
        """Let running jobs finish within the grace period; stop the rest and report them failed."""
        if not self.jobs:
            return
        logger.info("waiting up to %.0fs for %d running jobs", self.config.shutdown_grace_s, len(self.jobs))
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace_s)
        if not pending:
            return
        for running in list(self.jobs.values()):
            running.stop("shutdown")
        _, pending = await asyncio.wait(pending, timeout=5)
        for running in list(self.jobs.values()):
            # The backend did not stop in time: report the failure ourselves and leave its thread behind.
            running.abandoned = True
            self._send({"type": "failed", "job_id": running.id, "reason": "provider shutting down"})
            if running.task is not None:
                running.task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- payments -----------------------------------------------------------------------------------

    async def _watch_payments(self) -> None:
        """Poll this provider's balance on the chain and count every increase as a payment."""
        client: HttpChainClient | None = None
        last_balance: int | None = None
        warned = False
        while True:
            if self.node_url and client is None:
                session = requests.Session()
                session.trust_env = False
                client = HttpChainClient(self.node_url, timeout=5, session=session)
                logger.info("watching payments to %s on node %s", self.key.address, self.node_url)
            if client is not None:
                try:
                    balance = int((await self._blocking(client.account, self.key.address))["balance"])
                except (ChainUnavailable, ProtocolError, KeyError, TypeError, ValueError) as exc:
                    if not warned:
                        logger.warning("cannot read the balance from %s: %s", self.node_url, exc)
                        warned = True
                else:
                    warned = False
                    if last_balance is not None and balance > last_balance:
                        # Logged before it is counted: whoever sees the count can find the line.
                        logger.info("payment received: +%d uait (balance %d uait)", balance - last_balance, balance)
                        self.earned_uait += balance - last_balance
                    last_balance = balance
            await asyncio.sleep(self.config.balance_poll_s)
