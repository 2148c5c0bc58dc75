"""Embedded beat's scheduler: django-celery-beat's, asking the database for edits every few seconds."""

from __future__ import annotations

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
