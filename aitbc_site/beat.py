"""The beat schedule, declared in code and stored with django-celery-beat.

Each app's ``tasks.py`` may define ``BEAT_SCHEDULE = {name: (task, seconds)}``.
``sync_beat_schedule`` creates the missing entries so operators see them in
the admin; entries that already exist are left as the operator set them.
"""

from __future__ import annotations

import importlib

from django.apps import apps
from django.db import transaction

SITE_SCHEDULE: dict[str, tuple[str, int]] = {
    "clear expired sessions": ("aitbc_site.clear_expired_sessions", 3600),
}


def declared_schedule() -> dict[str, tuple[str, int]]:
    schedule = dict(SITE_SCHEDULE)
    for config in apps.get_app_configs():
        try:
            module = importlib.import_module(f"{config.name}.tasks")
        except ModuleNotFoundError as exc:
            if exc.name != f"{config.name}.tasks":
                raise
            continue
        schedule.update(getattr(module, "BEAT_SCHEDULE", {}))
    return schedule


@transaction.atomic
def sync_beat_schedule() -> list[str]:
    """Create the declared periodic tasks that are missing; return their names."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    created = []
    for name, (task, seconds) in declared_schedule().items():
        interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        _, was_created = PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "interval": interval})
        if was_created:
            created.append(name)
    return created
