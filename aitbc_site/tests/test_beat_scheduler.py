"""Embedded beat's scheduler: django-celery-beat's, asking the database for edits every few seconds."""

from __future__ import annotations

import time

import pytest
from django_celery_beat import schedulers

from aitbc_site import beat


def test_the_schedule_is_checked_for_changes_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []
    clock = [1000.0]
    monkeypatch.setattr(schedulers.DatabaseScheduler, "schedule_changed", lambda self: asked.append(clock[0]) or True)
    monkeypatch.setattr(beat.time, "monotonic", lambda: clock[0])
    scheduler = beat.DatabaseScheduler.__new__(beat.DatabaseScheduler)  # no app, no database: the check alone

    assert scheduler.schedule_changed() is True
    clock[0] += beat.SCHEDULE_CHECK_S / 2
    assert scheduler.schedule_changed() is False
    clock[0] += beat.SCHEDULE_CHECK_S / 2
    assert scheduler.schedule_changed() is True
    assert asked == [1000.0, 1000.0 + beat.SCHEDULE_CHECK_S]


@pytest.mark.django_db
def test_a_node_process_disables_the_entries_it_has_no_use_for_and_keeps_the_tick() -> None:
    from django_celery_beat.models import PeriodicTask

    from chain.tasks import NODE_DISABLED

    beat.sync_beat_schedule({"chain"})
    beat.disable_beat_entries(NODE_DISABLED)
    enabled = set(PeriodicTask.objects.filter(enabled=True).values_list("name", flat=True))
    assert "chain consensus tick" in enabled
    assert not enabled & NODE_DISABLED
    assert beat.sync_beat_schedule({"chain"}) == []  # a later sync leaves them as they are
    assert not set(PeriodicTask.objects.filter(enabled=True).values_list("name", flat=True)) & NODE_DISABLED


@pytest.mark.django_db(transaction=True)
def test_beat_sleeps_until_the_tick_is_due_instead_of_ticking_through_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from aitbc_site.celery import app
    from chain.tasks import NODE_DISABLED

    beat.sync_beat_schedule({"chain"})
    beat.disable_beat_entries(NODE_DISABLED)
    sent: list[str] = []
    monkeypatch.setattr(beat.DatabaseScheduler, "apply_async", lambda self, entry, **kwargs: sent.append(entry.name))
    scheduler = beat.DatabaseScheduler(app=app)
    ticks = 0
    try:
        while sent.count("chain consensus tick") < 3 and ticks < 1000:
            # What celery.beat.Service does with the delay a tick returns.
            delay = scheduler.tick()
            ticks += 1
            if delay and delay > 0:
                time.sleep(delay)
    finally:
        # Write the entries now, while the test database exists, not at interpreter exit.
        scheduler.close()
        scheduler._finalize.cancel()

    # One tick sends the due entry and one sleeps until the next is due; Celery's own
    # scheduler woke early and ticked about 35 times per run of a once-a-second entry.
    assert sent.count("chain consensus tick") == 3
    assert ticks <= 2 * len(sent) + 2, (ticks, sent)
