"""The git lock backend against a real bare repository served by ``git daemon``."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from automation import services
from automation.locks import GitRefLock
from automation.models import AutomationConfig, Claim, Run
from automation.tests.conftest import AGENT, SIBLING
from automation.tests.gitea_standin import GiteaStandIn

pytestmark = pytest.mark.process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def remote(tmp_path: Path):
    """``git://127.0.0.1:<port>/locks.git``: a bare repository behind git daemon with pushes enabled."""
    base = tmp_path / "served"
    base.mkdir()
    subprocess.run(["git", "init", "--quiet", "--bare", str(base / "locks.git")], check=True)
    port = _free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            "--enable=receive-pack",
            "--reuseaddr",
            "--informative-errors",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if daemon.poll() is not None or time.monotonic() > deadline:
                daemon.kill()
                raise RuntimeError(f"git daemon did not start: {daemon.stderr.read().decode()}") from None
            time.sleep(0.05)
    yield f"git://127.0.0.1:{port}/locks.git"
    daemon.terminate()
    daemon.wait(10)


def _clone(remote: str, path: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", remote, str(path)], check=True, capture_output=True)
    return path


def test_of_two_concurrent_pushes_from_two_clones_exactly_one_wins(remote: str, tmp_path: Path):
    a = GitRefLock(remote, _clone(remote, tmp_path / "clone-a"), agent=AGENT)
    b = GitRefLock(remote, _clone(remote, tmp_path / "clone-b"), agent=SIBLING)
    for issue in range(1, 13):
        barrier = threading.Barrier(2)
        outcomes = {}

        def attempt(lock: GitRefLock, issue: int = issue, barrier=barrier, outcomes=outcomes) -> None:
            barrier.wait()
            outcomes[lock.agent] = lock.acquire(issue)

        threads = [threading.Thread(target=attempt, args=(lock,)) for lock in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [agent for agent, outcome in outcomes.items() if outcome.won]
        assert len(winners) == 1, outcomes
        assert a.holder(issue) == b.holder(issue) == winners[0]
    assert a.claimed_issues() == set(range(1, 13))


def test_a_late_push_loses_and_leaves_the_ref_alone(remote: str, tmp_path: Path):
    a = GitRefLock(remote, tmp_path / "scratch-a", agent=AGENT)
    b = GitRefLock(remote, tmp_path / "scratch-b", agent=SIBLING)
    assert a.acquire(5).won
    late = b.acquire(5)
    assert not late.won and "claim ref exists" in late.reason
    assert b.holder(5) == AGENT
    assert b.holder(6) is None


def test_claim_task_with_the_git_backend_claims_through_the_remote(
    remote: str, gitea: GiteaStandIn, config: AutomationConfig, settings, tmp_path: Path
):
    settings.DATA_DIR = tmp_path / "data"
    config.lock_backend = AutomationConfig.LOCK_GIT
    config.git_remote = remote
    config.save()
    first = gitea.add_issue("Use the git lock", labels=["task"])
    second = gitea.add_issue("Another", labels=["feature"])
    sibling = GitRefLock(remote, tmp_path / "sibling", agent=SIBLING)
    assert sibling.acquire(first).won
    run = services.claim_task_run()
    assert run.status == Run.OK, run.error
    # The first issue's claim ref is the sibling's: skipped; the second is ours.
    assert [a["action"] for a in run.actions] == ["skip", "claim"]
    assert gitea.issues[second]["assignees"] == [AGENT]
    assert len(gitea.claim_comments(second)) == 1
    assert f"{AGENT}/{second}-another" in gitea.branches
    assert f"claim/{second}" not in gitea.branches  # the lock lives on the git remote
    assert sibling.holder(second) == AGENT
    assert Claim.objects.get(issue_number=second).lock_backend == "git"
