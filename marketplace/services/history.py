"""Job state changes: recorded (``JobEvent``) and announced after commit.

Every transition is a conditional UPDATE on the job's current state, so a transition
that lost a race (two workers, a late provider message) changes nothing and says so.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from aitbc_site.events import EVENTS_GROUP, send_event_on_commit, user_group
from marketplace.models import Job, JobEvent


def record(job: Job, state: str, reason: str = "", *, provider: str = "", at: datetime | None = None) -> None:
    """Add a line to the job's history (and tell its owner) without changing its state."""
    JobEvent.objects.create(job=job, state=state, reason=reason[:300], provider=provider, at=at or timezone.now())
    _announce(job, state, reason)


def record_created(job: Job, steps: list[tuple[str, str]], *, provider: str = "") -> None:
    """A job created in its current state went through ``steps`` (state, reason) on the way there.

    Its history gets every step, its owner and the public feed hear of the last one only:
    the steps before it were never visible outside the creating transaction.
    """
    now = timezone.now()
    events = [JobEvent(job=job, state=state, reason=reason[:300], at=now) for state, reason in steps]
    *earlier, last = events
    if earlier:
        JobEvent.objects.bulk_create(earlier)
    last.provider = provider
    last.save()  # saved alone: post_save listeners (dispatch metrics) see the step that matters
    _announce(job, last.state, last.reason)


def transition(
    job: Job,
    *,
    to: str,
    from_states: tuple[str, ...],
    reason: str = "",
    owner_detail: dict[str, Any] | None = None,
    **fields: Any,
) -> bool:
    """Move ``job`` to ``to`` if it is still in one of ``from_states``; False if it is not.

    ``fields`` are saved with the change; ``owner_detail`` goes with the owner's event
    (never the public feed's). The caller holds the job's row lock (see ``models``) and
    has checked the state; the condition makes a stale view harmless.
    """
    now = timezone.now()
    updated = Job.objects.filter(pk=job.pk, state__in=from_states).update(
        state=to, reason=reason[:300], updated_at=now, **fields
    )
    if not updated:
        return False
    job.state, job.reason = to, reason[:300]
    for name, value in fields.items():
        setattr(job, name, value)
    provider = fields["provider"].pk if fields.get("provider") is not None else (job.provider_id or "")
    JobEvent.objects.create(job=job, state=to, reason=reason[:300], provider=provider, at=now)
    _announce(job, to, reason, owner_detail)
    return True


def _announce(job: Job, state: str, reason: str, owner_detail: dict[str, Any] | None = None) -> None:
    if job.owner_id is not None:
        event = {"type": "job", "job_id": job.id, "state": state, "reason": reason[:300], "model": job.model}
        send_event_on_commit(user_group(job.owner_id), event | (owner_detail or {}))
    # The public feed says what happens in the market, never who asked what.
    send_event_on_commit(EVENTS_GROUP, {"type": "jobs", "job_id": job.id, "state": state, "model": job.model})
