"""The two claim locks: who of the agents works on an issue.

Both answer the same question for ``claim/<issue>``: did this agent win it?

``GiteaCommentLock`` uses only Gitea's API. Creating the agent-neutral branch
``claim/<issue>`` keeps late-comers out (they get 409), but two simultaneous
creations from the same SHA can both get 201, so the branch alone is not a
lock. Every agent that got 201 then posts a claim comment and applies the same
rule to the same data: among the claim comments posted after the claimer's
high-water mark, the one with the lowest id wins. Comment ids have a total
order, so both agents reach the same answer; the loser deletes its comment and
leaves the branch to the winner. (Assignees cannot serve: they are
last-write-wins.) The high-water mark is the highest comment id seen *before*
the branch creation; an agent that created the branch concurrently read its
mark before the other's comment existed, so both marks lie below both
comments, and claim comments from an earlier, released round do not count.

``GitRefLock`` needs only a git remote: ``git push`` of a commit to
``refs/heads/claim/<issue>`` with ``--force-with-lease=refs/heads/claim/<issue>:``
(the ref must not exist). receive-pack updates refs in a locked transaction
that checks the old value, so of two concurrent pushes exactly one succeeds.
The commit message names the holder.

Neither lock touches the database; ``services`` keeps the records.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from automation.gitea import GiteaClient

logger = logging.getLogger(__name__)

CLAIM_PREFIX = "claim/"
# The marker stays the same when the winner edits its comment into the final
# one: a slow loser deciding later must still count the winner's comment.
_CLAIM_MARKER = re.compile(r"<!-- aitbc:claim agent=(?P<agent>[^\s>]+)(?: nonce=(?P<nonce>[^\s>]+))? -->")


class LockError(Exception):
    """The lock could not be asked (remote unreachable, unexpected answer)."""


def claim_branch(issue: int) -> str:
    return f"{CLAIM_PREFIX}{issue}"


def claim_marker(agent: str, nonce: str) -> str:
    return f"<!-- aitbc:claim agent={agent} nonce={nonce} -->"


def parse_claim_marker(body: str) -> str | None:
    match = _CLAIM_MARKER.search(body or "")
    return match.group("agent") if match else None


@dataclass(frozen=True)
class ClaimComment:
    id: int
    agent: str


@dataclass
class LockOutcome:
    """What a claim attempt found out."""

    won: bool
    reason: str
    winner: str | None = None
    comment_id: int | None = None
    high_water: int = 0


class GiteaCommentLock:
    """Claim branch plus lowest-claim-comment-id rule (see the module docstring)."""

    name = "gitea"

    def __init__(
        self, client: GiteaClient, *, agent: str, agents: set[str], base_ref: str, settle_seconds: float = 0.0
    ) -> None:
        self.client = client
        self.agent = agent
        # Only comments written by the agents count: anyone else can type the marker.
        self.agents = set(agents) | {agent}
        self.base_ref = base_ref
        # Real databases may make a lower comment id visible a moment after a
        # higher one; a winner re-reads once after this pause before acting.
        self.settle_seconds = settle_seconds

    def claimed_issues(self) -> set[int]:
        """Issues whose claim branch exists."""
        found = set()
        for branch in self.client.list_branches():
            name = branch.get("name", "")
            if name.startswith(CLAIM_PREFIX) and name[len(CLAIM_PREFIX) :].isdigit():
                found.add(int(name[len(CLAIM_PREFIX) :]))
        return found

    def claim_comments(self, issue: int, *, above: int = 0) -> list[ClaimComment]:
        comments = []
        for comment in self.client.list_comments(issue):
            agent = parse_claim_marker(comment.get("body", ""))
            author = (comment.get("user") or {}).get("login", "")
            if agent and author in self.agents and comment["id"] > above:
                comments.append(ClaimComment(id=comment["id"], agent=author))
        return sorted(comments, key=lambda c: c.id)

    def high_water(self, issue: int) -> int:
        return max((c["id"] for c in self.client.list_comments(issue)), default=0)

    def holder(self, issue: int, *, above: int = 0) -> str | None:
        """The agent whose claim comment is lowest, or None when there is none."""
        comments = self.claim_comments(issue, above=above)
        return comments[0].agent if comments else None

    def acquire(self, issue: int, *, body: str) -> LockOutcome:
        """Try to claim ``issue``; ``body`` is the claim comment (it must carry the marker)."""
        mark = self.high_water(issue)
        if not self.client.create_branch(claim_branch(issue), from_ref=self.base_ref):
            return LockOutcome(won=False, reason="claim branch already exists", high_water=mark)
        comment = self.client.create_comment(issue, body)
        return self.decide(issue, high_water=mark, comment_id=comment["id"])

    def decide(self, issue: int, *, high_water: int, comment_id: int | None) -> LockOutcome:
        """Apply the lowest-id rule; back out (delete own claim comments) when lost."""
        comments = self.claim_comments(issue, above=high_water)
        if comments and comments[0].agent == self.agent and self.settle_seconds:
            time.sleep(self.settle_seconds)
            comments = self.claim_comments(issue, above=high_water)
        if not comments:
            # Our own comment is gone (deleted by a human): do not claim.
            return LockOutcome(won=False, reason="no claim comment found", high_water=high_water)
        winner = comments[0]
        if winner.agent == self.agent:
            # Extra claim comments of ours (a retried post) are removed so one remains.
            for extra in comments[1:]:
                if extra.agent == self.agent:
                    self.client.delete_comment(extra.id)
            return LockOutcome(
                won=True, reason="lowest claim comment", winner=self.agent, comment_id=winner.id, high_water=high_water
            )
        for own in comments:
            if own.agent == self.agent:
                self.client.delete_comment(own.id)
        return LockOutcome(
            won=False,
            reason=f"{winner.agent} posted the lowest claim comment",
            winner=winner.agent,
            comment_id=comment_id,
            high_water=high_water,
        )


class GitRefLock:
    """``git push --force-with-lease=<ref>:`` against any git remote."""

    name = "git"

    def __init__(self, remote: str, workdir: Path, *, agent: str, timeout: float = 60.0) -> None:
        self.remote = remote
        self.workdir = Path(workdir)
        self.agent = agent
        self.timeout = timeout

    def _git(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(
            os.environ,
            GIT_AUTHOR_NAME=self.agent,
            GIT_AUTHOR_EMAIL=f"{self.agent}@automation.invalid",
            GIT_COMMITTER_NAME=self.agent,
            GIT_COMMITTER_EMAIL=f"{self.agent}@automation.invalid",
            GIT_TERMINAL_PROMPT="0",
        )
        try:
            result = subprocess.run(
                ["git", *args],
                cwd=self.workdir,
                env=env,
                input=input,
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LockError(f"git {args[0]}: {exc}") from exc
        if check and result.returncode != 0:
            raise LockError(f"git {' '.join(args[:2])}: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def _ensure_repo(self) -> None:
        # Any local repository will do (a clone of the remote, or a scratch
        # bare one): it only holds the claim commits before they are pushed.
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._git("rev-parse", "--git-dir", check=False).returncode != 0:
            self._git("init", "--quiet", "--bare")

    def claimed_issues(self) -> set[int]:
        self._ensure_repo()
        out = self._git("ls-remote", self.remote, f"refs/heads/{CLAIM_PREFIX}*").stdout
        found = set()
        for line in out.splitlines():
            ref = line.split("\t", 1)[-1]
            number = ref.removeprefix(f"refs/heads/{CLAIM_PREFIX}")
            if number.isdigit():
                found.add(int(number))
        return found

    def acquire(self, issue: int, *, body: str = "") -> LockOutcome:
        self._ensure_repo()
        ref = f"refs/heads/{claim_branch(issue)}"
        tree = self._git("mktree", input="").stdout.strip()
        message = f"claim #{issue} by {self.agent}\n\nnonce {secrets.token_hex(8)}\n"
        commit = self._git("commit-tree", tree, "-m", message).stdout.strip()
        result = self._git(
            "push", "--porcelain", f"--force-with-lease={ref}:", self.remote, f"{commit}:{ref}", check=False
        )
        if result.returncode == 0:
            return LockOutcome(won=True, reason="pushed the claim ref", winner=self.agent)
        rejected = [line for line in result.stdout.splitlines() if line.startswith("!") and ref in line]
        if rejected:
            return LockOutcome(won=False, reason=f"claim ref exists ({rejected[0].rsplit(chr(9), 1)[-1]})")
        raise LockError(f"git push {ref}: {result.stderr.strip() or result.stdout.strip()}")

    def holder(self, issue: int, *, above: int = 0) -> str | None:
        """The agent named by the claim commit, or None when the ref does not exist."""
        self._ensure_repo()
        ref = f"refs/heads/{claim_branch(issue)}"
        fetched = self._git("fetch", "--quiet", "--no-tags", self.remote, ref, check=False)
        if fetched.returncode != 0:
            if "couldn't find remote ref" in fetched.stderr:
                return None
            raise LockError(f"git fetch {ref}: {fetched.stderr.strip()}")
        message = self._git("log", "-1", "--format=%s", "FETCH_HEAD").stdout.strip()
        match = re.match(r"claim #\d+ by (\S+)$", message)
        return match.group(1) if match else None

    def release(self, issue: int) -> bool:
        ref = f"refs/heads/{claim_branch(issue)}"
        return self._git("push", "--porcelain", self.remote, f":{ref}", check=False).returncode == 0
