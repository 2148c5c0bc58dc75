from __future__ import annotations

from django.db import models

DEFAULT_ELIGIBLE_LABELS = ["task", "bug", "feature", "refactor", "security", "good-first-task-for-agent"]
# fnmatch patterns over repository paths ("*" also matches "/"). A PR touching
# any of these always needs a human reviewer.
DEFAULT_PROTECTED_PATHS = [
    "automation/*",
    "chain/consensus*",
    "*/consensus/*",
    "*consensus.py",
    "wallet/keys*",
    "*/keys/*",
    "*keystore*",
    ".gitea/*",
]


def default_eligible_labels() -> list[str]:
    return list(DEFAULT_ELIGIBLE_LABELS)


def default_protected_paths() -> list[str]:
    return list(DEFAULT_PROTECTED_PATHS)


class AutomationConfig(models.Model):
    """The one configuration row (pk 1), edited in the admin.

    Created on first use from the environment (``services.config_get``). The
    Gitea token is never stored in plain text: either ``token_encrypted``
    (sealed with a key derived from ``SECRET_KEY``), a ``token_file`` path, or
    nothing here and ``GITEA_TOKEN`` / ``GITEA_TOKEN_FILE`` in the environment.
    """

    LOCK_GITEA = "gitea"
    LOCK_GIT = "git"
    LOCK_CHOICES = [(LOCK_GITEA, "Gitea API: claim branch + lowest claim comment"), (LOCK_GIT, "git push with lease")]
    MERGE_STYLES = [(s, s) for s in ("merge", "rebase", "rebase-merge", "squash", "fast-forward-only")]

    gitea_url = models.URLField(blank=True, help_text="Base URL of Gitea, without /api/v1.")
    repo = models.CharField(max_length=200, blank=True, help_text="owner/name")
    base_branch = models.CharField(max_length=200, default="main")
    token_encrypted = models.TextField(blank=True, editable=False)
    token_file = models.CharField(max_length=500, blank=True, help_text="Path of a file holding the Gitea token.")
    webhook_secret_encrypted = models.TextField(blank=True, editable=False)
    agent = models.CharField(max_length=100, blank=True, help_text="This agent's Gitea login.")
    sibling_agent = models.CharField(max_length=100, blank=True, help_text="The sibling agent's Gitea login.")
    eligible_labels = models.JSONField(default=default_eligible_labels, blank=True)
    protected_paths = models.JSONField(
        default=default_protected_paths, blank=True, help_text="Review rules: patterns that always need a human."
    )
    lock_backend = models.CharField(max_length=10, choices=LOCK_CHOICES, default=LOCK_GITEA)
    git_remote = models.CharField(max_length=500, blank=True, help_text="Remote URL for the git lock backend.")
    claim_enabled = models.BooleanField(default=True)
    monitor_enabled = models.BooleanField(default=True)
    max_claims_per_run = models.PositiveIntegerField(default=1)
    auto_merge = models.BooleanField(
        default=False, help_text="Merge own PRs approved by the sibling once checks pass (merge_when_checks_succeed)."
    )
    merge_style = models.CharField(max_length=20, choices=MERGE_STYLES, default="merge")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "configuration"
        verbose_name_plural = "configuration"

    def __str__(self) -> str:
        return f"{self.agent or '?'} on {self.repo or '?'}"


class Claim(models.Model):
    """An issue this agent tried to claim, and what came of it."""

    LOCKING = "locking"
    WON = "won"
    CLAIMED = "claimed"
    LOST = "lost"
    STUCK = "stuck"
    DONE = "done"
    STATUS_CHOICES = [(s, s) for s in (LOCKING, WON, CLAIMED, LOST, STUCK, DONE)]

    repo = models.CharField(max_length=200)
    issue_number = models.PositiveIntegerField()
    title = models.CharField(max_length=500, blank=True)
    agent = models.CharField(max_length=100)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=LOCKING)
    lock_backend = models.CharField(max_length=10, default=AutomationConfig.LOCK_GITEA)
    high_water = models.BigIntegerField(default=0, help_text="Highest comment id seen before the claim branch.")
    claim_branch = models.CharField(max_length=200)
    work_branch = models.CharField(max_length=300, blank=True)
    comment_id = models.BigIntegerField(null=True, blank=True)
    winner = models.CharField(max_length=100, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repo", "issue_number"], name="automation_claim_unique_issue")]
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"#{self.issue_number} {self.status}"


class PullRequestState(models.Model):
    """What monitor-prs last saw of a PR and did about it."""

    ROLE_OWN = "own"
    ROLE_SIBLING = "sibling"
    ROLE_OTHER = "other"
    ROLE_CHOICES = [(r, r) for r in (ROLE_OWN, ROLE_SIBLING, ROLE_OTHER)]
    VERDICT_CHOICES = [(v, v) for v in ("", "approved", "changes_requested", "waiting")]

    repo = models.CharField(max_length=200)
    number = models.PositiveIntegerField()
    title = models.CharField(max_length=500, blank=True)
    author = models.CharField(max_length=100, blank=True)
    role = models.CharField(max_length=10, choices=ROLE_CHOICES, default=ROLE_OTHER)
    state = models.CharField(max_length=10, default="open", help_text="open, closed or merged")
    head_ref = models.CharField(max_length=300, blank=True)
    head_sha = models.CharField(max_length=64, blank=True)
    ci_state = models.CharField(max_length=20, blank=True)
    verdict = models.CharField(max_length=20, choices=VERDICT_CHOICES, blank=True)
    reasons = models.JSONField(default=list, blank=True)
    checked_sha = models.CharField(max_length=64, blank=True, help_text="Head whose files were checked.")
    file_reasons = models.JSONField(default=list, blank=True)
    reviewed_sha = models.CharField(max_length=64, blank=True)
    review_requested = models.BooleanField(default=False)
    ci_failure_reported_sha = models.CharField(max_length=64, blank=True)
    notice_comment_id = models.BigIntegerField(null=True, blank=True)
    merge_requested_sha = models.CharField(max_length=64, blank=True)
    branches_cleaned = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["repo", "number"], name="automation_pr_unique_number")]
        ordering = ["-number"]
        verbose_name = "PR state"

    def __str__(self) -> str:
        return f"PR #{self.number} {self.state} {self.verdict}"


class Run(models.Model):
    """One pass of a job: what it did and why, and the error if it failed."""

    JOB_CLAIM = "claim_task"
    JOB_MONITOR = "monitor_prs"
    JOB_CHOICES = [(JOB_CLAIM, "claim-task"), (JOB_MONITOR, "monitor-prs")]
    RUNNING = "running"
    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"
    STATUS_CHOICES = [(s, s) for s in (RUNNING, OK, ERROR, SKIPPED)]

    job = models.CharField(max_length=20, choices=JOB_CHOICES)
    trigger = models.CharField(max_length=20, default="beat", help_text="beat, webhook or manual")
    dry_run = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=RUNNING)
    actions = models.JSONField(default=list, blank=True, help_text="[{action, target, why}]")
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["job", "-started_at"], name="automation_run_job_started")]

    def __str__(self) -> str:
        return f"{self.job} {self.status} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class WebhookDelivery(models.Model):
    """A webhook delivery accepted once; a replay with the same id is ignored."""

    delivery_id = models.CharField(max_length=100, unique=True)
    event = models.CharField(max_length=60)
    action = models.CharField(max_length=60, blank=True)
    queued_job = models.CharField(max_length=20, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} {self.delivery_id}"


class JobLease(models.Model):
    """Keeps two workers of this agent from running the same job at once.

    Taken with a conditional UPDATE (free or expired -> ours), so exactly one
    worker gets it; it expires so a killed worker does not block the job.
    """

    name = models.CharField(max_length=40, primary_key=True)
    holder = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder or 'nobody'}"
