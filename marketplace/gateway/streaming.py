"""One gateway request's job, from submission to its last token, as an async stream of events.

The provider's chunks reach the coordinator on its websocket (``consumers``) and are
forwarded, like every job's, to the owner's live events (``job.chunk`` and ``job``
state messages in the owner's channel-layer group, ``aitbc_site.events.user_group``).
A stream listens there on a channel of its own, joined before the job is submitted so
nothing is missed, and keeps the messages of its job. The "completed" message carries
the job's outcome (output, counts, charge) as committed; the stream reads the job from
the database only when another state message says something ended, when the outcome was
too large to travel, or when messages stall (``conf.RECHECK_S``), so a lost message can
delay an answer but never lose it: the completed job's output is the reference, and
whatever the chunks missed is sent before the end.

Failover before the first token is the marketplace's (the job goes to the next
provider, the client sees nothing). After it, the stream ends with an error and the job
is ended without a charge (``services.gateway_abort``). A client that goes away
(``close`` before the end) cancels the job: what its provider produced is paid.

Database work runs in the request's own thread (Django's ASGI handler gives each request
one, and closes its connection when the response is done): a waiting stream holds no
thread, and requests do not queue behind one another. Work that outlives the request
(cancelling an abandoned job) runs in a pool thread that closes its connection after.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import close_old_connections

from aitbc_site.errors import ApiError
from aitbc_site.events import user_group
from marketplace.gateway import conf, services
from marketplace.gateway.models import ApiKey
from marketplace.gateway.services import Generation, Outcome

logger = logging.getLogger("aitbc.marketplace.gateway")

T = TypeVar("T")

# Work that must outlive the request that started it (cancelling an abandoned job).
_background: set[asyncio.Task] = set()


def db(function: Callable[..., T]) -> Callable[..., Any]:
    """``function`` run in the request's thread (Django closes its connection at the response's end)."""
    return sync_to_async(function, thread_sensitive=True)


def db_detached(function: Callable[..., T]) -> Callable[..., Any]:
    """``function`` run in a pool thread, outside any request; its connection closed after."""

    def closing(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(closing, thread_sensitive=False)


def in_background(coroutine) -> None:
    # A fresh context: the request's (and its thread) may be gone before this runs.
    task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    first_token_at: float | None  # time.monotonic() of the first token, if any


class GatewayStream:
    """A submitted job and the messages about it; iterate ``events()`` once."""

    def __init__(self, *, key: ApiKey, generation: Generation, api: str, received_at: float) -> None:
        self.key = key
        self.generation = generation
        self.api = api
        self.received_at = received_at
        self.job_id: str | None = None
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.group = user_group(key.owner_id)
        self.first_token_at: float | None = None
        self.streamed: list[str] = []
        self.next_index = 0
        self.finished = False
        self.closed = False
        # Where the time went (logged at DEBUG when the stream closes): seconds since received_at.
        self.timings: dict[str, float] = {}

    def mark(self, what: str, at: float | None = None) -> None:
        if what not in self.timings:
            self.timings[what] = (at or time.monotonic()) - self.received_at

    @classmethod
    async def open(cls, *, key: ApiKey, generation: Generation, api: str, received_at: float) -> GatewayStream:
        """Listen, then submit the job (raises the submission's ``ApiError``)."""
        stream = cls(key=key, generation=generation, api=api, received_at=received_at)
        stream.mark("opening")
        stream.channel = await stream.layer.new_channel("gateway.")
        await stream.layer.group_add(stream.group, stream.channel)
        stream.mark("listening")
        submission = asyncio.ensure_future(db(services.gateway_submit)(key=key, generation=generation, api=api))
        try:
            # Shielded: a client gone while its job is being submitted leaves a job to cancel, not a thread to stop.
            job = await asyncio.shield(submission)
        except asyncio.CancelledError:
            submission.add_done_callback(_cancel_when_submitted)
            stream.finished = True
            stream.close()
            raise
        except BaseException:
            stream.finished = True  # nothing was submitted: nothing to cancel
            stream.close()
            raise
        stream.job_id = job.pk
        for what, at in getattr(job, "gateway_timings", {}).items():
            stream.mark(what, at)
        stream.mark("submitted")
        return stream

    async def events(self) -> AsyncIterator[Token | Finished]:
        """The answer's text as it is produced, then one ``Finished``; raises ``ApiError`` if it breaks."""
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.layer.receive(self.channel), conf.RECHECK_S)
                except TimeoutError:
                    async for event in self._read_state(stalled=True):
                        yield event
                    if self.finished:
                        return
                    continue
                event = message.get("event") if isinstance(message, dict) else None
                if not isinstance(event, dict) or event.get("job_id") != self.job_id:
                    continue
                kind = event.get("type")
                self.mark(f"{kind}:{event.get('state', event.get('index'))}")
                if kind == "job.chunk":
                    token = await self._chunk(event)
                    if token is not None:
                        yield token
                elif kind == "job":
                    state = event.get("state")
                    if state in ("submitted", "assigned", "running", "paid", "disputed"):
                        continue
                    if state in ("failed", "funded") and self.first_token_at is not None:
                        await self._abort("its provider failed after the answer began")
                    if state == "funded":
                        continue  # handed to the next provider before any token: invisible to the client
                    outcome = services.outcome_from_event(event)
                    states = self._finish(outcome) if outcome is not None else self._read_state(stalled=False)
                    async for event in states:
                        yield event
                    if self.finished:
                        return
        finally:
            self.close()

    async def _chunk(self, event: dict[str, Any]) -> Token | None:
        index, text = event.get("index"), event.get("text")
        if index == 0 and self.next_index > 0:
            # A new attempt started over: the provider that began this answer lost the job.
            await self._abort("its provider lost the job after the answer began")
        if index != self.next_index or not isinstance(text, str):
            return None  # out of order or repeated; the completed output fills any gap
        self.next_index += 1
        if not text:
            return None
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.streamed.append(text)
        return Token(text)

    async def _read_state(self, *, stalled: bool) -> AsyncIterator[Token | Finished]:
        state = await db(services.job_state)(job_id=self.job_id)
        self.mark("state_read")
        if state.verdict == services.DONE:
            async for event in self._finish(state.outcome):
                yield event
        elif state.verdict == services.BROKEN:
            self.finished = True
            raise state.error
        elif stalled and self.first_token_at is not None:
            current = await db(_job_field)(self.job_id, "state")
            if current in ("funded", "assigned"):
                await self._abort("its provider lost the job after the answer began")

    async def _finish(self, outcome: Outcome) -> AsyncIterator[Token | Finished]:
        """The completed job's output the chunks did not bring, then the end."""
        sent = "".join(self.streamed)
        if outcome.output.startswith(sent) and len(outcome.output) > len(sent):
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            yield Token(outcome.output[len(sent) :])
        self.finished = True
        yield Finished(outcome, self.first_token_at)

    async def _abort(self, reason: str) -> None:
        self.finished = True
        await db(services.gateway_abort)(job_id=self.job_id, reason=f"gateway: {reason}")
        raise ApiError(
            f"the answer broke off: {reason}; nothing is charged (job {self.job_id})",
            code="provider_failed",
            status=502,
        )

    async def collect(self) -> tuple[str, Finished]:
        """The whole answer (for clients that asked for one JSON answer)."""
        parts: list[str] = []
        async for event in self.events():
            if isinstance(event, Token):
                parts.append(event.text)
            else:
                return "".join(parts), event
        raise ApiError("the answer ended without its job completing", code="job_lost", status=500)

    def close(self) -> None:
        """Stop listening; a job not finished is cancelled (its client went away). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.mark("closed")
        level = logging.INFO if conf.TRACE else logging.DEBUG
        if logger.isEnabledFor(level):
            timings = ", ".join(f"{what} {seconds * 1000:.1f}" for what, seconds in self.timings.items())
            logger.log(level, "gateway job %s (ms since the request): %s", self.job_id, timings)
        in_background(self._cleanup(abandoned=not self.finished and self.job_id is not None))

    async def _cleanup(self, *, abandoned: bool) -> None:
        try:
            if self.channel is not None:
                await self.layer.group_discard(self.group, self.channel)
            if abandoned:
                logger.info("gateway job %s: the client went away; cancelling it", self.job_id)
                await db_detached(services.gateway_abandon)(job_id=self.job_id)
        except Exception:
            logger.exception("gateway job %s: cleanup failed", self.job_id)


def _cancel_when_submitted(submission: asyncio.Future) -> None:
    if not submission.cancelled() and submission.exception() is None:
        in_background(db_detached(services.gateway_abandon)(job_id=submission.result().pk))


def _job_field(job_id: str, name: str) -> Any:
    from marketplace.models import Job

    return Job.objects.filter(pk=job_id).values_list(name, flat=True).first()
