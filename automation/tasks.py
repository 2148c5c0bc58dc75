"""Celery tasks: thin wrappers that run one pass of a job through its service."""

from __future__ import annotations

from celery import shared_task

from automation import services

BEAT_SCHEDULE = {
    "automation claim-task": ("automation.claim_task", 300),
    "automation monitor-prs": ("automation.monitor_prs", 600),
}


@shared_task(name="automation.claim_task")
def claim_task(trigger: str = "beat") -> int:
    return services.claim_task_run(trigger=trigger).pk


@shared_task(name="automation.monitor_prs")
def monitor_prs(trigger: str = "beat") -> int:
    return services.monitor_prs_run(trigger=trigger).pk
