"""The Gitea comment lock on its own: markers, the lowest-id rule, simultaneous claimers."""

from __future__ import annotations

import threading

from automation.gitea import GiteaClient
from automation.locks import GiteaCommentLock, claim_marker, parse_claim_marker
from automation.tests.conftest import AGENT, SIBLING
from automation.tests.gitea_standin import GiteaStandIn


def test_claim_markers_parse_before_and_after_the_final_edit():
    assert parse_claim_marker(claim_marker("aitbc1", "1a2b") + "\nClaiming") == "aitbc1"
    assert parse_claim_marker(claim_marker("aitbc1", "final") + "\nClaimed by aitbc1") == "aitbc1"
    assert parse_claim_marker("<!-- aitbc:notice agent=aitbc1 -->") is None
    assert parse_claim_marker("plain text") is None


def _locks(gitea_client: GiteaClient, sibling_client: GiteaClient) -> tuple[GiteaCommentLock, GiteaCommentLock]:
    agents = {AGENT, SIBLING}
    return (
        GiteaCommentLock(gitea_client, agent=AGENT, agents=agents, base_ref="main"),
        GiteaCommentLock(sibling_client, agent=SIBLING, agents=agents, base_ref="main"),
    )


def test_simultaneous_claimers_both_get_the_branch_but_only_one_wins(
    gitea: GiteaStandIn, gitea_client: GiteaClient, sibling_client: GiteaClient
):
    mine, theirs = _locks(gitea_client, sibling_client)
    for round_ in range(5):
        number = gitea.add_issue(f"race {round_}", labels=["task"])
        gitea.rendezvous[f"claim/{number}"] = threading.Barrier(2)
        outcomes = {}

        def claim(lock: GiteaCommentLock, number: int = number, outcomes=outcomes) -> None:
            outcomes[lock.agent] = lock.acquire(number, body=claim_marker(lock.agent, "00") + "\nClaiming")

        threads = [threading.Thread(target=claim, args=(lock,)) for lock in (mine, theirs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(o.won for o in outcomes.values()) == [False, True]
        winner = next(agent for agent, o in outcomes.items() if o.won)
        assert [c["user"] for c in gitea.claim_comments(number)] == [winner]
    assert gitea.stats["branch_double_201"] == 5


def test_a_loser_deciding_after_the_winner_finalised_still_loses(
    gitea: GiteaStandIn, gitea_client: GiteaClient, sibling_client: GiteaClient
):
    mine, theirs = _locks(gitea_client, sibling_client)
    number = gitea.add_issue("slow loser", labels=["task"])
    mark = mine.high_water(number)
    first = gitea_client.create_comment(number, claim_marker(AGENT, "aa") + "\nClaiming")
    gitea_client.edit_comment(first["id"], claim_marker(AGENT, "final") + "\nClaimed by aitbc1")
    sibling_client.create_comment(number, claim_marker(SIBLING, "bb") + "\nClaiming")
    outcome = theirs.decide(number, high_water=mark, comment_id=None)
    assert not outcome.won and outcome.winner == AGENT
    assert [c["user"] for c in gitea.claim_comments(number)] == [AGENT]


def test_claim_comments_from_an_earlier_round_do_not_count(
    gitea: GiteaStandIn, gitea_client: GiteaClient, sibling_client: GiteaClient
):
    mine, theirs = _locks(gitea_client, sibling_client)
    number = gitea.add_issue("released and claimed again", labels=["task"])
    sibling_client.create_comment(number, claim_marker(SIBLING, "old") + "\nClaimed long ago")
    outcome = mine.acquire(number, body=claim_marker(AGENT, "new") + "\nClaiming")
    assert outcome.won and outcome.high_water > 0
