"""Live events for the dashboard when claims, pull requests or runs change.

Connected to the models' ``post_save`` (by ``aitbc_site.apps``), so every writer of the
automation app announces its changes without knowing about websockets; the events go
out only after the write commits (``send_event_on_commit``).
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save

from aitbc_site.events import EVENTS_GROUP, send_event_on_commit


def _claim(sender: Any, instance: Any, **kwargs: Any) -> None:
    send_event_on_commit(
        EVENTS_GROUP,
        {"type": "automation", "what": "claim", "issue": instance.issue_number, "status": instance.status},
    )


def _pull_request(sender: Any, instance: Any, **kwargs: Any) -> None:
    send_event_on_commit(
        EVENTS_GROUP,
        {
            "type": "automation",
            "what": "pull_request",
            "number": instance.number,
            "state": instance.state,
            "verdict": instance.verdict,
        },
    )


def _run(sender: Any, instance: Any, **kwargs: Any) -> None:
    send_event_on_commit(
        EVENTS_GROUP, {"type": "automation", "what": "run", "job": instance.job, "status": instance.status}
    )


def connect() -> None:
    from automation.models import Claim, PullRequestState, Run

    post_save.connect(_claim, sender=Claim, dispatch_uid="automation-live-claim")
    post_save.connect(_pull_request, sender=PullRequestState, dispatch_uid="automation-live-pr")
    post_save.connect(_run, sender=Run, dispatch_uid="automation-live-run")
