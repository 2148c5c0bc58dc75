"""The automation page: claims, pull requests with their review state, recent runs and errors."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse

from aitbc_site.pages import Fragment, render_page
from automation import selectors


@login_required
def automation(request: HttpRequest) -> HttpResponse:
    return render_page(
        request,
        "automation/automation.html",
        {
            "summary": Fragment("automation/_summary.html", lambda: {"summary": selectors.automation_summary()}),
            "claims": Fragment("automation/_claims.html", lambda: {"claims": selectors.claim_list()}),
            "prs": Fragment("automation/_prs.html", lambda: {"prs": selectors.pull_request_list()}),
            "runs": Fragment(
                "automation/_runs.html",
                lambda: {"runs": selectors.run_list(), "errors": selectors.run_list(errors_only=True, limit=10)},
            ),
        },
        {"nav": "automation"},
    )
