"""The Celery application.

Broker and result backend come from settings: Redis when ``REDIS_URL`` is set,
kombu's in-memory transport otherwise (embedded mode, where the worker and beat
run as threads of the web process: see ``aitbc_site.embedded``).

The beat schedule is declared in code (``BEAT_SCHEDULE`` here and in each app's
``tasks.BEAT_SCHEDULE``) and written into django-celery-beat's tables by
``sync_beat_schedule`` so operators see and change it in the admin.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aitbc_site.settings")

app = Celery("aitbc")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
