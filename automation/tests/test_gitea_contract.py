"""The stand-in follows Gitea's spec and the README's quirks, checked through the real client."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from automation.gitea import GiteaClient, GiteaError
from automation.tests.conftest import AGENT, SIBLING
from automation.tests.gitea_standin import GiteaStandIn
from automation.tests.swagger_contract import Contract


def _raw(gitea: GiteaStandIn, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"token {gitea.tokens_for(AGENT)}"}
    return requests.request(
        method, f"{gitea.url}/api/v1/repos/{gitea.repo}{path}", headers=headers, timeout=5, **kwargs
    )


# ---------------------------------------------------------------------- the checker itself


def test_contract_rejects_an_undeclared_response_field(contract: Contract):
    body = json.dumps({"id": 1, "body": "x", "bogus": True}).encode()
    problems = contract.check_response("GET", "/api/v1/repos/o/r/issues/comments/1", 200, body, "application/json")
    assert problems and "bogus" in problems[0]


def test_contract_rejects_a_wrongly_typed_response_field(contract: Contract):
    body = json.dumps([{"number": "seven"}]).encode()
    problems = contract.check_response("GET", "/api/v1/repos/o/r/issues", 200, body, "application/json")
    assert problems and "number" in problems[0]


def test_contract_treats_null_as_absent(contract: Contract):
    body = json.dumps([{"number": 7, "assignees": None, "milestone": None, "closed_at": None}]).encode()
    assert contract.check_response("GET", "/api/v1/repos/o/r/issues", 200, body, "application/json") == []


def test_contract_allows_empty_combined_state_only_without_statuses(contract: Contract):
    path = "/api/v1/repos/o/r/commits/abc/status"
    empty = json.dumps({"state": "", "statuses": [], "total_count": 0}).encode()
    assert contract.check_response("GET", path, 200, empty, "application/json") == []
    with_status = json.dumps({"state": "", "statuses": [{"id": 1, "status": "success"}], "total_count": 1}).encode()
    assert contract.check_response("GET", path, 200, with_status, "application/json") != []


def test_contract_allows_merge_201_but_no_other_undeclared_status(contract: Contract):
    merge = "/api/v1/repos/o/r/pulls/3/merge"
    assert contract.check_response("POST", merge, 201, b"", "") == []
    assert contract.check_response("POST", merge, 202, b"", "") != []
    assert contract.check_response("POST", "/api/v1/repos/o/r/issues/3/comments", 200, b"{}", "application/json")


def test_contract_checks_request_bodies_and_query_parameters(contract: Contract):
    auth = {"Authorization": "token t"}
    path = "/api/v1/repos/o/r/branches"
    good = json.dumps({"new_branch_name": "claim/1", "old_ref_name": "main"}).encode()
    assert contract.check_request("POST", path, {}, good, auth) == []
    assert contract.check_request("POST", path, {}, json.dumps({"name": "x"}).encode(), auth) != []
    issues = "/api/v1/repos/o/r/issues"
    assert contract.check_request("GET", issues, {"assignee": ["none"]}, None, auth) != []
    assert contract.check_request("GET", issues, {"state": ["unassigned"]}, None, auth) != []
    assert contract.check_request("GET", issues, {"state": ["open"], "limit": ["50"]}, None, {}) != []


def test_contract_matches_branch_names_with_encoded_slashes(contract: Contract):
    found = contract.match("DELETE", "/api/v1/repos/o/r/branches/claim%2F12")
    assert found is not None and found[0].template == "/repos/{owner}/{repo}/branches/{branch}"


# ---------------------------------------------------------------------- documented Gitea behaviour


def test_branch_creation_conflicts_when_the_branch_exists(gitea_client: GiteaClient):
    assert gitea_client.create_branch("claim/1", from_ref="main") is True
    assert gitea_client.create_branch("claim/1", from_ref="main") is False


def test_simultaneous_branch_creations_both_succeed(gitea: GiteaStandIn, gitea_client: GiteaClient, sibling_client):
    gitea.rendezvous["claim/7"] = threading.Barrier(2)
    results = {}

    def create(name: str, c: GiteaClient) -> None:
        results[name] = c.create_branch("claim/7", from_ref="main")

    threads = [threading.Thread(target=create, args=(n, c)) for n, c in (("a", gitea_client), ("b", sibling_client))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"a": True, "b": True}
    assert gitea.stats["branch_double_201"] == 1


def test_issue_list_has_no_unassigned_filter_and_sends_null_assignees(gitea: GiteaStandIn, gitea_client: GiteaClient):
    gitea.add_issue("free", labels=["task"])
    gitea.add_issue("taken", labels=["task"], assignees=[SIBLING])
    response = _raw(gitea, "GET", "/issues", params={"state": "open", "type": "issues"})
    by_title = {i["title"]: i for i in response.json()}
    assert by_title["free"]["assignees"] is None
    assert [u["login"] for u in by_title["taken"]["assignees"]] == [SIBLING]


def test_label_filter_matches_all_labels_and_drops_unknown_names(gitea: GiteaStandIn, gitea_client: GiteaClient):
    both = gitea.add_issue("both", labels=["task", "bug"])
    task = gitea.add_issue("task only", labels=["task"])
    gitea.add_issue("none")
    assert {i["number"] for i in gitea_client.list_issues(labels=["task", "bug"])} == {both}
    assert {i["number"] for i in gitea_client.list_issues(labels=["task", "no-such-label"])} == {both, task}
    # Only unknown names: nothing left to filter by, so every issue comes back.
    assert len(gitea_client.list_issues(labels=["no-such-label"])) == 3
    assert {i["number"] for i in gitea_client.list_issues_with_any_label(["bug", "task", "no-such-label"])} == {
        both,
        task,
    }


def test_assignee_patch_replaces_the_list(gitea: GiteaStandIn, gitea_client: GiteaClient, sibling_client: GiteaClient):
    number = gitea.add_issue("x", labels=["task"])
    gitea_client.set_assignees(number, [AGENT])
    sibling_client.set_assignees(number, [SIBLING])
    assert [u["login"] for u in gitea_client.get_issue(number)["assignees"]] == [SIBLING]


def test_reviewing_your_own_pull_request_is_422(gitea: GiteaStandIn, gitea_client: GiteaClient):
    number = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/1-x", files={"a.py": "x = 1\n"})
    sha = gitea_client.get_pull(number)["head"]["sha"]
    with pytest.raises(GiteaError) as caught:
        gitea_client.create_review(number, event="APPROVED", body="", commit_id=sha)
    assert caught.value.status == 422
    with pytest.raises(GiteaError):
        gitea_client.request_reviewers(number, [AGENT])


def test_request_changes_needs_a_body(gitea: GiteaStandIn, sibling_client: GiteaClient):
    number = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/1-x", files={"a.py": "x = 1\n"})
    sha = sibling_client.get_pull(number)["head"]["sha"]
    with pytest.raises(GiteaError) as caught:
        sibling_client.create_review(number, event="REQUEST_CHANGES", body="", commit_id=sha)
    assert caught.value.status == 422


def test_combined_status_without_statuses_is_empty_not_success(gitea: GiteaStandIn, gitea_client: GiteaClient):
    combined = gitea_client.combined_status(gitea.branches["main"])
    assert combined["state"] == "" and combined["total_count"] == 0


def test_combined_status_counts_warning_as_success_and_reads_every_page(gitea: GiteaStandIn, gitea_client: GiteaClient):
    sha = gitea.branches["main"]
    for i in range(60):
        gitea.set_status(sha, f"check-{i}", "success")
    gitea.set_status(sha, "lint", "warning")
    combined = gitea_client.combined_status(sha)
    assert combined["state"] == "success"
    assert len(combined["statuses"]) == 61 == combined["total_count"]


def test_page_size_is_capped_at_50_with_a_total_count(gitea: GiteaStandIn):
    for i in range(70):
        gitea.add_issue(f"issue {i}", labels=["task"])
    response = _raw(gitea, "GET", "/issues", params={"limit": 100, "page": 1})
    assert len(response.json()) == 50
    assert response.headers["X-Total-Count"] == "70"
    default = _raw(gitea, "GET", "/issues", params={"page": 1})
    assert len(default.json()) == 30


def test_merge_answers_follow_gitea(gitea: GiteaStandIn, gitea_client: GiteaClient):
    pending = gitea.add_pull(author=AGENT, head_ref=f"{AGENT}/1-a", files={"a.py": "x = 1\n"})
    sha = gitea_client.get_pull(pending)["head"]["sha"]
    assert gitea_client.merge_pull(pending, style="merge", head_commit_id="0" * 40) == "conflict"
    assert gitea_client.merge_pull(pending, style="merge", head_commit_id=sha, when_checks_succeed=True) == "scheduled"
    gitea.set_status(sha, "ci", "success")
    assert gitea_client.merge_pull(pending, style="merge", head_commit_id=sha, when_checks_succeed=True) == "merged"
    assert gitea_client.is_merged(pending)
    assert gitea_client.merge_pull(pending, style="merge", head_commit_id=sha) == "not_allowed"
