"""Reads of the automation app, shaped for the admin and the dashboard."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count
from django.utils import timezone

from automation.models import AutomationConfig, Claim, PullRequestState, Run, WebhookDelivery


def _run_dict(run: Run | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "id": run.pk,
        "job": run.job,
        "trigger": run.trigger,
        "dry_run": run.dry_run,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "actions": len(run.actions or []),
        "error": run.error or None,
    }


def automation_summary() -> dict[str, Any]:
    """Everything a dashboard tile needs, in one dict of plain JSON values."""
    from automation.services import config_problems

    config = AutomationConfig.objects.filter(pk=1).first()
    problems = config_problems(config) if config else ["not configured yet (no run so far)"]
    claims = dict(Claim.objects.values_list("status").annotate(n=Count("id")).order_by())
    verdicts = dict(
        PullRequestState.objects.filter(state="open").values_list("verdict").annotate(n=Count("id")).order_by()
    )
    last_error = Run.objects.filter(status=Run.ERROR).order_by("-started_at", "-id").first()
    active = Claim.objects.filter(status__in=[Claim.CLAIMED, Claim.WON, Claim.STUCK]).order_by("-updated_at")[:10]
    return {
        "configured": not problems,
        "problems": problems,
        "agent": config.agent if config else "",
        "sibling_agent": config.sibling_agent if config else "",
        "repo": config.repo if config else "",
        "lock_backend": config.lock_backend if config else "",
        "claims": {status: claims.get(status, 0) for status, _ in Claim.STATUS_CHOICES},
        "active_claims": [
            {
                "issue": c.issue_number,
                "title": c.title,
                "status": c.status,
                "work_branch": c.work_branch,
                "updated_at": c.updated_at.isoformat(),
            }
            for c in active
        ],
        "open_prs": {(verdict or "unreviewed"): n for verdict, n in verdicts.items()},
        "last_runs": {
            job: _run_dict(Run.objects.filter(job=job).order_by("-started_at", "-id").first())
            for job, _ in Run.JOB_CHOICES
        },
        "last_error": _run_dict(last_error),
        "webhooks_last_24h": WebhookDelivery.objects.filter(
            received_at__gte=timezone.now() - timedelta(hours=24)
        ).count(),
    }


# -- the dashboard's automation page -----------------------------------------------------------


def claim_list(limit: int = 50) -> list[Claim]:
    """Claims, most recently changed first."""
    return list(Claim.objects.order_by("-updated_at", "-id")[:limit])


def pull_request_list(limit: int = 50) -> list[PullRequestState]:
    """Pull requests with their review state: open ones first, then the most recently changed."""
    open_first = PullRequestState.objects.order_by("-updated_at", "-id")
    rows = list(open_first.filter(state="open")[:limit])
    if len(rows) < limit:
        rows += list(open_first.exclude(state="open")[: limit - len(rows)])
    return rows


def run_list(*, errors_only: bool = False, limit: int = 30) -> list[dict[str, Any]]:
    """Recent runs of the automation jobs (or only those that failed), newest first."""
    runs = Run.objects.order_by("-started_at", "-id")
    if errors_only:
        runs = runs.filter(status=Run.ERROR)
    return [_run_dict(run) | {"error": run.error or None} for run in runs[:limit]]
