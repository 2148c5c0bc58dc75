"""The automation page and its live events."""

from __future__ import annotations

import pytest

from automation.models import Claim, PullRequestState, Run

pytest_plugins = ["aitbc_site.tests.dashboard_fixtures"]
pytestmark = pytest.mark.django_db


def test_claims_pull_requests_runs_and_errors_are_shown(browser) -> None:
    Claim.objects.create(
        repo="o/r", issue_number=8, title="Dashboard", agent="me", status=Claim.CLAIMED, claim_branch="claim/8"
    )
    PullRequestState.objects.create(repo="o/r", number=12, title="Add charts", author="sib", verdict="approved")
    Run.objects.create(job=Run.JOB_MONITOR, status=Run.ERROR, error="gitea answered 502")
    page = browser.get("/automation/").content.decode()
    assert "#8" in page and "Dashboard" in page and "claimed" in page
    assert "#12" in page and "Add charts" in page and "approved" in page
    assert "gitea answered 502" in page
    assert "Add charts" in browser.get("/automation/?fragment=prs").content.decode()


def test_a_claim_change_is_announced_after_commit(
    db, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks
):
    from aitbc_site import events

    sent: list[dict] = []
    monkeypatch.setattr(events, "send_event", lambda group, event: sent.append(event))
    with django_capture_on_commit_callbacks(execute=True):
        claim = Claim.objects.create(repo="o/r", issue_number=9, agent="me", claim_branch="claim/9")
        assert sent == [], "nothing is announced before the commit"
    assert sent == [{"type": "automation", "what": "claim", "issue": 9, "status": claim.status}]
