"""claim-task in one process against the stand-in: what it claims, how it backs out, how it resumes."""

from __future__ import annotations

from automation import services
from automation.gitea import GiteaClient
from automation.locks import claim_marker
from automation.models import AutomationConfig, Claim, JobLease, Run
from automation.tests.conftest import AGENT, SIBLING
from automation.tests.gitea_standin import GiteaStandIn


def _assignees(gitea: GiteaStandIn, number: int) -> list[str]:
    return list(gitea.issues[number]["assignees"])


def _work_branches(gitea: GiteaStandIn, number: int) -> list[str]:
    return [b for b in gitea.branches if b.split("/", 1)[-1].startswith(f"{number}-") and not b.startswith("claim/")]


def _seed(gitea: GiteaStandIn) -> dict[str, int]:
    return {
        "assigned": gitea.add_issue("Already taken", labels=["task"], assignees=[SIBLING]),
        "docs": gitea.add_issue("Not eligible", labels=["docs"]),
        "first": gitea.add_issue("Fix the fee rounding", labels=["task"]),
        "second": gitea.add_issue("Add a bug test", labels=["bug", "good-first-task-for-agent"]),
    }


def test_claim_task_claims_the_oldest_eligible_unassigned_issue(gitea: GiteaStandIn, config: AutomationConfig):
    issues = _seed(gitea)
    run = services.claim_task_run(trigger="beat")
    assert run.status == Run.OK, run.error
    first = issues["first"]
    assert f"claim/{first}" in gitea.branches
    assert _work_branches(gitea, first) == [f"{AGENT}/{first}-fix-the-fee-rounding"]
    assert _assignees(gitea, first) == [AGENT]
    comments = gitea.issue_comments(first)
    assert len(comments) == 1 and f"agent={AGENT}" in comments[0]["body"]
    assert f"{AGENT}/{first}-fix-the-fee-rounding" in comments[0]["body"]
    claim = Claim.objects.get(issue_number=first)
    assert claim.status == Claim.CLAIMED and claim.comment_id == comments[0]["id"]
    assert [a["action"] for a in run.actions] == ["claim"]
    # Only one claim per pass by default; the others are untouched.
    assert _assignees(gitea, issues["second"]) == [] and _assignees(gitea, issues["docs"]) == []
    assert f"claim/{issues['assigned']}" not in gitea.branches


def test_each_pass_claims_the_next_issue_and_reruns_change_nothing_claimed(
    gitea: GiteaStandIn, config: AutomationConfig
):
    issues = _seed(gitea)
    services.claim_task_run()
    services.claim_task_run()
    services.claim_task_run()
    for key in ("first", "second"):
        assert _assignees(gitea, issues[key]) == [AGENT]
        assert len(gitea.claim_comments(issues[key])) == 1
        assert len(_work_branches(gitea, issues[key])) == 1
    assert Claim.objects.filter(status=Claim.CLAIMED).count() == 2


def test_dry_run_reports_the_claim_and_changes_nothing(gitea: GiteaStandIn, config: AutomationConfig):
    issues = _seed(gitea)
    run = services.claim_task_run(dry_run=True)
    assert run.dry_run and run.status == Run.OK
    assert run.actions[0]["action"] == "claim" and run.actions[0]["target"] == f"#{issues['first']}"
    assert [c for c in gitea.requests if c[0] != "GET"] == []
    assert not Claim.objects.exists()


def test_losing_agent_deletes_its_comment_leaves_the_branch_and_claims_the_next(
    gitea: GiteaStandIn, config: AutomationConfig, sibling_client: GiteaClient
):
    issues = _seed(gitea)
    first = issues["first"]

    def sibling_won_the_same_race(branch: str) -> None:
        # Both creations got 201; the sibling's claim comment lands first.
        if branch == f"claim/{first}":
            gitea.on_branch_created = None
            sibling_client.create_comment(first, f"{claim_marker(SIBLING, 'ab')}\nClaiming")

    gitea.on_branch_created = sibling_won_the_same_race
    run = services.claim_task_run()
    assert run.status == Run.OK, run.error
    assert [a["action"] for a in run.actions] == ["lose", "claim"]
    assert [c["user"] for c in gitea.claim_comments(first)] == [SIBLING]
    assert f"claim/{first}" in gitea.branches
    assert _assignees(gitea, first) == [] and _work_branches(gitea, first) == []
    lost = Claim.objects.get(issue_number=first)
    assert lost.status == Claim.LOST and lost.winner == SIBLING
    assert _assignees(gitea, issues["second"]) == [AGENT]


def test_claim_comments_of_other_users_do_not_count(gitea: GiteaStandIn, config: AutomationConfig, contract):
    issues = _seed(gitea)
    first = issues["first"]
    gitea.add_user("mallory")
    mallory = GiteaClient(gitea.url, gitea.repo, gitea.tokens_for("mallory"))

    def forged(branch: str) -> None:
        if branch == f"claim/{first}":
            gitea.on_branch_created = None
            mallory.create_comment(first, f"{claim_marker(SIBLING, 'ff')}\nforged")

    gitea.on_branch_created = forged
    services.claim_task_run()
    assert _assignees(gitea, first) == [AGENT]


def test_an_interrupted_claim_is_finished_on_the_next_pass(gitea: GiteaStandIn, config: AutomationConfig):
    issues = _seed(gitea)
    first = issues["first"]
    gitea.inject("PATCH", rf"/issues/{first}$", 500, times=10)
    run = services.claim_task_run()
    assert run.status == Run.ERROR and "500" in run.error
    assert Claim.objects.get(issue_number=first).status == Claim.WON
    gitea.faults.clear()
    run = services.claim_task_run()
    assert run.status == Run.OK, run.error
    assert _assignees(gitea, first) == [AGENT]
    assert len(gitea.claim_comments(first)) == 1
    assert Claim.objects.get(issue_number=first).status == Claim.CLAIMED
    # Finishing the interrupted claim used this pass's one claim.
    assert _assignees(gitea, issues["second"]) == [AGENT] or run.actions[0]["target"] == f"#{first}"


def test_a_claim_whose_record_was_lost_is_rebuilt_from_the_forge(gitea: GiteaStandIn, config: AutomationConfig):
    issues = _seed(gitea)
    first = issues["first"]
    gitea.inject("PATCH", rf"/issues/{first}$", 500, times=10)
    services.claim_task_run()
    gitea.faults.clear()
    Claim.objects.all().delete()
    run = services.claim_task_run()
    assert run.status == Run.OK, run.error
    assert _assignees(gitea, first) == [AGENT]
    assert len(gitea.claim_comments(first)) == 1 and len(_work_branches(gitea, first)) == 1


def test_a_claim_branch_without_a_claim_comment_is_skipped(gitea: GiteaStandIn, config: AutomationConfig):
    issues = _seed(gitea)
    gitea.branches[f"claim/{issues['first']}"] = gitea.branches["main"]
    run = services.claim_task_run()
    assert run.actions[0]["action"] == "skip" and run.actions[0]["target"] == f"#{issues['first']}"
    assert _assignees(gitea, issues["first"]) == []
    assert _assignees(gitea, issues["second"]) == [AGENT]


def test_a_second_worker_of_the_same_agent_skips_while_the_lease_is_held(gitea: GiteaStandIn, config: AutomationConfig):
    _seed(gitea)
    token = services.lease_acquire(name=Run.JOB_CLAIM, seconds=60)
    assert token and services.lease_acquire(name=Run.JOB_CLAIM, seconds=60) is None
    run = services.claim_task_run()
    assert run.status == Run.SKIPPED and "another worker" in run.actions[0]["why"]
    assert [c for c in gitea.requests if c[0] != "GET"] == []
    services.lease_release(name=Run.JOB_CLAIM, token=token)
    assert services.claim_task_run().status == Run.OK
    assert JobLease.objects.get(name=Run.JOB_CLAIM).holder == ""


def test_an_expired_lease_is_taken_over(db):
    services.lease_acquire(name="x", seconds=-1)
    assert services.lease_acquire(name="x", seconds=60) is not None


def test_an_unconfigured_agent_skips_and_says_why(db, monkeypatch):
    for name in ("GITEA_URL", "GITEA_REPO", "GITEA_TOKEN", "GITEA_TOKEN_FILE", "AITBC_AGENT"):
        monkeypatch.delenv(name, raising=False)
    run = services.claim_task_run(trigger="beat")
    assert run.status == Run.SKIPPED
    assert "GITEA_URL" in run.actions[0]["why"]


def test_configured_labels_decide_eligibility(gitea: GiteaStandIn, config: AutomationConfig):
    issues = _seed(gitea)
    config.eligible_labels = ["docs"]
    config.save()
    services.claim_task_run()
    assert _assignees(gitea, issues["docs"]) == [AGENT]
    assert _assignees(gitea, issues["first"]) == []
