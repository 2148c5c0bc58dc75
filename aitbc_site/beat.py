"""The beat schedule, declared in code and stored with django-celery-beat.

Each app's ``tasks.py`` may define ``BEAT_SCHEDULE = {name: (task, seconds)}``.
``sync_beat_schedule`` creates the missing entries so operators see them in
the admin; entries that already exist are left as the operator set them.
Embedded beat reads them with ``DatabaseScheduler`` below.
"""

from __future__ import annotations

import importlib
import time

from django.apps import apps
from django.db import transaction
from django_celery_beat import schedulers

# How often beat asks the database whether an operator changed the schedule.
SCHEDULE_CHECK_S = 10.0

SITE_SCHEDULE: dict[str, tuple[str, int]] = {
    "clear expired sessions": ("aitbc_site.clear_expired_sessions", 3600),
}


def declared_schedule(app_names: set[str] | None = None) -> dict[str, tuple[str, int]]:
    """The declared entries, of every app or only of ``app_names`` (the site's always)."""
    schedule = dict(SITE_SCHEDULE)
    for config in apps.get_app_configs():
        if app_names is not None and config.name not in app_names:
            continue
        try:
            module = importlib.import_module(f"{config.name}.tasks")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.tasks":
                raise
            continue
        schedule.update(getattr(module, "BEAT_SCHEDULE", {}))
    return schedule


@transaction.atomic
def sync_beat_schedule(app_names: set[str] | None = None) -> list[str]:
    """Create the declared periodic tasks that are missing; return their names.

    With ``app_names`` (a node process runs only the chain's), the other apps'
    declared entries are disabled in this database.
    """
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    wanted = declared_schedule(app_names)
    others = set(declared_schedule()) - set(wanted)
    if others:
        PeriodicTask.objects.filter(name__in=others, enabled=True).update(enabled=False)
    created = []
    for name, (task, seconds) in wanted.items():
        interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        _, was_created = PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "interval": interval})
        if was_created:
            created.append(name)
    return created


def disable_beat_entries(names: set[str]) -> None:
    """Disable the named periodic tasks in this database (a process that has no use for them)."""
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.filter(name__in=names, enabled=True).update(enabled=False)


class DatabaseScheduler(schedulers.DatabaseScheduler):
    """django-celery-beat's scheduler, asking the database whether the schedule changed at
    most every ``SCHEDULE_CHECK_S`` seconds instead of at every tick, and sleeping until an
    entry is due rather than spinning the last moments before it.

    Each of those checks closes the thread's database connection (connections are not
    reused), opens a new one and queries; a node's two once-a-second tasks made beat tick
    several times a second, and those checks were about half of what an idle node spent.
    An operator's edit in the admin takes effect within ``SCHEDULE_CHECK_S`` seconds.
    """

    _schedule_checked_at = float("-inf")

    def adjust(self, n, drift=-0.010):
        """The delay to sleep for ``n`` seconds of wait: ``n`` itself.

        Celery's scheduler wakes ``drift`` (10 ms) early. An entry asked that early is
        not due yet (interval and crontab entries compare against the exact time) and
        answers with the few milliseconds left; less the drift, that delay is negative,
        and beat's loop does not sleep on a negative delay: it ticked again and again
        until the entry came due, about 35 ticks per run of a once-a-second task, which
        was most of what an idle node's beat thread spent.
        """
        return n

    def schedule_changed(self) -> bool:
        now = time.monotonic()
        if now - self._schedule_checked_at < SCHEDULE_CHECK_S:
            return False
        self._schedule_checked_at = now
        return super().schedule_changed()
