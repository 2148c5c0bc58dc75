"""Writes of the automation app: configuration, claim-task, monitor-prs, webhooks.

The two jobs talk to Gitea for seconds at a time, so they are not one database
transaction (that would hold SQLite's write lock, or PostgreSQL row locks,
across network calls). Each record they keep is written by a small atomic
function; the jobs themselves are made safe to repeat by rebuilding their view
from the forge on every pass (Prow), by acting only on changes (Mergify), and
by a lease that keeps two workers of this agent from running a job at once.
Across agents, the claim lock (``locks``) decides.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from aitbc_site.env import env_bool, env_int, env_list, env_str
from aitbc_site.errors import ApiError
from automation import sealing
from automation.gitea import GiteaClient, GiteaError
from automation.locks import (
    GiteaCommentLock,
    GitRefLock,
    LockError,
    claim_branch,
    claim_marker,
    parse_claim_marker,
)
from automation.models import (
    DEFAULT_ELIGIBLE_LABELS,
    DEFAULT_PROTECTED_PATHS,
    AutomationConfig,
    Claim,
    JobLease,
    PullRequestState,
    Run,
    WebhookDelivery,
)

logger = logging.getLogger(__name__)

CONFIG_PK = 1
LEASE_SECONDS = {Run.JOB_CLAIM: 10 * 60, Run.JOB_MONITOR: 15 * 60}
RUN_RETENTION = timedelta(days=30)
DELIVERY_RETENTION = timedelta(days=7)
NOTICE_MARKER = "<!-- aitbc:notice agent={agent} -->"
WORK_BRANCH_RE = re.compile(r"^(?P<agent>[^/]+)/(?P<issue>\d+)-")


class AutomationError(ApiError):
    status = 503
    code = "automation_unavailable"


# ---------------------------------------------------------------------- configuration


def _config_defaults_from_env() -> dict[str, Any]:
    backend = env_str("AITBC_CLAIM_LOCK", AutomationConfig.LOCK_GITEA)
    return {
        "gitea_url": env_str("GITEA_URL", "") or "",
        "repo": env_str("GITEA_REPO", "") or "",
        "base_branch": env_str("GITEA_BASE_BRANCH", "main") or "main",
        "agent": env_str("AITBC_AGENT", "") or "",
        "sibling_agent": env_str("AITBC_SIBLING_AGENT", "") or "",
        "eligible_labels": env_list("AITBC_ELIGIBLE_LABELS", DEFAULT_ELIGIBLE_LABELS),
        "protected_paths": env_list("AITBC_PROTECTED_PATHS", DEFAULT_PROTECTED_PATHS),
        "lock_backend": backend if backend in (AutomationConfig.LOCK_GITEA, AutomationConfig.LOCK_GIT) else "gitea",
        "git_remote": env_str("AITBC_CLAIM_GIT_REMOTE", "") or "",
        "max_claims_per_run": env_int("AITBC_MAX_CLAIMS_PER_RUN", 1, minimum=1),
        "auto_merge": env_bool("AITBC_AUTO_MERGE", False),
    }


def config_get() -> AutomationConfig:
    """The configuration row, created from the environment on first use.

    The environment only seeds a fresh install; afterwards the admin owns the
    values. The token is never copied: it stays in the environment (or its
    file) unless an operator seals one into the row.
    """
    config = AutomationConfig.objects.filter(pk=CONFIG_PK).first()
    if config is not None:
        return config
    try:
        with transaction.atomic():
            return AutomationConfig.objects.create(pk=CONFIG_PK, **_config_defaults_from_env())
    except IntegrityError:
        # Another worker created it first.
        return AutomationConfig.objects.get(pk=CONFIG_PK)


@transaction.atomic
def config_set_token(*, config: AutomationConfig, token: str | None) -> AutomationConfig:
    """Seal ``token`` into the row, or clear it with None/""."""
    config.token_encrypted = sealing.seal(token, secret_key=settings.SECRET_KEY) if token else ""
    config.save(update_fields=["token_encrypted", "updated_at"])
    return config


@transaction.atomic
def config_set_webhook_secret(*, config: AutomationConfig, secret: str | None) -> AutomationConfig:
    config.webhook_secret_encrypted = sealing.seal(secret, secret_key=settings.SECRET_KEY) if secret else ""
    config.save(update_fields=["webhook_secret_encrypted", "updated_at"])
    return config


def config_token(config: AutomationConfig) -> str | None:
    """The Gitea token: sealed in the row, else the row's token file, else the environment."""
    if config.token_encrypted:
        return sealing.unseal(config.token_encrypted, secret_key=settings.SECRET_KEY)
    if config.token_file:
        try:
            return Path(config.token_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise AutomationError(f"cannot read the Gitea token file {config.token_file!r}: {exc.strerror}") from exc
    return env_str("GITEA_TOKEN")


def config_webhook_secret(config: AutomationConfig) -> str | None:
    if config.webhook_secret_encrypted:
        return sealing.unseal(config.webhook_secret_encrypted, secret_key=settings.SECRET_KEY)
    return env_str("GITEA_WEBHOOK_SECRET")


def config_problems(config: AutomationConfig) -> list[str]:
    """What is missing before the jobs can run (empty when ready)."""
    problems = []
    if not config.gitea_url:
        problems.append("GITEA_URL is not set")
    if "/" not in config.repo:
        problems.append("GITEA_REPO is not set as owner/name")
    if not config.agent:
        problems.append("AITBC_AGENT is not set")
    try:
        if not config_token(config):
            problems.append("no Gitea token (GITEA_TOKEN, GITEA_TOKEN_FILE or the admin)")
    except (AutomationError, sealing.SealError) as exc:
        problems.append(str(exc))
    if config.lock_backend == AutomationConfig.LOCK_GIT and not config.git_remote:
        problems.append("the git lock backend needs a git remote")
    return problems


def gitea_client_for(config: AutomationConfig) -> GiteaClient:
    token = config_token(config)
    if not token or not config.gitea_url or "/" not in config.repo:
        raise AutomationError("automation is not configured: " + "; ".join(config_problems(config)))
    return GiteaClient(
        config.gitea_url,
        config.repo,
        token,
        retries=env_int("GITEA_RETRIES", 3, minimum=0, maximum=10),
        backoff=env_int("GITEA_RETRY_BACKOFF_MS", 500, minimum=0) / 1000,
    )


def claim_lock_for(config: AutomationConfig, client: GiteaClient) -> GiteaCommentLock | GitRefLock:
    if config.lock_backend == AutomationConfig.LOCK_GIT:
        workdir = Path(settings.DATA_DIR) / "automation" / "git-lock"
        return GitRefLock(config.git_remote, workdir, agent=config.agent)
    settle = env_int("AITBC_CLAIM_SETTLE_MS", 500, minimum=0) / 1000
    return GiteaCommentLock(
        client,
        agent=config.agent,
        agents={config.agent, config.sibling_agent} - {""},
        base_ref=config.base_branch,
        settle_seconds=settle,
    )


# ---------------------------------------------------------------------- runs and leases


@dataclass
class RunLog:
    """What a pass did and why, in order; a dry run records what it would do."""

    dry_run: bool = False
    actions: list[dict[str, str]] = field(default_factory=list)

    def add(self, action: str, target: str, why: str) -> None:
        entry = {"action": action, "target": target, "why": why}
        if self.dry_run and action != "skip":
            entry["dry_run"] = "true"
        self.actions.append(entry)
        logger.info("%s%s %s: %s", "would " if "dry_run" in entry else "", action, target, why)


@transaction.atomic
def run_start(*, job: str, trigger: str, dry_run: bool) -> Run:
    return Run.objects.create(job=job, trigger=trigger, dry_run=dry_run)


@transaction.atomic
def run_finish(*, run: Run, status: str, actions: list[dict], error: str = "") -> Run:
    run.status = status
    run.actions = actions
    run.error = error[:4000]
    run.finished_at = timezone.now()
    run.save(update_fields=["status", "actions", "error", "finished_at"])
    Run.objects.filter(started_at__lt=timezone.now() - RUN_RETENTION).delete()
    return run


def lease_acquire(*, name: str, seconds: int) -> str | None:
    """Take the lease ``name``; return its token, or None when another worker holds it."""
    JobLease.objects.get_or_create(name=name)
    token = uuid.uuid4().hex
    now = timezone.now()
    with transaction.atomic():
        taken = (
            JobLease.objects.filter(name=name)
            .filter(Q(holder="") | Q(expires_at__isnull=True) | Q(expires_at__lt=now))
            .update(holder=token, expires_at=now + timedelta(seconds=seconds))
        )
    return token if taken == 1 else None


def lease_release(*, name: str, token: str) -> None:
    with transaction.atomic():
        JobLease.objects.filter(name=name, holder=token).update(holder="", expires_at=None)


def _run_job(
    job: str, *, trigger: str, dry_run: bool, body: Callable[[AutomationConfig, RunLog], None], enabled: bool
) -> Run:
    config = config_get()
    run = run_start(job=job, trigger=trigger, dry_run=dry_run)
    log = RunLog(dry_run=dry_run)
    problems = config_problems(config)
    if problems:
        log.add("skip", job, "not configured: " + "; ".join(problems))
        return run_finish(run=run, status=Run.SKIPPED, actions=log.actions)
    if not enabled:
        log.add("skip", job, "disabled in the configuration")
        return run_finish(run=run, status=Run.SKIPPED, actions=log.actions)
    token = None
    if not dry_run:
        token = lease_acquire(name=job, seconds=LEASE_SECONDS[job])
        if token is None:
            log.add("skip", job, "another worker of this agent is running it")
            return run_finish(run=run, status=Run.SKIPPED, actions=log.actions)
    try:
        body(config, log)
    except (GiteaError, LockError, AutomationError, sealing.SealError) as exc:
        logger.warning("%s failed: %s", job, exc)
        return run_finish(run=run, status=Run.ERROR, actions=log.actions, error=str(exc))
    except Exception as exc:
        logger.exception("%s failed", job)
        run_finish(run=run, status=Run.ERROR, actions=log.actions, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if token is not None:
            lease_release(name=job, token=token)
    return run_finish(run=run, status=Run.OK, actions=log.actions)


# ---------------------------------------------------------------------- claim-task


def claim_task_run(
    *,
    trigger: str = "manual",
    dry_run: bool = False,
    max_claims: int | None = None,
    client: GiteaClient | None = None,
) -> Run:
    """One pass of claim-task: finish our interrupted claims, then claim up to ``max_claims`` issues."""

    def body(config: AutomationConfig, log: RunLog) -> None:
        gitea = client or gitea_client_for(config)
        _ClaimPass(config, gitea, claim_lock_for(config, gitea), log, max_claims).run()

    config = config_get()
    return _run_job(Run.JOB_CLAIM, trigger=trigger, dry_run=dry_run, body=body, enabled=config.claim_enabled)


def work_branch_name(agent: str, issue: int, title: str) -> str:
    """``<agent>/<issue>-<slug>``: deterministic, so a rerun finds the branch it made."""
    slug = slugify(title)[:40].strip("-") or "issue"
    return f"{agent}/{issue}-{slug}"


@transaction.atomic
def claim_save(*, repo: str, issue_number: int, **fields: Any) -> Claim:
    claim, _ = Claim.objects.update_or_create(repo=repo, issue_number=issue_number, defaults=fields)
    return claim


class _ClaimPass:
    def __init__(
        self,
        config: AutomationConfig,
        client: GiteaClient,
        lock: GiteaCommentLock | GitRefLock,
        log: RunLog,
        max_claims: int | None,
    ) -> None:
        self.config = config
        self.client = client
        self.lock = lock
        self.log = log
        self.agent = config.agent
        self.repo = config.repo
        self.limit = max_claims if max_claims is not None else config.max_claims_per_run
        self.dry_run = log.dry_run

    def run(self) -> None:
        self.resume_interrupted()
        issues = self.client.list_issues_with_any_label(self.config.eligible_labels)
        unassigned = [issue for issue in issues if not issue.get("assignees")]
        if not unassigned:
            return
        taken = self.lock.claimed_issues()
        claimed = 0
        for issue in unassigned:
            number = issue["number"]
            if number in taken:
                self.look_at_taken(issue)
                continue
            if claimed >= self.limit:
                break
            if self.dry_run:
                self.log.add("claim", f"#{number}", f"eligible, unassigned and unclaimed: {issue.get('title', '')}")
                claimed += 1
                continue
            if self.claim(issue):
                claimed += 1

    # A pass may have been cut off (worker killed, Gitea down) between steps;
    # the row says where, the forge says what actually happened.
    def resume_interrupted(self) -> None:
        pending = Claim.objects.filter(repo=self.repo, agent=self.agent, status__in=[Claim.LOCKING, Claim.WON])
        for claim in pending.order_by("issue_number"):
            if self.dry_run:
                self.log.add("resume", f"#{claim.issue_number}", f"interrupted claim in state {claim.status}")
                continue
            if claim.status == Claim.WON:
                self.finalize(claim)
                continue
            holder = self.lock.holder(claim.issue_number, above=claim.high_water)
            if holder == self.agent:
                if isinstance(self.lock, GiteaCommentLock):
                    outcome = self.lock.decide(claim.issue_number, high_water=claim.high_water, comment_id=None)
                    claim = claim_save(
                        repo=self.repo, issue_number=claim.issue_number, status=Claim.WON, comment_id=outcome.comment_id
                    )
                else:
                    claim = claim_save(repo=self.repo, issue_number=claim.issue_number, status=Claim.WON)
                self.finalize(claim)
            elif holder is not None:
                if isinstance(self.lock, GiteaCommentLock):
                    self.lock.decide(claim.issue_number, high_water=claim.high_water, comment_id=None)
                claim_save(
                    repo=self.repo,
                    issue_number=claim.issue_number,
                    status=Claim.LOST,
                    winner=holder,
                    reason=f"{holder} holds the claim",
                )
                self.log.add("lose", f"#{claim.issue_number}", f"{holder} holds the claim (found on resume)")
            elif isinstance(self.lock, GitRefLock) or self.client.get_branch(claim_branch(claim.issue_number)) is None:
                # Never got as far as the branch: start over as a fresh candidate.
                Claim.objects.filter(pk=claim.pk).delete()
            else:
                # The branch exists but nobody's claim comment: whether our
                # create got 201 is unknown, and posting now could let two win.
                claim_save(
                    repo=self.repo,
                    issue_number=claim.issue_number,
                    status=Claim.STUCK,
                    reason="claim branch without claim comment after an interruption: needs a human",
                )
                self.log.add("stuck", f"#{claim.issue_number}", "claim branch without claim comment; needs a human")

    def look_at_taken(self, issue: dict) -> None:
        """An unassigned issue whose claim branch exists: someone is mid-claim, or it is ours."""
        number = issue["number"]
        row = Claim.objects.filter(repo=self.repo, issue_number=number).first()
        above = row.high_water if row and row.status != Claim.LOST else 0
        holder = self.lock.holder(number, above=above)
        if holder == self.agent and (row is None or row.status not in (Claim.LOST, Claim.STUCK)):
            if self.dry_run:
                self.log.add("resume", f"#{number}", "our claim comment is the lowest but the issue is unassigned")
                return
            claim = claim_save(
                repo=self.repo,
                issue_number=number,
                title=issue.get("title", "")[:500],
                agent=self.agent,
                status=Claim.WON,
                claim_branch=claim_branch(number),
                lock_backend=self.lock.name,
            )
            self.finalize(claim, issue=issue)
        elif holder:
            self.log.add("skip", f"#{number}", f"claimed by {holder}, not yet assigned")
        else:
            self.log.add("skip", f"#{number}", "claim branch exists without a claim (in progress, or stuck)")

    def claim(self, issue: dict) -> bool:
        number = issue["number"]
        title = issue.get("title", "")
        body = f"{claim_marker(self.agent, secrets.token_hex(4))}\nClaiming #{number} for **{self.agent}**."
        # The mark is read before the branch is created: see locks.GiteaCommentLock.
        mark = self.lock.high_water(number) if isinstance(self.lock, GiteaCommentLock) else 0
        claim_save(
            repo=self.repo,
            issue_number=number,
            title=title[:500],
            agent=self.agent,
            status=Claim.LOCKING,
            lock_backend=self.lock.name,
            high_water=mark,
            claim_branch=claim_branch(number),
            work_branch=work_branch_name(self.agent, number, title),
            comment_id=None,
            winner="",
            reason="",
        )
        if isinstance(self.lock, GiteaCommentLock):
            if not self.client.create_branch(claim_branch(number), from_ref=self.config.base_branch):
                claim_save(repo=self.repo, issue_number=number, status=Claim.LOST, reason="claim branch exists")
                self.log.add("skip", f"#{number}", "claim branch already exists (409): claimed by someone else")
                return False
            comment = self.client.create_comment(number, body)
            claim_save(repo=self.repo, issue_number=number, comment_id=comment["id"])
            outcome = self.lock.decide(number, high_water=mark, comment_id=comment["id"])
        else:
            outcome = self.lock.acquire(number)
            if outcome.won:
                outcome.comment_id = self.client.create_comment(number, body)["id"]
        if not outcome.won:
            claim_save(
                repo=self.repo,
                issue_number=number,
                status=Claim.LOST,
                winner=outcome.winner or "",
                reason=outcome.reason[:500],
            )
            self.log.add("lose", f"#{number}", f"{outcome.reason}; backed out")
            return False
        claim = claim_save(
            repo=self.repo,
            issue_number=number,
            status=Claim.WON,
            comment_id=outcome.comment_id,
            winner=self.agent,
            reason=outcome.reason[:500],
        )
        self.finalize(claim, issue=issue)
        return True

    def own_claim_comment(self, number: int) -> int | None:
        """Our lowest claim comment on the issue, when the record of it was lost."""
        ours = [
            c["id"]
            for c in self.client.list_comments(number)
            if parse_claim_marker(c.get("body", "")) and (c.get("user") or {}).get("login") == self.agent
        ]
        return min(ours, default=None)

    def finalize(self, claim: Claim, *, issue: dict | None = None) -> None:
        """Work branch, assignment, one claim comment: each step safe to repeat."""
        number = claim.issue_number
        issue = self.client.get_issue(number) if issue is None else issue
        work = claim.work_branch or work_branch_name(self.agent, number, issue.get("title", ""))
        created = self.client.create_branch(work, from_ref=self.config.base_branch)
        logins = [user["login"] for user in issue.get("assignees") or []]
        if self.agent not in logins:
            current = self.client.get_issue(number)
            logins = [user["login"] for user in current.get("assignees") or []]
            if self.agent not in logins:
                self.client.set_assignees(number, [*logins, self.agent])
        text = (
            f"{claim_marker(self.agent, 'final')}\nClaimed by **{self.agent}**: work happens on branch `{work}`.\n"
            f"(The claim lock is `{claim_branch(number)}`; see docs/automation.md.)"
        )
        comment_id = claim.comment_id or self.own_claim_comment(number)
        if comment_id is None:
            comment_id = self.client.create_comment(number, text)["id"]
        else:
            self.client.edit_comment(comment_id, text)
        claim_save(
            repo=self.repo,
            issue_number=number,
            status=Claim.CLAIMED,
            work_branch=work,
            comment_id=comment_id,
            winner=self.agent,
        )
        why = f"won the {self.lock.name} lock; work branch {work}" + ("" if created else " (already existed)")
        self.log.add("claim", f"#{number}", why)


# ---------------------------------------------------------------------- monitor-prs


def monitor_prs_run(*, trigger: str = "manual", dry_run: bool = False, client: GiteaClient | None = None) -> Run:
    """One pass of monitor-prs over the open PRs and the recently closed ones."""

    def body(config: AutomationConfig, log: RunLog) -> None:
        _MonitorPass(config, client or gitea_client_for(config), log).run()

    config = config_get()
    return _run_job(Run.JOB_MONITOR, trigger=trigger, dry_run=dry_run, body=body, enabled=config.monitor_enabled)


def ci_state(combined: dict) -> str:
    """success, failure, pending or none. No statuses at all is not success."""
    statuses = combined.get("statuses") or []
    state = combined.get("state") or ""
    if not statuses or not state:
        return "none"
    if state in ("success", "warning", "skipped"):
        return "success"
    if state in ("failure", "error"):
        return "failure"
    return "pending"


def protected_matches(paths: Iterable[str], patterns: Iterable[str]) -> list[tuple[str, str]]:
    """(path, pattern) for every path a review-rule pattern protects."""
    found = []
    for path in paths:
        pattern = next((p for p in patterns if fnmatch.fnmatchcase(path, p)), None)
        if pattern:
            found.append((path, pattern))
    return found


def python_syntax_error(source: bytes, filename: str) -> str | None:
    """The first syntax error of a Python file, or None. Compiles; never runs it."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return f"`{filename}` line {exc.lineno}: {exc.msg}"
    except ValueError as exc:
        return f"`{filename}`: {exc}"
    return None


@transaction.atomic
def pr_state_save(*, state: PullRequestState) -> PullRequestState:
    state.save()
    return state


def _latest_review_by(reviews: list[dict], login: str, sha: str) -> dict | None:
    mine = [
        r
        for r in reviews
        if (r.get("user") or {}).get("login") == login and r.get("commit_id") == sha and not r.get("dismissed")
    ]
    return max(mine, key=lambda r: r["id"]) if mine else None


class _MonitorPass:
    def __init__(self, config: AutomationConfig, client: GiteaClient, log: RunLog) -> None:
        self.config = config
        self.client = client
        self.log = log
        self.agent = config.agent
        self.sibling = config.sibling_agent
        self.repo = config.repo
        self.dry_run = log.dry_run
        self.open_heads: set[str] = set()
        self.failing: dict[int, list[str]] = {}

    def state_for(self, pr: dict) -> PullRequestState:
        state = PullRequestState.objects.filter(repo=self.repo, number=pr["number"]).first()
        if state is None:
            state = PullRequestState(repo=self.repo, number=pr["number"])
        author = (pr.get("user") or {}).get("login", "")
        state.title = (pr.get("title") or "")[:500]
        state.author = author
        state.role = (
            PullRequestState.ROLE_OWN
            if author == self.agent
            else PullRequestState.ROLE_SIBLING
            if self.sibling and author == self.sibling
            else PullRequestState.ROLE_OTHER
        )
        state.head_ref = ((pr.get("head") or {}).get("ref") or "")[:300]
        state.head_sha = (pr.get("head") or {}).get("sha") or ""
        return state

    def save(self, state: PullRequestState) -> None:
        if not self.dry_run:
            pr_state_save(state=state)

    def run(self) -> None:
        pulls = self.client.list_pulls(state="open")
        self.open_heads = {(pr.get("head") or {}).get("ref", "") for pr in pulls}
        errors = []
        for pr in pulls:
            state = self.state_for(pr)
            state.state = "open"
            try:
                if state.role == PullRequestState.ROLE_OWN:
                    self.own(pr, state)
                elif state.role == PullRequestState.ROLE_SIBLING:
                    self.sibling_pr(pr, state)
            except GiteaError as exc:
                # One PR Gitea refuses to act on must not hold up the others.
                self.log.add("error", f"PR #{pr['number']}", str(exc))
                errors.append(f"PR #{pr['number']}: {exc}")
            self.save(state)
        self.closed(open_numbers={pr["number"] for pr in pulls})
        if errors:
            raise AutomationError("; ".join(errors))

    # -------------------------------------------------------------- own PRs

    def own(self, pr: dict, state: PullRequestState) -> None:
        number, sha = pr["number"], state.head_sha
        reviews = self.client.list_reviews(number)
        lines = []
        if self.sibling and self.sibling != state.author:
            requested = {(u or {}).get("login") for u in pr.get("requested_reviewers") or []}
            reviewed = any((r.get("user") or {}).get("login") == self.sibling for r in reviews)
            if self.sibling not in requested and not reviewed:
                self.log.add("request review", f"PR #{number}", f"own PR: asking {self.sibling} to review")
                if not self.dry_run:
                    self.client.request_reviewers(number, [self.sibling])
                requested.add(self.sibling)
            state.review_requested = self.sibling in requested or reviewed
            latest = _latest_review_by(reviews, self.sibling, sha)
            if latest:
                lines.append(f"- Review by {self.sibling} at this head: {latest.get('state', '').lower()}")
            else:
                lines.append(f"- Review: requested from {self.sibling}")
        ci = self.ci(pr, state)
        lines.insert(0, self.ci_line(ci, state))
        if self.config.auto_merge:
            self.maybe_merge(pr, state, reviews, ci)
        self.notice(pr, state, lines)

    def maybe_merge(self, pr: dict, state: PullRequestState, reviews: list[dict], ci: str) -> None:
        number, sha = pr["number"], state.head_sha
        if ci != "success" or state.merge_requested_sha == sha or not self.sibling:
            return
        latest = _latest_review_by(reviews, self.sibling, sha)
        if not latest or latest.get("state") != "APPROVED" or latest.get("stale"):
            return
        self.log.add("merge", f"PR #{number}", f"approved by {self.sibling} at {sha[:10]} and checks passed")
        if self.dry_run:
            return
        result = self.client.merge_pull(
            number, style=self.config.merge_style, head_commit_id=sha, when_checks_succeed=True
        )
        state.merge_requested_sha = sha
        self.log.add("merge result", f"PR #{number}", result)

    # -------------------------------------------------------------- sibling's PRs

    def sibling_pr(self, pr: dict, state: PullRequestState) -> None:
        number, sha = pr["number"], state.head_sha
        ci = self.ci(pr, state)
        if state.checked_sha != sha:
            # Files change only with the head: check them once per commit.
            state.file_reasons = self.check_files(number, sha)
            state.checked_sha = sha
        reasons = list(state.file_reasons)
        if ci == "failure":
            reasons.insert(0, f"CI failed at `{sha[:10]}`: {self.failing_contexts(state)}")
        if reasons:
            verdict, event = "changes_requested", "REQUEST_CHANGES"
        elif ci == "success":
            verdict, event = "approved", "APPROVED"
        else:
            # Pending or no CI at all is not a result: wait rather than flip-flop.
            verdict, event = "waiting", None
        state.verdict, state.reasons = verdict, reasons
        if event and state.author != self.agent:
            reviews = self.client.list_reviews(number)
            latest = _latest_review_by(reviews, self.agent, sha)
            if latest is None or latest.get("state") != event:
                if event == "APPROVED":
                    text = (
                        f"Automated review by {self.agent} at `{sha[:10]}`: CI passed, every changed Python file "
                        "compiles, no protected path touched."
                    )
                else:
                    text = f"Automated review by {self.agent} at `{sha[:10]}`:\n" + "\n".join(f"- {r}" for r in reasons)
                action = "approve" if event == "APPROVED" else "request changes"
                self.log.add(action, f"PR #{number}", "; ".join(reasons) or f"all checks hold at {sha[:10]}")
                if not self.dry_run:
                    self.client.create_review(number, event=event, body=text, commit_id=sha)
                state.reviewed_sha = sha
        lines = [self.ci_line(ci, state)]
        lines.append(
            {
                "approved": "- Review: approved",
                "changes_requested": "- Review: changes requested",
                "waiting": "- Review: waiting for CI",
            }[verdict]
        )
        lines.extend(f"  - {r}" for r in reasons)
        self.notice(pr, state, lines)

    def check_files(self, number: int, sha: str) -> list[str]:
        files = self.client.pull_files(number)
        reasons = []
        paths = []
        for changed in files:
            paths.append(changed.get("filename", ""))
            if changed.get("previous_filename"):
                paths.append(changed["previous_filename"])
        for path, pattern in protected_matches(paths, self.config.protected_paths):
            reasons.append(f"`{path}` is under a protected path (`{pattern}`): a human must review it")
        for changed in files:
            name = changed.get("filename", "")
            if not name.endswith(".py") or changed.get("status") in ("removed", "deleted"):
                continue
            source = self.client.raw_file(name, ref=sha)
            if source is None:
                reasons.append(f"`{name}` cannot be read at `{sha[:10]}`")
                continue
            error = python_syntax_error(source, name)
            if error:
                reasons.append(f"syntax error in {error}")
        return reasons

    # -------------------------------------------------------------- CI and the notice

    def ci(self, pr: dict, state: PullRequestState) -> str:
        combined = self.client.combined_status(state.head_sha)
        ci = ci_state(combined)
        state.ci_state = ci
        self.failing[state.number] = sorted(
            {s.get("context", "?") for s in combined.get("statuses") or [] if s.get("status") in ("failure", "error")}
        )
        if ci == "failure" and state.ci_failure_reported_sha != state.head_sha:
            self.log.add(
                "report CI failure", f"PR #{pr['number']}", f"{self.failing_contexts(state)} at {state.head_sha[:10]}"
            )
            state.ci_failure_reported_sha = state.head_sha
        return ci

    def failing_contexts(self, state: PullRequestState) -> str:
        return ", ".join(self.failing.get(state.number, [])) or "combined status failed"

    def ci_line(self, ci: str, state: PullRequestState) -> str:
        text = {
            "success": "passed",
            "failure": f"failed ({self.failing_contexts(state)})",
            "pending": "pending",
            "none": "no status reported yet (not a pass)",
        }[ci]
        return f"- CI: {text}"

    def notice(self, pr: dict, state: PullRequestState, lines: list[str]) -> None:
        """One notice comment per PR by this agent, edited in place, only when its text changes."""
        number = pr["number"]
        marker = NOTICE_MARKER.format(agent=self.agent)
        body = "\n".join([marker, f"**{self.agent} automation** at head `{state.head_sha[:10]}`", "", *lines])
        mine = [
            c
            for c in self.client.list_comments(number)
            if marker in (c.get("body") or "") and (c.get("user") or {}).get("login") == self.agent
        ]
        mine.sort(key=lambda c: c["id"])
        if not mine:
            self.log.add("post notice", f"PR #{number}", "first notice for this PR")
            if not self.dry_run:
                state.notice_comment_id = self.client.create_comment(number, body)["id"]
            return
        keep = mine[0]
        for extra in mine[1:]:
            self.log.add("delete notice", f"PR #{number}", f"duplicate notice comment {extra['id']}")
            if not self.dry_run:
                self.client.delete_comment(extra["id"])
        state.notice_comment_id = keep["id"]
        if keep.get("body") != body:
            self.log.add("update notice", f"PR #{number}", "state changed")
            if not self.dry_run:
                self.client.edit_comment(keep["id"], body)

    # -------------------------------------------------------------- merged and closed PRs

    def closed(self, *, open_numbers: set[int]) -> None:
        candidates: dict[int, dict] = {}
        for state in PullRequestState.objects.filter(repo=self.repo, state="open").exclude(number__in=open_numbers):
            try:
                candidates[state.number] = self.client.get_pull(state.number)
            except GiteaError as exc:
                if exc.status != 404:
                    raise
                state.state = "closed"  # deleted from the forge
                self.save(state)
        # Also the most recently closed page, for PRs opened and closed between passes.
        for pr in self.client.list_pulls(state="closed", sort="recentclose", max_pages=1):
            candidates.setdefault(pr["number"], pr)
        for number in sorted(candidates):
            pr = candidates[number]
            if pr.get("state") != "closed":
                continue
            self.cleanup(pr)

    def cleanup(self, pr: dict) -> None:
        number = pr["number"]
        state = self.state_for(pr)
        was_cleaned = state.pk is not None and state.branches_cleaned and state.state != "open"
        state.state = "merged" if pr.get("merged") else "closed"
        if was_cleaned or state.role == PullRequestState.ROLE_OTHER:
            if state.pk is not None:
                self.save(state)
            return
        head = pr.get("head") or {}
        base = pr.get("base") or {}
        match = WORK_BRANCH_RE.match(head.get("ref") or "")
        same_repo = head.get("repo_id") in (None, base.get("repo_id"))
        if match and same_repo:
            issue = int(match.group("issue"))
            branches = []
            if head["ref"] not in self.open_heads:
                branches.append(head["ref"])
            if not any(
                (WORK_BRANCH_RE.match(h) or {}) and WORK_BRANCH_RE.match(h).group("issue") == str(issue)
                for h in self.open_heads
            ):
                branches.append(claim_branch(issue))
            for branch in branches:
                if self.dry_run:
                    if self.client.get_branch(branch) is not None:
                        self.log.add("delete branch", branch, f"PR #{number} was {state.state}")
                elif self.client.delete_branch(branch):
                    self.log.add("delete branch", branch, f"PR #{number} was {state.state}")
            if not self.dry_run:
                Claim.objects.filter(repo=self.repo, issue_number=issue, agent=self.agent, status=Claim.CLAIMED).update(
                    status=Claim.DONE, reason=f"PR #{number} {state.state}", updated_at=timezone.now()
                )
        state.branches_cleaned = True
        self.save(state)


# ---------------------------------------------------------------------- webhooks

CLAIM_EVENTS = frozenset({"issues", "issue_assign", "issue_label"})
MONITOR_EVENTS = frozenset(
    {
        "pull_request",
        "pull_request_assign",
        "pull_request_label",
        "pull_request_sync",
        "pull_request_review_request",
        "pull_request_review_approved",
        "pull_request_review_rejected",
        "pull_request_approved",
        "pull_request_rejected",
        "status",
    }
)


def webhook_signature_valid(*, secret: str, body: bytes, signature: str) -> bool:
    """``X-Gitea-Signature`` is the lowercase hex HMAC-SHA256 of the raw body."""
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, (signature or "").strip().lower())


@dataclass
class WebhookResult:
    status: int
    body: dict


def webhook_receive(*, body: bytes, headers: dict[str, str]) -> WebhookResult:
    """Verify, deduplicate and queue the job a Gitea delivery calls for.

    A bad signature changes nothing. A delivery id seen before is answered
    without queueing anything again. Jobs go out only after the delivery is
    committed, so a rolled-back request queues nothing.
    """
    from automation import tasks

    config = config_get()
    secret = config_webhook_secret(config)
    if not secret:
        raise AutomationError("no webhook secret configured", code="webhook_not_configured", status=403)
    if not webhook_signature_valid(secret=secret, body=body, signature=headers.get("X-Gitea-Signature", "")):
        raise AutomationError("bad signature", code="bad_signature", status=403)
    delivery_id = headers.get("X-Gitea-Delivery", "").strip()
    if not delivery_id:
        raise AutomationError("missing X-Gitea-Delivery", code="malformed", status=400)
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise AutomationError("the body is not JSON", code="malformed", status=400) from None
    if not isinstance(payload, dict):
        raise AutomationError("the body is not a JSON object", code="malformed", status=400)
    event = headers.get("X-Gitea-Event-Type") or headers.get("X-Gitea-Event") or ""
    action = str(payload.get("action") or "")[:60]
    full_name = ((payload.get("repository") or {}).get("full_name") or "").lower()
    job = ""
    if full_name and config.repo and full_name != config.repo.lower():
        job = ""
    elif event in CLAIM_EVENTS:
        job = Run.JOB_CLAIM
    elif event in MONITOR_EVENTS:
        job = Run.JOB_MONITOR
    try:
        with transaction.atomic():
            WebhookDelivery.objects.create(
                delivery_id=delivery_id[:100], event=event[:60], action=action, queued_job=job
            )
            if job == Run.JOB_CLAIM:
                transaction.on_commit(lambda: _queue(tasks.claim_task))
            elif job == Run.JOB_MONITOR:
                transaction.on_commit(lambda: _queue(tasks.monitor_prs))
    except IntegrityError:
        return WebhookResult(200, {"status": "duplicate", "delivery": delivery_id})
    WebhookDelivery.objects.filter(received_at__lt=timezone.now() - DELIVERY_RETENTION).delete()
    if not job:
        return WebhookResult(200, {"status": "ignored", "event": event})
    return WebhookResult(202, {"status": "queued", "job": job, "delivery": delivery_id})


def _queue(task: Any) -> None:
    try:
        task.delay(trigger="webhook")
    except Exception:
        # The delivery is recorded; the next beat pass does the work instead.
        logger.exception("could not queue %s for a webhook", task.name)


def webhook_install(*, url: str, client: GiteaClient | None = None) -> dict:
    """Create (or find) the repository webhook pointing at ``url`` with the configured secret."""
    config = config_get()
    secret = config_webhook_secret(config)
    if not secret:
        raise AutomationError("set a webhook secret first (GITEA_WEBHOOK_SECRET or the admin)")
    gitea = client or gitea_client_for(config)
    existing = next((h for h in gitea.list_hooks() if (h.get("config") or {}).get("url") == url), None)
    if existing:
        return existing
    events = [
        "issues",
        "issue_assign",
        "issue_label",
        "pull_request",
        "pull_request_sync",
        "pull_request_review_request",
        "pull_request_review_approved",
        "pull_request_review_rejected",
        "status",
    ]
    return gitea.create_hook(url=url, secret=secret, events=events)
