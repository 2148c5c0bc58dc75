"""The client reads every page, retries reads, and checks before retrying writes."""

from __future__ import annotations

import pytest

from automation.gitea import GiteaClient, GiteaError
from automation.tests.conftest import AGENT
from automation.tests.gitea_standin import GiteaStandIn


def test_listing_reads_every_page_at_most_50_at_a_time(gitea: GiteaStandIn, gitea_client: GiteaClient):
    for i in range(120):
        gitea.add_issue(f"issue {i}", labels=["task"])
    issues = gitea_client.list_issues(labels=["task"])
    assert len(issues) == 120 and len({i["number"] for i in issues}) == 120
    pages = gitea.calls("GET", r"/issues$")
    assert len(pages) == 3


def test_reads_are_retried_on_5xx_and_429(gitea: GiteaStandIn, gitea_client: GiteaClient):
    gitea.add_issue("one", labels=["task"])
    gitea.inject("GET", r"/issues$", 503)
    gitea.inject("GET", r"/issues$", 429)
    assert len(gitea_client.list_issues()) == 1
    assert [c[2] for c in gitea.calls("GET", r"/issues$")] == [503, 429, 200]


def test_reads_give_up_after_the_retries(gitea: GiteaStandIn, gitea_client: GiteaClient):
    gitea.inject("GET", r"/labels$", 502, times=10)
    with pytest.raises(GiteaError) as caught:
        gitea_client.list_labels()
    assert caught.value.status == 502
    assert len(gitea.calls("GET", r"/labels$")) == gitea_client.retries + 1


def test_connection_errors_are_retried_then_reported(gitea: GiteaStandIn):
    closed = GiteaClient("http://127.0.0.1:9", gitea.repo, "t", retries=1, backoff=0.01, timeout=1)
    with pytest.raises(GiteaError) as caught:
        closed.list_labels()
    assert caught.value.status is None


def test_a_comment_whose_answer_was_lost_is_not_posted_twice(gitea: GiteaStandIn, gitea_client: GiteaClient):
    number = gitea.add_issue("x", labels=["task"])
    gitea.inject("POST", rf"/issues/{number}/comments$", 500, after=True)
    comment = gitea_client.create_comment(number, "hello once")
    assert [c["body"] for c in gitea.issue_comments(number)] == ["hello once"]
    assert comment["body"] == "hello once"
    assert len(gitea.calls("POST", rf"/issues/{number}/comments$")) == 1


def test_a_failed_comment_that_did_not_land_is_retried(gitea: GiteaStandIn, gitea_client: GiteaClient):
    number = gitea.add_issue("x", labels=["task"])
    gitea.inject("POST", rf"/issues/{number}/comments$", 502)
    gitea_client.create_comment(number, "hello")
    assert [c["body"] for c in gitea.issue_comments(number)] == ["hello"]


def test_a_branch_creation_with_a_lost_answer_does_not_count_as_created(gitea: GiteaStandIn, gitea_client: GiteaClient):
    gitea.inject("POST", r"/branches$", 500, after=True)
    # The branch exists, but whether this request made it is unknown: not a win.
    assert gitea_client.create_branch("claim/3", from_ref="main") is False
    assert "claim/3" in gitea.branches
    assert len(gitea.calls("POST", r"/branches$")) == 1


def test_a_merge_is_never_retried_blindly_after_a_5xx(gitea: GiteaStandIn, gitea_client: GiteaClient):
    number = gitea.add_pull(
        author=AGENT, head_ref=f"{AGENT}/1-a", files={"a.py": "x = 1\n"}, statuses={"ci": "success"}
    )
    sha = gitea_client.get_pull(number)["head"]["sha"]
    gitea.inject("POST", rf"/pulls/{number}/merge$", 502)
    with pytest.raises(GiteaError):
        gitea_client.merge_pull(number, style="merge", head_commit_id=sha)
    assert len(gitea.calls("POST", rf"/pulls/{number}/merge$")) == 1
    assert len(gitea.calls("GET", rf"/pulls/{number}/merge$")) == 1
    # The merge went through although its answer was a 5xx: the check says so.
    gitea.inject("POST", rf"/pulls/{number}/merge$", 500, after=True)
    assert gitea_client.merge_pull(number, style="merge", head_commit_id=sha) == "merged"
    assert len(gitea.calls("POST", rf"/pulls/{number}/merge$")) == 2


def test_requests_carry_token_auth(gitea: GiteaStandIn, gitea_client: GiteaClient):
    bad = GiteaClient(gitea.url, gitea.repo, "wrong-token")
    with pytest.raises(GiteaError) as caught:
        bad.get_branch("main")
    assert caught.value.status == 401
    gitea.violations.clear()  # 401 is real Gitea behaviour the spec does not list
    assert gitea_client.get_branch("main")["name"] == "main"


def test_a_pull_request_whose_answer_was_lost_is_found_by_its_branch(gitea: GiteaStandIn, gitea_client: GiteaClient):
    gitea_client.create_branch(f"{AGENT}/5-thing", from_ref="main")
    gitea.inject("POST", r"/pulls$", 502, after=True)
    pr = gitea_client.create_pull(head=f"{AGENT}/5-thing", base="main", title="Thing")
    assert pr["head"]["ref"] == f"{AGENT}/5-thing"
    assert len(gitea.pulls) == 1 and len(gitea.calls("POST", r"/pulls$")) == 1
    assert gitea_client.find_pull_by_branch(f"{AGENT}/5-thing")["number"] == pr["number"]


def test_assignable_users_and_labels_are_listed(gitea: GiteaStandIn, gitea_client: GiteaClient):
    gitea.add_label("task")
    assert {u["login"] for u in gitea_client.list_assignees()} >= {AGENT, "aitbc"}
    assert [label["name"] for label in gitea_client.list_labels()] == ["task"]


def test_files_of_a_pull_request_and_their_content_at_its_head(gitea: GiteaStandIn, gitea_client: GiteaClient):
    number = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/6-x", files={"pkg/mod.py": "x = 1\n", "old.py": None})
    sha = gitea_client.get_pull(number)["head"]["sha"]
    files = {f["filename"]: f["status"] for f in gitea_client.pull_files(number)}
    assert files == {"pkg/mod.py": "added", "old.py": "deleted"}
    assert gitea_client.raw_file("pkg/mod.py", ref=sha) == b"x = 1\n"
    assert gitea_client.raw_file("pkg/missing.py", ref=sha) is None
