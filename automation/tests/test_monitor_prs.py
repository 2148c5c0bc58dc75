"""monitor-prs over a matrix of PR states; reruns change nothing on the forge."""

from __future__ import annotations

import pytest

from automation import services
from automation.models import AutomationConfig, PullRequestState, Run
from automation.tests.conftest import AGENT, SIBLING
from automation.tests.gitea_standin import GiteaStandIn

GOOD = "def f(x):\n    return x + 1\n"


@pytest.fixture
def matrix(gitea: GiteaStandIn) -> dict[str, int]:
    prs = {
        "green": gitea.add_pull(
            author=SIBLING,
            head_ref=f"{SIBLING}/1-green",
            files={"market/a.py": GOOD},
            statuses={"ci": "success", "lint": "warning"},
        ),
        "failing": gitea.add_pull(
            author=SIBLING,
            head_ref=f"{SIBLING}/2-failing",
            files={"market/b.py": GOOD},
            statuses={"ci": "failure", "lint": "success"},
        ),
        "pending": gitea.add_pull(
            author=SIBLING, head_ref=f"{SIBLING}/3-pending", files={"market/c.py": GOOD}, statuses={"ci": "pending"}
        ),
        "no_status": gitea.add_pull(author=SIBLING, head_ref=f"{SIBLING}/4-nostatus", files={"market/d.py": GOOD}),
        "syntax": gitea.add_pull(
            author=SIBLING,
            head_ref=f"{SIBLING}/5-syntax",
            files={"market/e.py": "def broken(:\n    pass\n", "README.md": "# not python ("},
            statuses={"ci": "success"},
        ),
        "protected": gitea.add_pull(
            author=SIBLING,
            head_ref=f"{SIBLING}/6-consensus",
            files={"chain/consensus.py": GOOD},
            statuses={"ci": "success"},
        ),
        "own": gitea.add_pull(
            author=AGENT, head_ref=f"{AGENT}/7-own", files={"market/f.py": GOOD}, statuses={"ci": "failure"}
        ),
        "other": gitea.add_pull(
            author="oib", head_ref="oib/feature", files={"market/g.py": GOOD}, statuses={"ci": "success"}
        ),
    }
    merged = gitea.add_pull(
        author=SIBLING, head_ref=f"{SIBLING}/9-done", files={"market/h.py": GOOD}, statuses={"ci": "success"}
    )
    gitea.branches["claim/9"] = gitea.branches["main"]
    gitea.close_pull(merged, merged=True)
    prs["merged"] = merged
    return prs


def _reviews(gitea: GiteaStandIn, number: int) -> list[dict]:
    return [r for r in gitea.reviews.values() if r["pr"] == number]


def _notices(gitea: GiteaStandIn, number: int) -> list[dict]:
    return [c for c in gitea.issue_comments(number) if "aitbc:notice" in c["body"]]


def _writes(gitea: GiteaStandIn) -> list[tuple]:
    return [c for c in gitea.requests if c[0] != "GET"]


def test_monitor_reviews_each_sibling_pr_by_its_state(gitea: GiteaStandIn, config: AutomationConfig, matrix):
    run = services.monitor_prs_run(trigger="beat")
    assert run.status == Run.OK, run.error

    green = _reviews(gitea, matrix["green"])
    assert [(r["state"], r["user"]) for r in green] == [("APPROVED", AGENT)]
    assert green[0]["commit_id"] == gitea.pulls[matrix["green"]].head_sha

    failing = _reviews(gitea, matrix["failing"])
    assert [r["state"] for r in failing] == ["REQUEST_CHANGES"]
    assert "CI failed" in failing[0]["body"] and "ci" in failing[0]["body"]

    assert _reviews(gitea, matrix["pending"]) == []
    assert _reviews(gitea, matrix["no_status"]) == []
    assert "no status reported yet" in _notices(gitea, matrix["no_status"])[0]["body"]

    syntax = _reviews(gitea, matrix["syntax"])
    assert [r["state"] for r in syntax] == ["REQUEST_CHANGES"]
    assert "market/e.py" in syntax[0]["body"] and "README.md" not in syntax[0]["body"]

    protected = _reviews(gitea, matrix["protected"])
    assert [r["state"] for r in protected] == ["REQUEST_CHANGES"]
    assert "chain/consensus.py" in protected[0]["body"] and "human" in protected[0]["body"]

    states = {s.number: s for s in PullRequestState.objects.all()}
    assert states[matrix["green"]].verdict == "approved"
    assert states[matrix["pending"]].verdict == "waiting"
    assert states[matrix["syntax"]].verdict == "changes_requested"


def test_monitor_asks_the_sibling_to_review_own_prs_and_never_reviews_them(
    gitea: GiteaStandIn, config: AutomationConfig, matrix
):
    services.monitor_prs_run()
    own = gitea.pulls[matrix["own"]]
    assert own.requested == [SIBLING]
    assert _reviews(gitea, matrix["own"]) == []
    notice = _notices(gitea, matrix["own"])[0]["body"]
    assert "CI: failed (ci)" in notice
    # Nobody else's PR was touched, and no sibling PR got a review request.
    assert gitea.issue_comments(matrix["other"]) == [] and _reviews(gitea, matrix["other"]) == []
    assert all(gitea.pulls[n].requested == [] for k, n in matrix.items() if k not in ("own",))


def test_monitor_leaves_one_notice_per_pr(gitea: GiteaStandIn, config: AutomationConfig, matrix):
    services.monitor_prs_run()
    for key, number in matrix.items():
        expected = 0 if key in ("other", "merged") else 1
        assert len(_notices(gitea, number)) == expected, key


def test_rerunning_monitor_makes_no_new_comments_reviews_or_requests(
    gitea: GiteaStandIn, config: AutomationConfig, matrix
):
    services.monitor_prs_run()
    before = len(gitea.requests)
    run = services.monitor_prs_run()
    assert run.status == Run.OK
    assert [c for c in gitea.requests[before:] if c[0] != "GET"] == []
    assert run.actions == []


def test_ci_failures_are_reported_once_per_head_commit(gitea: GiteaStandIn, config: AutomationConfig, matrix):
    first = services.monitor_prs_run()
    reported = [a for a in first.actions if a["action"] == "report CI failure"]
    assert sorted(a["target"] for a in reported) == sorted([f"PR #{matrix['failing']}", f"PR #{matrix['own']}"])
    assert not [a for a in services.monitor_prs_run().actions if a["action"] == "report CI failure"]
    sha = gitea.push(matrix["failing"], {"market/b2.py": GOOD})
    gitea.set_status(sha, "ci", "failure")
    third = services.monitor_prs_run()
    assert [a["target"] for a in third.actions if a["action"] == "report CI failure"] == [f"PR #{matrix['failing']}"]


def test_a_fixed_pr_is_approved_at_its_new_head_and_its_notice_edited(
    gitea: GiteaStandIn, config: AutomationConfig, matrix
):
    services.monitor_prs_run()
    number = matrix["failing"]
    notice = _notices(gitea, number)[0]
    sha = gitea.push(number, {"market/b.py": GOOD + "# fixed\n"})
    gitea.set_status(sha, "ci", "success")
    run = services.monitor_prs_run()
    assert [r["state"] for r in _reviews(gitea, number)] == ["REQUEST_CHANGES", "APPROVED"]
    assert _reviews(gitea, number)[-1]["commit_id"] == sha
    notices = _notices(gitea, number)
    assert [n["id"] for n in notices] == [notice["id"]] and "approved" in notices[0]["body"]
    assert {"approve", "update notice"} <= {a["action"] for a in run.actions}


def test_a_pending_pr_is_reviewed_once_ci_finishes(gitea: GiteaStandIn, config: AutomationConfig, matrix):
    services.monitor_prs_run()
    number = matrix["pending"]
    gitea.set_status(gitea.pulls[number].head_sha, "ci", "success")
    services.monitor_prs_run()
    assert [r["state"] for r in _reviews(gitea, number)] == ["APPROVED"]
    assert len(_notices(gitea, number)) == 1


def test_merged_pr_branches_are_deleted_once(gitea: GiteaStandIn, config: AutomationConfig, matrix):
    run = services.monitor_prs_run()
    assert f"{SIBLING}/9-done" not in gitea.branches and "claim/9" not in gitea.branches
    deleted = [a["target"] for a in run.actions if a["action"] == "delete branch"]
    assert sorted(deleted) == sorted([f"{SIBLING}/9-done", "claim/9"])
    assert PullRequestState.objects.get(number=matrix["merged"]).state == "merged"
    services.monitor_prs_run()
    assert len(gitea.calls("DELETE", r"/branches/")) == 2


def test_a_pr_closed_since_the_last_pass_has_its_branches_deleted(gitea: GiteaStandIn, config: AutomationConfig):
    number = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/12-x", files={"a.py": GOOD}, statuses={"ci": "success"})
    gitea.branches["claim/12"] = gitea.branches["main"]
    services.monitor_prs_run()
    gitea.close_pull(number, merged=False)
    services.monitor_prs_run()
    assert f"{AGENT}/12-x" not in gitea.branches and "claim/12" not in gitea.branches
    assert PullRequestState.objects.get(number=number).state == "closed"


def test_branches_of_a_closed_pr_still_used_by_an_open_pr_are_kept(gitea: GiteaStandIn, config: AutomationConfig):
    closed = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/13-x", files={"a.py": GOOD})
    gitea.close_pull(closed, merged=False)
    gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/13-x", files={"a.py": GOOD + "#2\n"})
    gitea.branches["claim/13"] = gitea.branches["main"]
    services.monitor_prs_run()
    assert f"{AGENT}/13-x" in gitea.branches and "claim/13" in gitea.branches


def test_duplicate_notices_left_by_a_crash_are_folded_into_one(
    gitea: GiteaStandIn, config: AutomationConfig, matrix, gitea_client
):
    number = matrix["green"]
    gitea_client.create_comment(number, f"<!-- aitbc:notice agent={AGENT} -->\nold")
    gitea_client.create_comment(number, f"<!-- aitbc:notice agent={AGENT} -->\nolder")
    services.monitor_prs_run()
    notices = _notices(gitea, number)
    assert len(notices) == 1 and "approved" in notices[0]["body"]


def test_monitor_dry_run_changes_nothing(gitea: GiteaStandIn, config: AutomationConfig, matrix):
    run = services.monitor_prs_run(dry_run=True)
    assert run.status == Run.OK and run.dry_run
    assert _writes(gitea) == []
    assert {"approve", "request changes", "request review", "post notice", "delete branch"} <= {
        a["action"] for a in run.actions
    }
    assert not PullRequestState.objects.exists()


def test_auto_merge_is_off_by_default(gitea: GiteaStandIn, config: AutomationConfig, sibling_client):
    number = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/14-x", files={"a.py": GOOD}, statuses={"ci": "success"})
    sha = gitea.pulls[number].head_sha
    sibling_client.create_review(number, event="APPROVED", body="", commit_id=sha)
    services.monitor_prs_run()
    assert gitea.calls("POST", r"/merge$") == []
    assert not gitea.pulls[number].merged


def test_auto_merge_merges_an_approved_green_own_pr_once(gitea: GiteaStandIn, config: AutomationConfig, sibling_client):
    config.auto_merge = True
    config.save()
    waiting = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/15-x", files={"a.py": GOOD}, statuses={"ci": "success"})
    number = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/16-x", files={"b.py": GOOD}, statuses={"ci": "success"})
    sibling_client.create_review(number, event="APPROVED", body="", commit_id=gitea.pulls[number].head_sha)
    run = services.monitor_prs_run()
    assert run.status == Run.OK, run.error
    assert gitea.pulls[number].merged and not gitea.pulls[waiting].merged
    body = gitea.calls("POST", rf"/pulls/{number}/merge$")[0][3]
    assert '"merge_when_checks_succeed": true' in body
    services.monitor_prs_run()
    assert len(gitea.calls("POST", r"/merge$")) == 1


def test_a_pr_gitea_refuses_to_act_on_does_not_hold_up_the_others(
    gitea: GiteaStandIn, config: AutomationConfig, matrix
):
    gitea.inject("POST", rf"/pulls/{matrix['own']}/requested_reviewers$", 422)
    run = services.monitor_prs_run()
    assert run.status == Run.ERROR and f"PR #{matrix['own']}" in run.error
    assert [r["state"] for r in _reviews(gitea, matrix["green"])] == ["APPROVED"]
    assert f"{SIBLING}/9-done" not in gitea.branches
    # The next pass asks again and succeeds.
    assert services.monitor_prs_run().status == Run.OK
    assert gitea.pulls[matrix["own"]].requested == [SIBLING]
