"""Two agents, each its own process and database, run claim-task at the same time.

Over 50 eligible issues, pass after pass, every issue must end claimed by
exactly one agent, with one work branch and one claim comment. The stand-in
lets simultaneous claim-branch creations both succeed (a window between its
existence check and its insert), as Gitea does.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from automation.tests.conftest import AGENT, SIBLING
from automation.tests.gitea_standin import GiteaStandIn

pytestmark = pytest.mark.process

ISSUES_PER_ROUND = 50
ROUNDS = 3
LABELS = ["task", "bug", "feature", "refactor", "security", "good-first-task-for-agent"]


def _agent_env(gitea: GiteaStandIn, data_dir: Path, agent: str, sibling: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "GITEA_", "AITBC_"))}
    env.update(
        AITBC_DATA_DIR=str(data_dir),
        DATABASE_URL=f"sqlite:///{data_dir / 'agent.sqlite3'}",
        GITEA_URL=gitea.url,
        GITEA_REPO=gitea.repo,
        GITEA_TOKEN=gitea.tokens_for(agent),
        AITBC_AGENT=agent,
        AITBC_SIBLING_AGENT=sibling,
        AITBC_CLAIM_SETTLE_MS="0",
        GITEA_RETRY_BACKOFF_MS="10",
        LOG_LEVEL="WARNING",
    )
    return env


def _manage(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    return out


@pytest.fixture
def agents(gitea: GiteaStandIn, tmp_path: Path) -> dict[str, dict[str, str]]:
    """Environments of the two agents; each has its own data directory and migrated SQLite database."""
    envs = {}
    for agent, sibling in ((AGENT, SIBLING), (SIBLING, AGENT)):
        data_dir = tmp_path / agent
        data_dir.mkdir()
        envs[agent] = _agent_env(gitea, data_dir, agent, sibling)
    _finish(_manage("migrate", "--noinput", env=envs[AGENT]))
    # Same schema, separate database: a copy of the migrated file.
    shutil.copy(tmp_path / AGENT / "agent.sqlite3", tmp_path / SIBLING / "agent.sqlite3")
    return envs


def _claimed_rows(env: dict[str, str]) -> set[int]:
    path = env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT issue_number FROM automation_claim WHERE status = 'claimed'")}


def test_two_agents_racing_claim_every_issue_exactly_once(gitea: GiteaStandIn, agents):
    gitea.branch_window = 0.01
    numbers: list[int] = []
    for round_ in range(ROUNDS):
        batch = [
            gitea.add_issue(f"Round {round_} issue {i}", labels=[LABELS[i % len(LABELS)]])
            for i in range(ISSUES_PER_ROUND)
        ]
        numbers.extend(batch)
        for _ in range(4):
            processes = [_manage("claim_task", "--max", "50", env=agents[a]) for a in (AGENT, SIBLING)]
            for process in processes:
                _finish(process)
            if all(gitea.issues[n]["assignees"] for n in batch):
                break

    for number in numbers:
        assignees = gitea.issues[number]["assignees"]
        assert len(assignees) == 1 and assignees[0] in (AGENT, SIBLING), (number, assignees)
        winner = assignees[0]
        claims = gitea.claim_comments(number)
        assert [c["user"] for c in claims] == [winner], (number, claims)
        assert f"work happens on branch `{winner}/{number}-" in claims[0]["body"]
        work = [b for b in gitea.branches if b.split("/", 1)[-1].startswith(f"{number}-")]
        assert len(work) == 1 and work[0].startswith(f"{winner}/"), (number, work)
        assert f"claim/{number}" in gitea.branches

    # Each agent's own database agrees with the forge.
    mine, theirs = _claimed_rows(agents[AGENT]), _claimed_rows(agents[SIBLING])
    assert mine | theirs == set(numbers) and not mine & theirs
    assert mine == {n for n in numbers if gitea.issues[n]["assignees"] == [AGENT]}
    # The agents did contend: some claim-branch creations collided.
    assert gitea.stats["branch_409"] + gitea.stats["branch_double_201"] > 0, gitea.stats
